import pytest
import torch

from msae.saes.base import geometric_median
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig, batch_top_k


def make_sae(seed, **overrides):
    cfg = dict(d_in=24, d_sae=96, k=6, group_sizes=[8, 24, 64], seed=seed)
    cfg.update(overrides)
    return MatryoshkaBatchTopKSAE(MatryoshkaConfig(**cfg))


def test_batch_top_k_keeps_exactly_k_times_batch_largest(gen):
    pre = torch.rand(50, 300, generator=gen) + 0.01  # positive: every kept entry is non-zero
    acts = batch_top_k(pre, k=7)
    assert int((acts != 0).sum()) == 7 * 50
    # the kept entries are the largest of the whole batch, with their values unchanged
    cutoff = pre.flatten().sort(descending=True).values[7 * 50 - 1]
    assert torch.equal(acts != 0, pre >= cutoff)
    assert torch.equal(acts[acts != 0], pre[acts != 0])
    per_row = (acts != 0).sum(1)
    assert per_row.float().mean() == 7 and per_row.min() < per_row.max()  # global, not per row


def test_batch_top_k_with_ties_still_keeps_k_times_batch(gen):
    pre = torch.randint(1, 4, (20, 40), generator=gen).float()  # many equal values
    assert int((batch_top_k(pre, 3) != 0).sum()) == 60


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(k=0), "k must be"),
        (dict(k=97), "k must be"),
        (dict(group_sizes=[8, 24, 60]), "sum to 92"),
        (dict(group_sizes=[0, 32, 64]), "positive"),
        (dict(d_in=0), "d_in must be"),
        (dict(group_weighting=[1.0, 2.0]), "2 group weights for 3 groups"),
        (dict(n_random_prefixes=4), "not both"),
    ],
)
def test_bad_configs_say_what_is_wrong(seed, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_sae(seed, **overrides)


def test_wrong_input_width_is_refused(seed):
    sae = make_sae(seed)
    with pytest.raises(ValueError, match="width 23 .* expects d_in=24"):
        sae.training_step(torch.randn(8, 23), 0)


def test_init(seed):
    sae = make_sae(seed)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))
    assert torch.equal(sae.W_enc, sae.W_dec.T) and torch.all(sae.b_enc == 0)
    assert torch.equal(make_sae(seed).W_dec, sae.W_dec)  # the seed fixes the weights
    assert not torch.equal(make_sae(seed + 1).W_dec, sae.W_dec)


def test_geometric_median_minimises_summed_distance(gen):
    points = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    points[:20] += 50  # outliers pull the mean, not the median
    median = geometric_median(points, tol=1e-10, max_iter=1000)

    def cost(p):
        return (points - p).norm(dim=1).sum()

    assert cost(median) < cost(points.mean(0))
    for _ in range(20):  # no nearby point does better
        nearby = median + 1e-3 * torch.randn(5, generator=gen, dtype=torch.float64)
        assert cost(median) <= cost(nearby) + 1e-9


def test_training_loss_is_the_papers_loss(gen, seed):
    """sum_i MSE_i / G^2 for uniform weights, with every prefix decoded from scratch."""
    sae = make_sae(seed).double()
    x = torch.randn(64, 24, generator=gen, dtype=torch.float64)
    out = sae.training_step(x, step=0)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    acts = batch_top_k(pre, 6)
    expected = sum(
        (x - acts[:, :m] @ sae.W_dec[:m] - sae.b_dec).pow(2).sum(-1).mean() for m in (8, 32, 96)
    ) / 3**2
    torch.testing.assert_close(out.loss, expected)  # no dead latents yet: AuxK is 0
    assert out.stats["auxk"] == 0


def test_size_weighting(gen, seed):
    sae = make_sae(seed, group_weighting="size").double()
    x = torch.randn(64, 24, generator=gen, dtype=torch.float64)
    out = sae.training_step(x, step=0)
    acts = batch_top_k(torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc), 6)
    mse = [(x - acts[:, :m] @ sae.W_dec[:m] - sae.b_dec).pow(2).sum(-1).mean() for m in (8, 32, 96)]
    expected = (8 / 96 * mse[0] + 24 / 96 * mse[1] + 64 / 96 * mse[2]) / 3
    torch.testing.assert_close(out.loss, expected)


def test_auxk_matches_direct_computation(gen, seed):
    sae = make_sae(seed, dead_after_tokens=100, auxk_k=5).double()
    dead = torch.rand(96, generator=gen) < 0.3
    sae.tokens_since_fired.copy_(torch.where(dead, 1000, 0))
    x = torch.randn(64, 24, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        residual = x - batch_top_k(pre, 6) @ sae.W_dec - sae.b_dec
    aux = torch.zeros_like(pre)
    for row in range(64):  # top 5 dead pre-activations of each token, one token at a time
        candidates = [(float(pre[row, j]), j) for j in range(96) if dead[j]]
        for _, j in sorted(candidates, reverse=True)[:5]:
            aux[row, j] = pre[row, j]
    expected = (residual - aux @ sae.W_dec).pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(sae.auxk_loss(pre, residual), expected)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_dead_latents_are_counted_in_tokens(gen, seed, kernels):
    sae = make_sae(seed, dead_after_tokens=10_000)
    sae.kernels = kernels
    x = torch.randn(64, 24, generator=gen)
    out = sae.training_step(x, 0)
    fired = (out.dense_acts() > 0).any(0)
    assert torch.equal(sae.tokens_since_fired, torch.where(fired, 0, 64))
    fired_again = (sae.training_step(x, 1).dense_acts() > 0).any(0)
    expected = torch.where(fired_again, 0, torch.where(fired, 64, 128))
    assert torch.equal(sae.tokens_since_fired, expected)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_threshold_is_an_ema_of_the_smallest_kept_activation(gen, seed, kernels):
    sae = make_sae(seed, threshold_start_step=2, threshold_beta=0.9)
    sae.kernels = kernels
    expected = None
    for step in range(6):
        x = torch.randn(32, 24, generator=gen)
        out = sae.training_step(x, step)
        if step < 2:
            assert sae.threshold == -1
            continue
        acts = out.dense_acts()
        smallest = acts[acts > 0].min()
        expected = smallest if expected is None else 0.9 * expected + 0.1 * smallest
        torch.testing.assert_close(sae.threshold, expected)


def test_encode_uses_the_threshold(gen, seed):
    sae = make_sae(seed)
    x = torch.randn(16, 24, generator=gen)
    with pytest.raises(RuntimeError, match="threshold has not been estimated"):
        sae.encode(x)
    sae.threshold.fill_(0.3)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.equal(sae.encode(x), pre * (pre > 0.3))
    assert torch.equal(sae.encode(x, use_threshold=False), batch_top_k(pre, 6))
    assert sae.encode(x.reshape(4, 4, 24)).shape == (4, 4, 96)


def test_gradient_projection_keeps_decoder_rows_unit_norm(gen, seed):
    sae = make_sae(seed)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(5):
        out = sae.training_step(torch.randn(32, 24, generator=gen) * 3, step)
        out.loss.backward()
        sae.before_optimizer_step()
        assert sae.W_dec.grad.grad_fn is None  # no graph attached to the gradient (it leaked memory)
        radial = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert radial.abs().max() < 1e-5 * sae.W_dec.grad.norm(dim=1).max()
        optimizer.step()
        optimizer.zero_grad()
        sae.after_optimizer_step(optimizer)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))


def test_random_prefixes_change_per_step_and_always_include_the_width(seed):
    sae = make_sae(seed, group_sizes=None, n_random_prefixes=4)
    seen = set()
    for _ in range(30):
        ends, weights = sae.prefixes_for_step()
        assert len(ends) == 4 and ends[-1] == 96
        torch.testing.assert_close(weights, torch.full((4,), 0.25))
        seen.add(tuple(ends))
    assert len(seen) > 20


def test_folding_the_input_scale_gives_raw_unit_outputs(gen, seed):
    sae = make_sae(seed)
    sae.threshold.fill_(0.1)
    with torch.no_grad():
        sae.b_enc.normal_(generator=gen)
        sae.b_dec.normal_(generator=gen)
    x = torch.randn(16, 24, generator=gen) * 7
    scale = 0.37
    acts, x_hat = sae.encode(x * scale), sae(x * scale)
    sae.fold_input_scale(scale)
    torch.testing.assert_close(sae.encode(x), acts / scale)
    torch.testing.assert_close(sae(x), x_hat / scale)
