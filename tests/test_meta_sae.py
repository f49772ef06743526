import pytest
import torch

from msae.evals.meta_sae import DecoderRows, batch_top_k_reconstruction, train_meta_sae
from msae.evals.metrics import unit_rows
from msae.kernels.sparse import batch_top_k
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig


def composed_rows(gen, n_rows, d_in, n_meta, max_parts=4):
    """Unit rows, each a positive combination of 1..max_parts of n_meta unit meta-directions."""
    meta = unit_rows(torch.randn(n_meta, d_in, generator=gen))
    n_parts = torch.randint(1, max_parts + 1, (n_rows, 1), generator=gen)
    rank = torch.rand(n_rows, n_meta, generator=gen).argsort(1).argsort(1)  # a random order per row
    coefficients = (rank < n_parts) * (0.5 + torch.rand(n_rows, n_meta, generator=gen))
    return unit_rows(coefficients @ meta)


FAST = dict(width_fraction=0.25, k=4, steps=200, batch_size=128, lr=3e-3)


def test_rows_made_of_few_meta_directions_are_explained(gen, seed):
    rows = composed_rows(gen, n_rows=256, d_in=32, n_meta=16)
    meta_sae, info = train_meta_sae(rows, seed=seed, **FAST)
    assert info["width"] == 64 and meta_sae.d_sae == 64 and info["k"] == 4
    assert info["variance_explained"] > 0.9
    assert info["variance_explained_inference"] > 0.85
    assert 2 < info["l0_inference"] < 6


def test_isotropic_rows_are_not(gen, seed):
    composed = composed_rows(gen, n_rows=256, d_in=256, n_meta=16)
    isotropic = unit_rows(torch.randn(256, 256, generator=gen))
    _, on_composed = train_meta_sae(composed, seed=seed, **FAST)
    _, on_isotropic = train_meta_sae(isotropic, seed=seed, **FAST)
    # 4 of 64 learned directions cannot rebuild 256 generic directions in 256 dimensions.
    assert on_isotropic["variance_explained"] < 0.5
    assert on_isotropic["variance_explained"] < on_composed["variance_explained"] - 0.3


def test_rows_are_measured_as_unit_directions(gen, seed):
    rows = composed_rows(gen, n_rows=64, d_in=16, n_meta=8)
    scaled = rows * (0.1 + 5 * torch.rand(64, 1, generator=gen))
    _, on_unit = train_meta_sae(rows, steps=20, batch_size=32, seed=seed)
    _, on_scaled = train_meta_sae(scaled, steps=20, batch_size=32, seed=seed)
    assert on_scaled["variance_explained"] == pytest.approx(on_unit["variance_explained"], abs=1e-6)


def test_batch_top_k_over_all_rows_matches_one_dense_batch(gen, seed, monkeypatch):
    import msae.evals.meta_sae as meta_sae_module

    monkeypatch.setattr(meta_sae_module, "_rows_per_chunk", lambda sae: 7)  # many chunks: the running pool is used
    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=12, d_sae=40, k=3, seed=seed))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.1, generator=gen)
    x = torch.randn(300, 12, generator=gen)
    chunked = batch_top_k_reconstruction(sae, x, 3)
    with torch.no_grad():
        reference = sae.decode(batch_top_k(sae.pre_activations(x), 3))
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)


def test_decoder_rows_stream_covers_each_row_once_per_epoch(gen, seed):
    rows = torch.randn(50, 3, generator=gen)
    stream = DecoderRows(rows, batch_size=10, seed=seed)
    epoch = torch.cat([stream.next_batch() for _ in range(5)])
    assert torch.equal(epoch[epoch[:, 0].argsort()], rows[rows[:, 0].argsort()])
    state = stream.state_dict()
    following = stream.next_batch()
    stream.load_state_dict(state)
    assert torch.equal(stream.next_batch(), following)
    assert not torch.equal(following, epoch[:10])  # reshuffled


def test_input_validation(gen):
    rows = torch.randn(40, 8, generator=gen)
    with pytest.raises(ValueError, match="2-d"):
        train_meta_sae(rows[0])
    with pytest.raises(ValueError, match="2-d"):
        train_meta_sae(rows[None])
    bad = rows.clone()
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_meta_sae(bad)
    with pytest.raises(ValueError, match="k must be"):
        train_meta_sae(rows, width_fraction=0.05, k=4)  # width 2 < k
    with pytest.raises(ValueError, match="width_fraction"):
        train_meta_sae(rows, width_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        DecoderRows(rows, batch_size=0)
