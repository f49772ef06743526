import numpy as np
import pytest
import torch

from msae.evals import metrics


def test_variance_explained_matches_numpy_definition(gen):
    x = torch.randn(500, 12, generator=gen) * torch.rand(12, generator=gen) + torch.randn(12, generator=gen)
    x_hat = x + 0.3 * torch.randn(500, 12, generator=gen)
    xn, rn = x.double().numpy(), (x.double() - x_hat.double()).numpy()  # the residual in float64, as defined
    expected = 1 - rn.var(0).sum() / xn.var(0).sum()
    assert metrics.variance_explained(x, x_hat) == pytest.approx(expected, rel=1e-9)
    assert metrics.variance_explained(x, x) == 1.0
    assert metrics.variance_explained(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-9)


def test_l0_and_fraction_alive(gen):
    acts = torch.rand(300, 40, generator=gen) * (torch.rand(300, 40, generator=gen) < 0.1)
    acts[:, :5] = 0  # five dead latents
    assert metrics.l0(acts) == pytest.approx(float((acts > 0).sum(1).float().mean()))
    assert metrics.fraction_alive(acts) == pytest.approx(35 / 40)


def test_matching_recovers_a_hidden_permutation(gen):
    true = (torch.rand(2000, 10, generator=gen) < 0.1).float()
    order = torch.randperm(16, generator=gen)
    latents = torch.rand(2000, 16, generator=gen) * (torch.rand(2000, 16, generator=gen) < 0.05)  # distractors
    latents[:, order[:10]] = true * (1 + 0.1 * torch.rand(2000, 10, generator=gen))
    match = metrics.match_latents(latents, true)
    assert torch.equal(match.latent_of_feature, order[:10])


def test_matched_decoder_cosine(gen):
    directions = torch.randn(6, 9, generator=gen)
    order = torch.randperm(8, generator=gen)
    W_dec = torch.randn(8, 9, generator=gen)
    W_dec[order[:6]] = 3.0 * directions  # scale does not matter
    match = metrics.Matching(order[:6], torch.zeros(8, 6))
    torch.testing.assert_close(metrics.matched_decoder_cosine(W_dec, directions, match), torch.ones(6, dtype=torch.float64))


def toy_acts(gen, absorbing: bool):
    """One parent (feature 0) with two children (1, 2). An absorbing SAE's parent latent goes
    silent whenever a child fires; a faithful one keeps firing."""
    n = 3000
    parent = torch.rand(n, generator=gen) < 0.3
    child = torch.randint(0, 3, (n,), generator=gen)  # 0: none
    true = torch.stack([parent, parent & (child == 1), parent & (child == 2)], 1).float()
    latent_acts = true.clone() * (1 + 0.05 * torch.rand(n, 3, generator=gen))
    if absorbing:
        latent_acts[:, 0] *= true[:, 1:].sum(1) == 0
    return latent_acts, true


@pytest.mark.parametrize("absorbing, rate", [(True, 1.0), (False, 0.0)])
def test_parent_absorption_rate(gen, absorbing, rate):
    latent_acts, true = toy_acts(gen, absorbing)
    match = metrics.Matching(torch.arange(3), torch.zeros(3, 3))
    assert metrics.parent_absorption_rate(latent_acts, true, [-1, 0, 0], match) == rate


def test_partial_absorption_counts_only_the_absorbed_samples(gen):
    latent_acts, true = toy_acts(gen, absorbing=False)
    with_child = true[:, 1:].sum(1) > 0
    absorbed = with_child & (torch.rand(true.shape[0], generator=gen) < 0.4)
    latent_acts[absorbed, 0] = 0.1  # well below half its usual size
    match = metrics.Matching(torch.arange(3), torch.zeros(3, 3))
    expected = float(absorbed.sum()) / float(with_child.sum())
    assert metrics.parent_absorption_rate(latent_acts, true, [-1, 0, 0], match) == pytest.approx(expected)


def test_parent_coverage_finds_the_parent_latent_wherever_the_matching_put_it(gen):
    latent_acts, true = toy_acts(gen, absorbing=True)  # latent 0 absorbed by the children
    with_child = true[:, 1:].sum(1) > 0
    parent = true[:, 0] > 0
    # latent 3 follows the parent everywhere, latents 4, 5 are "parent or child 1/2" composites
    extra = torch.stack([parent.float(), (parent & (true[:, 2] == 0)).float(), (parent & (true[:, 1] == 0)).float()], 1)
    extra *= 1 + 0.05 * torch.rand(extra.shape, generator=gen)
    with_parent_latent = metrics.parent_coverage(torch.cat([latent_acts, extra], 1), true, [-1, 0, 0])
    assert with_parent_latent == {0: 1.0}
    composites = metrics.parent_coverage(torch.cat([latent_acts, extra[:, 1:]], 1), true, [-1, 0, 0])
    share = max(float(true[with_child, c].mean()) for c in (1, 2))  # the larger child's share
    assert composites[0] == pytest.approx(share)
    # absorbed: the parent's latent is silent with a child, the children's silent without one
    assert metrics.parent_coverage(latent_acts, true, [-1, 0, 0]) == {0: 0.0}
    # a latent firing on every sample follows the parent alone and with a child, but not only it
    everywhere = torch.cat([latent_acts, torch.ones(true.shape[0], 1)], 1)
    assert metrics.parent_coverage(everywhere, true, [-1, 0, 0])[0] == pytest.approx(float(parent.float().mean()))


def test_parent_coverage_matches_a_brute_force_loop(gen):
    n, d_sae = 800, 7
    parent = torch.rand(n, generator=gen) < 0.5
    child = torch.randint(0, 3, (n,), generator=gen)
    true = torch.stack([parent, parent & (child == 1), parent & (child == 2)], 1).float()
    acts = torch.rand(n, d_sae, generator=gen) * (torch.rand(n, d_sae, generator=gen) < 0.6)
    acts[:, 5] *= true[:, 0]  # fires only with the parent: precision 1
    acts[:, 6] = 0.0  # never fires: cannot cover
    got = metrics.parent_coverage(acts, true, [-1, 0, 0], min_fraction=0.3)
    p = true[:, 0].numpy() > 0
    c = true[:, 1:].numpy().sum(1) > 0
    a = acts.double().numpy()
    best = 0.0
    for j in range(d_sae):
        normal = float(np.sort(a[p & ~c, j])[(int((p & ~c).sum()) - 1) // 2])  # the lower median, as torch takes it
        if normal <= 0:
            continue
        fires = a[:, j] >= 0.3 * normal
        precision = (fires & p).sum() / max(fires.sum(), 1)
        best = max(best, min(fires[p & ~c].mean(), fires[p & c].mean(), precision))
    assert got[0] == pytest.approx(best, rel=1e-12)


def test_mean_max_decoder_cosine_matches_brute_force_in_blocks(gen):
    W = torch.randn(70, 8, generator=gen)
    unit = (W / W.norm(dim=1, keepdim=True)).double().numpy()
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    expected = cos.max(1).mean()
    assert metrics.mean_max_decoder_cosine(W, block=16) == pytest.approx(expected, rel=1e-5)
