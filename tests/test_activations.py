import json

import numpy as np
import pytest
import torch

from lm_helpers import tiny_model
from msae.data.activations import (
    ActivationConfig,
    CachedActivations,
    CorpusConfig,
    DataUnavailableError,
    collect_activations,
    iter_contexts,
    iter_documents,
    keep_mask,
)

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def config(**overrides):
    base = dict(model_name="tiny", hook_name=HOOK, corpus=CorpusConfig(n_documents=200, seed=3),
                context_size=32, n_tokens=1500, shard_contexts=20, batch_contexts=7, dtype="float32")
    return ActivationConfig(**{**base, **overrides})


def test_contexts_pack_documents_separated_by_eos(model):
    tok = model.tokenizer
    docs = list(iter_documents(CorpusConfig(n_documents=30, seed=1)))
    contexts = list(iter_contexts(docs, tok, 16))
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    flat = torch.cat(contexts).tolist()
    assert all(len(c) == 16 for c in contexts) and flat == stream[: len(flat)]
    with_bos = list(iter_contexts(docs, tok, 16, prepend_bos=True))
    assert all(c[0] == tok.bos_token_id for c in with_bos)


def test_keep_mask_drops_special_tokens_and_first_positions():
    tokens = torch.tensor([[5, 6, 2, 7], [9, 1, 8, 8]])
    assert keep_mask(tokens, [1, 2], exclude_first=1).tolist() == [[False, True, False, True], [False, False, True, True]]


def test_collected_activations_are_the_models(model, tmp_path):
    cfg = config()
    folder = collect_activations(model, cfg, tmp_path, progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n_tokens"] >= 1500 and meta["d_model"] == 48
    # recompute the first shard directly
    tok = model.tokenizer
    contexts = torch.stack(list(iter_contexts(iter_documents(cfg.corpus), tok, 32))[:20])
    _, cache = model.run_with_cache(contexts)
    keep = keep_mask(contexts, tok.all_special_ids, 1)
    expected = cache[HOOK][keep]
    got = np.load(folder / "shard_00000.npy")
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.load(folder / "tokens_00000.npy"), contexts[keep].numpy())


def test_collection_resumes_and_reuses(model, tmp_path):
    cfg = config()
    folder = collect_activations(model, cfg, tmp_path, progress=False)
    first = {p.name: p.read_bytes() for p in folder.glob("*.npy")}
    (folder / "meta.json").unlink()  # as if interrupted after some shards
    (folder / "shard_00002.npy").unlink()
    assert collect_activations(model, cfg, tmp_path, progress=False) == folder
    assert {p.name: p.read_bytes() for p in folder.glob("*.npy")} == first
    assert config(n_tokens=1600).key() != cfg.key()


def test_cached_stream_visits_every_token_once_per_epoch_and_resumes(model, tmp_path):
    folder = collect_activations(model, config(), tmp_path, progress=False)
    stream = CachedActivations(folder, batch_size=100, seed=5)
    requested = []
    rows = stream.rows
    stream.rows = lambda indices: requested.append(indices.copy()) or rows(indices)
    n_batches = stream.n_tokens // 100
    batches = [stream.next_batch() for _ in range(n_batches)]
    seen = np.concatenate(requested)
    assert len(np.unique(seen)) == len(seen) == n_batches * 100  # each token at most once per epoch
    every = torch.from_numpy(np.concatenate([np.load(f) for f in sorted(folder.glob("shard_*.npy"))]))
    assert torch.equal(torch.cat(batches), every[torch.from_numpy(seen)])  # rows fetched across shards correctly

    state = stream.state_dict()
    after = stream.next_batch()  # crosses into epoch 1
    again = CachedActivations(folder, batch_size=100, seed=5)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch(), after)
    assert not torch.equal(CachedActivations(folder, 100, seed=6).next_batch(), CachedActivations(folder, 100, seed=5).next_batch())


def test_cache_mismatch_is_refused(model, tmp_path):
    stream = CachedActivations(collect_activations(model, config(), tmp_path, progress=False), 50)
    stream.check(48, "tiny", HOOK)
    with pytest.raises(ValueError, match="width 48, the SAEs expect 576"):
        stream.check(576)
    with pytest.raises(ValueError, match="model_name='tiny', not 'smollm2'"):
        stream.check(48, "smollm2")


def test_text_folder_and_local_hf_files(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataUnavailableError, match="no non-empty .txt files"):
        list(iter_documents(CorpusConfig(source="text_dir", path=str(empty))))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Lily saw a dog .")
    (folder / "b.txt").write_text("Tom had a red ball .")
    assert list(iter_documents(CorpusConfig(source="text_dir", path=str(folder)))) == ["Lily saw a dog .", "Tom had a red ball ."]
    # the paper profile's reader (HF datasets, streamed), on local files
    hf = CorpusConfig(source="hf", path="text", data_files=[str(folder / "a.txt"), str(folder / "b.txt")])
    assert list(iter_documents(hf)) == ["Lily saw a dog .", "Tom had a red ball ."]
    with pytest.raises(DataUnavailableError, match="no column 'body'"):
        list(iter_documents(CorpusConfig(source="hf", path="text", data_files=[str(folder / "a.txt")], column="body")))
    with pytest.raises(DataUnavailableError, match="could not be read"):
        list(iter_documents(CorpusConfig(source="hf", path=str(tmp_path / "no-such-dataset"))))


def test_live_stream_serves_the_models_activations_shuffled(model, tmp_path):
    from msae.data.activations import LiveActivations

    cfg = config()
    cached = torch.from_numpy(np.concatenate([np.load(f) for f in sorted(collect_activations(model, cfg, tmp_path, progress=False).glob("shard_*.npy"))]))
    live = LiveActivations(model, cfg, batch_size=50, buffer_tokens=200, seed=1)
    rows = torch.cat([live.next_batch() for _ in range(6)])
    distance = torch.cdist(rows, cached, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert distance.max() < 1e-4 * rows.norm(dim=1).max()  # every served row is an activation of the corpus
    assert not torch.equal(rows[:50], cached[:50])  # but not in corpus order
    used = live.state_dict()["contexts_used"]
    assert used > 0
    resumed = LiveActivations(model, cfg, batch_size=50, buffer_tokens=200, seed=1)
    resumed.load_state_dict({"contexts_used": used})
    resumed.next_batch()
    assert resumed.state_dict()["contexts_used"] > used  # continues on unseen contexts
    with pytest.raises(ValueError, match="at least two batches"):
        LiveActivations(model, cfg, batch_size=150, buffer_tokens=200)


def test_corpus_specs(tmp_path):
    from msae.data.activations import corpus_from_spec

    assert corpus_from_spec(None) is None
    hf = corpus_from_spec("hf:monology/pile-uncopyrighted")
    assert (hf.source, hf.path, hf.column) == ("hf", "monology/pile-uncopyrighted", "text")
    assert corpus_from_spec(str(tmp_path)).source == "text_dir"
    with pytest.raises(DataUnavailableError, match="neither"):
        corpus_from_spec(str(tmp_path / "missing"))
