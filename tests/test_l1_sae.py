import copy

import pytest
import torch

from msae.saes.l1 import L1SAE, L1Config
from msae.saes.prefixes import sample_prefix_ends


def make_sae(seed, **overrides):
    cfg = dict(d_in=12, d_sae=20, target_l0=2.0, seed=seed)
    cfg.update(overrides)
    return L1SAE(L1Config(**cfg))


def test_loss_matches_brute_force_over_the_sampled_prefixes(gen, seed):
    sae = make_sae(seed, n_prefixes=5, l1_coefficient=0.7).double()
    x = torch.randn(40, 12, generator=gen, dtype=torch.float64)
    replay = torch.Generator()
    replay.set_state(sae.prefix_generator.get_state())
    ends = sample_prefix_ends(20, 5, replay)  # the prefixes the step will draw
    out = sae.training_step(x, step=0)
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    norms = sae.W_dec.norm(dim=1)
    per_prefix = [
        (x - acts[:, :m] @ sae.W_dec[:m] - sae.b_dec).pow(2).sum(-1).mean() + 0.7 * (acts[:, :m] * norms[:m]).sum(-1).mean()
        for m in ends
    ]
    torch.testing.assert_close(out.loss, torch.stack(per_prefix).mean())


def test_vanilla_has_one_prefix_the_whole_dictionary(seed):
    sae = make_sae(seed)
    assert sample_prefix_ends(20, sae.config.n_prefixes, sae.prefix_generator) == [20]


def test_controller_moves_the_coefficient_towards_the_target_l0(gen, seed):
    x = torch.randn(64, 12, generator=gen)
    low = make_sae(seed, target_l0=20.0, controller_rate=0.01)  # any L0 is below 20
    high = make_sae(seed, target_l0=0.001, controller_rate=0.01)
    for step in range(3):
        low.training_step(x, step)
        high.training_step(x, step)
    torch.testing.assert_close(low.l1_coefficient, torch.tensor(1.2 * 0.99**3))
    torch.testing.assert_close(high.l1_coefficient, torch.tensor(1.2 * 1.01**3))


def test_coefficient_warms_up_linearly(seed):
    sae = make_sae(seed, l1_warmup_steps=10, l1_coefficient=2.0)
    assert float(sae.current_l1_coefficient(0)) == pytest.approx(0.2)
    assert float(sae.current_l1_coefficient(4)) == pytest.approx(1.0)
    assert float(sae.current_l1_coefficient(50)) == pytest.approx(2.0)


def test_permuting_latents_relabels_them_and_their_adam_state(gen, seed):
    sae = make_sae(seed)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(32, 12, generator=gen)
    sae.training_step(x, 0).loss.backward()
    optimizer.step()
    order = torch.randperm(20, generator=gen)
    before = copy.deepcopy(sae)
    exp_avg_before = optimizer.state[sae.W_dec]["exp_avg"].clone()
    sae.permute_latents(order, optimizer)
    torch.testing.assert_close(sae.encode(x), before.encode(x)[:, order])
    torch.testing.assert_close(sae(x), before(x))
    torch.testing.assert_close(optimizer.state[sae.W_dec]["exp_avg"], exp_avg_before[order])


def test_sorting_orders_latents_by_use(gen, seed):
    sae = make_sae(seed, sort_latents=True, sort_ema=0.0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, 12, generator=gen)
    sae.training_step(x, 0).loss.backward()
    optimizer.step()
    sae.after_optimizer_step(optimizer)
    assert torch.all(sae.usage[:-1] >= sae.usage[1:])
