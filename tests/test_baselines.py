"""The baseline architectures (Table 1): each loss against its paper's formula written out
directly, the straight-through estimators against their defined pseudo-derivatives, the
controller's direction, and round trips through the SAELens layout."""

import copy
import json
import math

import pytest
import torch

from msae.io import load_sae, save_sae
from msae.saes import (
    GatedConfig,
    GatedSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    PAnnealConfig,
    PAnnealSAE,
    ReLUL1Config,
    ReLUL1SAE,
    TopKConfig,
    TopKSAE,
    firing_count,
    jump_relu,
)
from msae.training.loop import TrainConfig, optimization_step

D_IN, D_SAE = 12, 40


def build(kind, seed, **overrides):
    """A small SAE of each kind; penalty coefficients fixed (no target) unless overridden."""
    fields = {"d_in": D_IN, "d_sae": D_SAE, "seed": seed, **overrides}
    if kind == "relu":
        return ReLUL1SAE(ReLUL1Config(**fields))
    if kind == "topk":
        return TopKSAE(TopKConfig(**{"k": 5, **fields}))
    if kind == "gated":
        return GatedSAE(GatedConfig(**fields))
    if kind == "jumprelu":
        return JumpReLUSAE(JumpReLUConfig(**fields))
    if kind == "p_anneal":
        return PAnnealSAE(PAnnealConfig(**{"total_steps": 10_000, **fields}))
    raise ValueError(kind)


KINDS = ["relu", "topk", "gated", "jumprelu", "p_anneal"]
PENALTY_KINDS = ["relu", "gated", "jumprelu", "p_anneal"]
COEFFICIENT = {"relu": "l1_coefficient", "gated": "l1_coefficient", "jumprelu": "l0_coefficient",
               "p_anneal": "lp_coefficient"}


def randomise(sae, gen):
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return sae


def sparse_data(gen, n, dtype=torch.float32):
    """Inputs built from a few active directions each, plus an offset."""
    directions = torch.randn(60, D_IN, generator=gen, dtype=dtype)
    active = (torch.rand(n, 60, generator=gen) < 0.06).to(dtype) * (1 + torch.rand(n, 60, generator=gen, dtype=dtype))
    return active @ directions + 0.3


# --- shared behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_encode_and_decode_shapes(kind, gen, seed):
    sae = build(kind, seed)
    x = torch.randn(2, 7, D_IN, generator=gen)
    acts = sae.encode(x)
    assert acts.shape == (2, 7, D_SAE) and sae.decode(acts).shape == (2, 7, D_IN) and sae(x).shape == x.shape
    assert (acts >= 0).all() and (acts > 0).any()
    with pytest.raises(ValueError, match="width"):
        sae.encode(torch.randn(3, D_IN + 1, generator=gen))


@pytest.mark.parametrize("kind, saelens", [("relu", "standard"), ("topk", "topk"), ("gated", "gated"),
                                           ("jumprelu", "jumprelu"), ("p_anneal", "standard")])
def test_round_trip_through_the_saelens_layout(kind, saelens, tmp_path, gen, seed):
    sae = randomise(build(kind, seed, model_name="m", hook_name="blocks.2.hook_resid_post"), gen)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == saelens and cfg["hook_layer"] == 2
    if kind == "topk":
        assert cfg["k"] == 5 and cfg["activation_fn_kwargs"] == {"k": 5}
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae) and loaded.config == sae.config
    x = torch.randn(30, D_IN, generator=gen)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))


def test_saved_tensors_use_saelens_names(tmp_path, gen, seed):
    from safetensors.torch import load_file

    save_sae(randomise(build("gated", seed), gen), tmp_path / "gated")
    assert set(load_file(tmp_path / "gated" / "sae_weights.safetensors")) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}
    jump = randomise(build("jumprelu", seed), gen)
    save_sae(jump, tmp_path / "jump")
    tensors = load_file(tmp_path / "jump" / "sae_weights.safetensors")
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    torch.testing.assert_close(tensors["threshold"], jump.log_threshold.detach().exp())


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_training_steps_reduce_the_loss(kind, gen, seed):
    sae = build(kind, seed)
    data = sparse_data(gen, 256)
    held_out = data[:128]
    config = TrainConfig(steps=40, lr=1e-2, warmup_steps=1)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    sae.initialize_from_batch(data[:128])
    before = float(sae.training_step(held_out, 0).loss.detach())
    for step in range(40):
        optimization_step(sae, optimizer, data[128 * (step % 2):128 * (step % 2 + 1)], step, config)
    after = float(sae.training_step(held_out, 0).loss.detach())
    assert after < 0.8 * before


@pytest.mark.parametrize("kind", KINDS)
def test_folding_the_input_scale_gives_raw_unit_outputs(kind, gen, seed):
    sae = randomise(build(kind, seed), gen).double()
    x = torch.randn(20, D_IN, generator=gen, dtype=torch.float64)
    folded = copy.deepcopy(sae)
    folded.fold_input_scale(3.5)
    torch.testing.assert_close(folded.encode(x), sae.encode(3.5 * x) / 3.5)
    torch.testing.assert_close(folded(x), sae(3.5 * x) / 3.5)


@pytest.mark.parametrize("kind", ["topk", "gated", "jumprelu", "p_anneal"])
def test_decoder_rows_stay_unit_norm(kind, gen, seed):
    sae = build(kind, seed)
    optimizer = torch.optim.Adam(sae.parameters(), lr=0.05)
    config = TrainConfig(steps=3, lr=0.05, warmup_steps=1)
    for step in range(3):
        optimization_step(sae, optimizer, sparse_data(gen, 64), step, config)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_controller_moves_the_coefficient_towards_the_target(kind, gen, seed):
    x = sparse_data(gen, 64)
    rate = 0.02
    no_warmup = dict(controller_rate=rate, penalty_warmup_fraction=0.0)
    low = build(kind, seed, target_l0=float(D_SAE), **no_warmup)  # any L0 < d_sae is below
    high = build(kind, seed, target_l0=1e-3, **no_warmup)  # every batch is above
    start = float(getattr(low, COEFFICIENT[kind]))
    expected_low = start
    for step in range(3):
        for sae in (low, high):
            l0 = float(sae.training_step(x, step).stats["l0"])
            assert 0 < l0 < D_SAE
            if sae is low:
                expected_low *= math.exp(rate * max(-1.0, math.log2(l0 / D_SAE)))
    assert expected_low < start
    torch.testing.assert_close(getattr(low, COEFFICIENT[kind]), torch.tensor(expected_low))
    torch.testing.assert_close(getattr(high, COEFFICIENT[kind]), torch.tensor(start * math.exp(rate) ** 3))


@pytest.mark.parametrize("l0_over_target, exponent", [(8.0, 1.0), (2.0, 1.0), (2 ** 0.5, 0.5), (1.0, 0.0),
                                                      (0.5 ** 0.25, -0.25), (0.25, -1.0), (0.0, -1.0)])
def test_controller_step_is_proportional_to_log_l0_error_then_capped(l0_over_target, exponent):
    from msae.saes.penalty import steer_towards_l0

    coefficient = torch.tensor(0.3)
    steer_towards_l0(coefficient, torch.tensor(l0_over_target * 40.0), 40.0, 0.01)
    torch.testing.assert_close(coefficient, torch.tensor(0.3 * math.exp(0.01 * exponent)))


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_coefficient_warms_up_before_the_controller_starts(kind, gen, seed):
    # 5% of 100 steps: the penalty ramps over steps 0..4 and the controller waits for step 5.
    p_fixed = dict(anneal_start_fraction=0.5) if kind == "p_anneal" else {}  # no p change meanwhile
    sae = build(kind, seed, target_l0=float(D_SAE), total_steps=100, controller_rate=0.1, **p_fixed)
    name = COEFFICIENT[kind]
    start = float(getattr(sae, name))
    x = sparse_data(gen, 32)
    for step in range(5):
        used = sae.training_step(x, step).stats[name]
        torch.testing.assert_close(used, torch.tensor(start * (step + 1) / 5))
        assert float(getattr(sae, name)) == start
    l0 = float(sae.training_step(x, 5).stats["l0"])  # below the target d_sae: the coefficient falls
    torch.testing.assert_close(getattr(sae, name), torch.tensor(start * math.exp(0.1 * max(-1.0, math.log2(l0 / D_SAE)))))
    assert float(getattr(sae, name)) < start


@pytest.mark.parametrize(
    "kind, overrides, message",
    [
        ("topk", dict(k=0), "k must be"),
        ("topk", dict(k=D_SAE + 1), "k must be"),
        ("relu", dict(n_prefixes=3), "n_prefixes must be 1"),
        ("gated", dict(target_l0=-1.0), "target_l0"),
        ("gated", dict(d_sae=0), "d_sae must be"),
        ("jumprelu", dict(bandwidth=0.0), "bandwidth must be positive"),
        ("jumprelu", dict(total_steps=0), "total_steps"),
        ("p_anneal", dict(total_steps=None), "give total_steps"),
        ("p_anneal", dict(p_end=1.5), "p_end <= p_start"),
        ("p_anneal", dict(anneal_start_fraction=0.9, anneal_end_fraction=0.5), "anneal_start_fraction"),
    ],
)
def test_bad_configs_say_what_is_wrong(kind, overrides, message, seed):
    with pytest.raises(ValueError, match=message):
        build(kind, seed, **overrides)


# --- ReLU + L1 --------------------------------------------------------------------------------


def test_relu_l1_loss_is_mse_plus_decoder_norm_weighted_l1(gen, seed):
    sae = randomise(build("relu", seed, l1_coefficient=0.7, total_steps=200), gen).double()
    assert sae.config.l1_warmup_steps == 10  # 5% of the run
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, generator=gen, dtype=torch.float64) + 0.5)  # unequal row norms
    x = torch.randn(50, D_IN, generator=gen, dtype=torch.float64)
    out = sae.training_step(x, step=3)
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    mse = (x - acts @ sae.W_dec - sae.b_dec).pow(2).sum(-1).mean()
    l1 = (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, mse + 0.7 * (4 / 10) * l1)


# --- TopK -------------------------------------------------------------------------------------


def test_topk_keeps_exactly_the_k_largest_per_token(gen, seed):
    sae = randomise(build("topk", seed, k=7), gen)
    with torch.no_grad():
        sae.b_enc.add_(5.0)  # every pre-activation positive: exactly k per row
    x = torch.randn(40, D_IN, generator=gen)
    acts = sae.encode(x)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    cutoff = pre.sort(dim=-1, descending=True).values[:, 6:7]  # 7th largest of each row
    assert torch.equal((acts != 0).sum(-1), torch.full((40,), 7))
    assert torch.equal(acts != 0, pre >= cutoff)
    assert torch.equal(acts[acts != 0], pre[acts != 0])


def test_topk_keeps_fewer_where_fewer_are_positive(gen, seed):
    sae = randomise(build("topk", seed, k=7), gen)
    x = torch.randn(40, D_IN, generator=gen)
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc
        # Shift each latent so that only ~3 per token are positive on average.
        sae.b_enc.copy_(-pre.quantile(1 - 3 / D_SAE, dim=0))
    n_positive = (((x - sae.b_dec) @ sae.W_enc + sae.b_enc) > 0).sum(-1)
    assert (n_positive < 7).any()
    assert torch.equal((sae.encode(x) != 0).sum(-1), n_positive.clamp(max=7))


def test_topk_sparse_step_matches_the_dense_one(gen, seed):
    dense = randomise(build("topk", seed, k=4, dead_after_tokens=30), gen).double()
    sparse = copy.deepcopy(dense)
    dense.kernels, sparse.kernels = "dense", "sparse"
    for sae in (dense, sparse):
        sae.tokens_since_fired[: D_SAE // 2] = 100  # half the latents dead: AuxK active
    x = torch.randn(32, D_IN, generator=gen, dtype=torch.float64)
    out_dense, out_sparse = dense.training_step(x, 0), sparse.training_step(x, 0)
    assert float(out_dense.stats["auxk"]) > 0
    torch.testing.assert_close(out_sparse.loss, out_dense.loss)
    torch.testing.assert_close(out_sparse.dense_acts(), out_dense.acts)
    out_dense.loss.backward()
    out_sparse.loss.backward()
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    assert torch.equal(dense.tokens_since_fired, sparse.tokens_since_fired)


# --- Gated ------------------------------------------------------------------------------------


def test_gated_magnitude_weights_share_the_encoder(gen, seed):
    sae = randomise(build("gated", seed), gen)
    torch.testing.assert_close(sae.W_mag, sae.W_enc * sae.r_mag.exp())
    x = torch.randn(25, D_IN, generator=gen)
    gate, magnitude = sae.gate_and_magnitude(x)
    torch.testing.assert_close(gate, (x - sae.b_dec) @ sae.W_enc + sae.b_gate)
    torch.testing.assert_close(magnitude, (x - sae.b_dec) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag)
    torch.testing.assert_close(sae.encode(x), (gate > 0) * torch.relu(magnitude))
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(D_IN, D_SAE, generator=gen))  # one matrix: both paths move
    new_gate, new_magnitude = sae.gate_and_magnitude(x)
    assert not torch.allclose(new_gate, gate) and not torch.allclose(new_magnitude, magnitude)


def test_gated_encoder_gets_gradient_from_both_paths(gen, seed):
    sae = randomise(build("gated", seed), gen).double()
    x = torch.randn(25, D_IN, generator=gen, dtype=torch.float64)
    centred_sum = (x - sae.b_dec).sum(0).detach()  # d sum(pre) / d W_enc[i, j] = sum_b (x - b_dec)[b, i] (* scale_j)
    gate, magnitude = sae.gate_and_magnitude(x)
    (grad_gate,) = torch.autograd.grad(gate.sum(), sae.W_enc, retain_graph=True)
    (grad_magnitude,) = torch.autograd.grad(magnitude.sum(), sae.W_enc)
    torch.testing.assert_close(grad_gate, centred_sum[:, None].expand(D_IN, D_SAE))
    torch.testing.assert_close(grad_magnitude, centred_sum[:, None] * sae.r_mag.exp().detach())


def test_gated_loss_is_the_papers_loss(gen, seed):
    sae = randomise(build("gated", seed, l1_coefficient=0.4), gen).double()
    x = torch.randn(40, D_IN, generator=gen, dtype=torch.float64)
    out = sae.training_step(x, 0)
    out.loss.backward()
    got = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    # The paper's loss, written out: W_mag = exp(r_mag) W_enc, and a frozen decoder copy in L_aux.
    centred = x - sae.b_dec
    pi_gate = centred @ sae.W_enc + sae.b_gate
    pi_mag = centred @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    f = (pi_gate > 0).double() * torch.relu(pi_mag)
    recon = (x - f @ sae.W_dec - sae.b_dec).pow(2).sum(-1).mean()
    sparsity = (torch.relu(pi_gate) * sae.W_dec.norm(dim=1).detach()).sum(-1).mean()
    aux = (x - torch.relu(pi_gate) @ sae.W_dec.detach() - sae.b_dec.detach()).pow(2).sum(-1).mean()
    expected = recon + 0.4 * sparsity + aux
    torch.testing.assert_close(out.loss, expected)
    expected.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)


# --- JumpReLU ---------------------------------------------------------------------------------


def _jump_inputs(gen, rows=64, cols=9):
    pre = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    threshold = torch.rand(cols, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    return pre, threshold


def test_jump_relu_forward_is_exact(gen):
    pre, threshold = _jump_inputs(gen)
    assert torch.equal(jump_relu(pre, threshold, 0.3), pre * (pre > threshold))
    assert torch.equal(firing_count(pre, threshold, 0.3), (pre > threshold).sum(0).double())


def test_jump_relu_threshold_gradient_is_the_rectangle_pseudo_derivative(gen):
    pre, threshold = _jump_inputs(gen)
    eps = 0.3
    weights = torch.randn(pre.shape, generator=gen, dtype=torch.float64)  # upstream gradient
    pre.requires_grad_(True)
    theta = threshold.clone().requires_grad_(True)
    grad_pre, grad_theta = torch.autograd.grad((jump_relu(pre, theta, eps) * weights).sum(), (pre, theta))
    window = ((pre.detach() - threshold) / eps).abs() < 0.5
    torch.testing.assert_close(grad_theta, -(threshold / eps) * (weights * window).sum(0))
    torch.testing.assert_close(grad_pre, weights * (pre.detach() > threshold))

    # Finite differences of the function whose derivative the pseudo-derivative is defined to
    # be: -(1 / 2 eps) clip(theta, z - eps/2, z + eps/2)^2 per entry.
    def smoothed(t):
        z = pre.detach()
        return (weights * -(torch.clamp(t, z - eps / 2, z + eps / 2) ** 2) / (2 * eps)).sum(0)

    h = 1e-6
    finite_difference = (smoothed(threshold + h) - smoothed(threshold - h)) / (2 * h)
    torch.testing.assert_close(grad_theta, finite_difference, rtol=1e-6, atol=1e-6)


def test_heaviside_threshold_gradient_is_the_rectangle_pseudo_derivative(gen):
    pre, threshold = _jump_inputs(gen)
    eps = 0.3
    weights = torch.randn(threshold.shape, generator=gen, dtype=torch.float64)
    pre.requires_grad_(True)
    theta = threshold.clone().requires_grad_(True)
    count = firing_count(pre, theta, eps)
    (grad_theta,) = torch.autograd.grad((count * weights).sum(), theta)
    window = ((pre.detach() - threshold) / eps).abs() < 0.5
    torch.testing.assert_close(grad_theta, -(weights / eps) * window.sum(0))
    assert torch.autograd.grad((firing_count(pre, theta, eps) * weights).sum(), pre, allow_unused=True)[0] is None

    # The rectangle kernel is the derivative of the smoothed step clip((z - theta)/eps + 1/2, 0, 1).
    def smoothed(t):
        return (weights * torch.clamp((pre.detach() - t) / eps + 0.5, 0, 1).sum(0))

    h = 1e-6
    finite_difference = (smoothed(threshold + h) - smoothed(threshold - h)) / (2 * h)
    torch.testing.assert_close(grad_theta, finite_difference, rtol=1e-6, atol=1e-6)


def test_jumprelu_step_trains_the_log_threshold_through_both_estimators(gen, seed):
    sae = randomise(build("jumprelu", seed, bandwidth=0.4, l0_coefficient=0.3), gen).double()
    x = torch.randn(50, D_IN, generator=gen, dtype=torch.float64)
    out = sae.training_step(x, 0)
    out.loss.backward()
    with torch.no_grad():
        theta = sae.log_threshold.exp()
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = pre * (pre > theta)
        residual = x - acts @ sae.W_dec - sae.b_dec
        torch.testing.assert_close(out.loss, residual.pow(2).sum(-1).mean() + 0.3 * (pre > theta).sum() / 50)
        upstream = -2 / 50 * residual @ sae.W_dec.T  # d mse / d acts
        window = (pre - theta).abs() < 0.2
        d_theta = -(theta / 0.4) * (upstream * window).sum(0) + 0.3 / 50 * -(1 / 0.4) * window.sum(0)
        torch.testing.assert_close(sae.log_threshold.grad, d_theta * theta)  # chain rule through exp


def test_jumprelu_thresholds_start_at_the_target_l0(gen, seed):
    sae = randomise(build("jumprelu", seed, target_l0=4.0), gen)
    x = torch.randn(100, D_IN, generator=gen)
    sae.initialize_from_batch(x)
    assert torch.equal(sae.log_threshold, sae.log_threshold[0].expand(D_SAE))  # one shared start
    assert int((sae.encode(x) > 0).sum()) == 400
    untargeted = build("jumprelu", seed)
    untargeted.initialize_from_batch(x)
    torch.testing.assert_close(untargeted.log_threshold.exp(), torch.full((D_SAE,), 1e-3))


# --- P-annealing ------------------------------------------------------------------------------


def test_p_schedule_runs_from_p_start_to_p_end(seed):
    config = build("p_anneal", seed, total_steps=1000, p_start=1.0, p_end=0.2, n_p_updates=8).config
    ps = [config.p_at(step) for step in range(1000)]
    assert ps[0] == 1.0 and ps[49] == 1.0  # before anneal_start_fraction = 5%
    assert ps[999] == pytest.approx(0.2) and ps[800] == pytest.approx(0.2)  # p_end from 80% on
    assert all(b <= a for a, b in zip(ps, ps[1:]))
    assert len(set(ps)) == 9  # p_start and 8 updates
    steps = config.p_change_steps()
    assert steps[0] == 50 and steps[-1] == 800
    short = build("p_anneal", seed, total_steps=7, anneal_end_fraction=1.0).config
    assert short.p_at(6) == pytest.approx(0.2)  # the last value is reached even in a short run


def test_p_anneal_loss_and_coefficient_rescaling(gen, seed):
    sae = randomise(build("p_anneal", seed, total_steps=100, lp_coefficient=0.5, n_p_updates=4,
                          rescale_batches=3, penalty_warmup_fraction=0.0), gen).double()
    x = torch.abs(torch.randn(40, D_IN, generator=gen, dtype=torch.float64))
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    mse = (x - acts @ sae.W_dec - sae.b_dec).pow(2).sum(-1).mean()

    def lp(p):
        return acts.pow(p).sum(-1).mean()

    first_change = sae.config.p_change_steps()[0]  # step 5: p goes from 1 to 0.8
    for step in range(first_change):
        out = sae.training_step(x, step)  # same batch, same weights: the means are of equal terms
    torch.testing.assert_close(out.loss, mse + 0.5 * lp(1.0))
    out = sae.training_step(x, first_change)
    assert sae.config.p_at(first_change) == pytest.approx(0.8)
    torch.testing.assert_close(sae.lp_coefficient, 0.5 * lp(1.0) / lp(0.8))
    torch.testing.assert_close(out.loss, mse + 0.5 * lp(1.0))  # the penalty kept its size


# --- sparse products --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_penalty_step_on_sparse_products_matches_the_dense_one(kind, gen, seed, monkeypatch):
    """The same loss and gradients whether the products after the encoder run on the non-zeros
    or densely (msae.kernels.sparse.decode_sparse / encode_sparse_grad), in float64."""
    # a wide JumpReLU window, so that latents just below a threshold feed its gradient
    overrides = {"bandwidth": 0.5} if kind == "jumprelu" else {}
    dense = randomise(build(kind, seed, **overrides), gen).double()
    sparse = copy.deepcopy(dense)
    x = sparse_data(gen, 48, torch.float64)
    outputs = {}
    for name, sae, max_density in (("dense", dense, -1.0), ("sparse", sparse, 1.0)):
        monkeypatch.setattr("msae.kernels.sparse.SPARSE_PRODUCTS_MAX_DENSITY", max_density)
        outputs[name] = sae.training_step(x, 10)
        outputs[name].loss.backward()
    density = float((outputs["dense"].acts != 0).double().mean())
    assert 0.05 < density < 0.95  # both active and silent latents
    torch.testing.assert_close(outputs["sparse"].loss, outputs["dense"].loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outputs["sparse"].residual, outputs["dense"].residual, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert a.grad.abs().max() > 0, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_jumprelu_thresholds_learn_at_their_own_rate(gen, seed):
    """optimizer_groups gives log_threshold its lr_scale, and optimization_step applies it:
    after one Adam step (|update| = lr on every entry with a gradient) the log-thresholds move
    threshold_lr_scale times the learning rate."""
    sae = build("jumprelu", seed, bandwidth=0.5, initial_threshold=0.3, threshold_lr_scale=30.0)
    groups = sae.optimizer_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 30.0] and groups[1]["params"] == [sae.log_threshold]
    assert sum(len(g["params"]) for g in groups) == len(list(sae.parameters()))
    # eps ~0: Adam's first step is then lr * sign(gradient) even for the tiny gradients some
    # draws give a threshold (with the default eps=1e-8, a gradient of 1e-5 moves it 0.1% less)
    optimizer = torch.optim.Adam(groups, lr=1e-3, eps=1e-20)
    before = sae.log_threshold.detach().clone()
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=0, grad_clip=None)
    optimization_step(sae, optimizer, sparse_data(gen, 64), 0, config)
    moved = (sae.log_threshold.detach() - before).abs()
    assert moved.max() > 0
    torch.testing.assert_close(moved[moved > 0], torch.full_like(moved[moved > 0], 30e-3), rtol=1e-3, atol=0)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 30e-3]
