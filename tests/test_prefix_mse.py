"""The one-pass prefix loss against a brute-force float64 decode of every prefix."""

import pytest
import torch

from msae.kernels.prefix_mse import cumulative_prefix_mse


def random_problem(gen, dtype=torch.float64, batch=37, d_sae=53, d_in=19):
    acts = torch.randn(batch, d_sae, generator=gen, dtype=dtype).relu()
    acts = acts * (torch.rand(batch, d_sae, generator=gen, dtype=dtype) < 0.3)  # sparse, like an SAE
    W_dec = torch.randn(d_sae, d_in, generator=gen, dtype=dtype)
    b_dec = torch.randn(d_in, generator=gen, dtype=dtype)
    x = torch.randn(batch, d_in, generator=gen, dtype=dtype)
    cuts = torch.randperm(d_sae - 1, generator=gen)[:4].add(1).sort().values.tolist()
    return acts, W_dec, b_dec, x, cuts + [d_sae]


def brute_force(acts, W_dec, b_dec, x, ends, stop_gradient=False):
    """Decode every prefix from scratch."""
    out = []
    for i, end in enumerate(ends):
        if stop_gradient:
            start = ends[i - 1] if i else 0
            earlier = (acts[:, :start] @ W_dec[:start]).detach()
            x_hat = earlier + acts[:, start:end] @ W_dec[start:end] + b_dec
        else:
            x_hat = acts[:, :end] @ W_dec[:end] + b_dec
        out.append((x - x_hat).pow(2).sum(-1).mean())
    return torch.stack(out)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_values_and_gradients_match_brute_force_float64(gen, stop_gradient):
    acts, W_dec, b_dec, x, ends = random_problem(gen)
    weights = torch.rand(len(ends), generator=gen, dtype=torch.float64)  # arbitrary upstream gradient
    params = [t.requires_grad_() for t in (acts, W_dec, b_dec)]

    mse, residual = cumulative_prefix_mse(acts, W_dec, b_dec, x, ends, stop_gradient)
    grads = torch.autograd.grad((weights * mse).sum(), params)
    ref = brute_force(acts, W_dec, b_dec, x, ends, stop_gradient)
    ref_grads = torch.autograd.grad((weights * ref).sum(), params)

    torch.testing.assert_close(mse, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(residual, x - (acts @ W_dec + b_dec).detach())


def test_float32_matches_float64_reference(gen):
    problem64 = random_problem(gen, batch=256, d_sae=512, d_in=64)
    acts, W_dec, b_dec = (t.float().requires_grad_() for t in problem64[:3])
    mse, _ = cumulative_prefix_mse(acts, W_dec, b_dec, problem64[3].float(), problem64[4])
    mse.sum().backward()
    params64 = [t.requires_grad_() for t in problem64[:3]]
    ref = brute_force(*problem64)
    ref.sum().backward()
    torch.testing.assert_close(mse.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip((acts, W_dec, b_dec), params64):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


def test_stop_gradient_keeps_the_loss_and_cuts_cross_group_gradients(gen):
    acts, W_dec, b_dec, x, ends = random_problem(gen)
    acts.requires_grad_()
    plain, _ = cumulative_prefix_mse(acts, W_dec, b_dec, x, ends, stop_gradient=False)
    stopped, _ = cumulative_prefix_mse(acts, W_dec, b_dec, x, ends, stop_gradient=True)
    torch.testing.assert_close(plain, stopped, rtol=0, atol=0)
    starts = [0] + ends[:-1]
    for i in range(1, len(ends)):  # prefix i's loss reaches no latent of an earlier group
        (grad,) = torch.autograd.grad(stopped[i], acts, retain_graph=True)
        assert grad[:, : starts[i]].abs().max() == 0
        assert grad[:, starts[i] : ends[i]].abs().max() > 0
        (plain_grad,) = torch.autograd.grad(plain[i], acts, retain_graph=True)
        assert plain_grad[:, : starts[i]].abs().max() > 0  # without it, they do


def test_one_group_is_plain_mse(gen):
    acts, W_dec, b_dec, x, _ = random_problem(gen)
    mse, _ = cumulative_prefix_mse(acts, W_dec, b_dec, x, [acts.shape[1]])
    torch.testing.assert_close(mse[0], (x - acts @ W_dec - b_dec).pow(2).sum(-1).mean())


@pytest.mark.parametrize("ends", [[10, 5, 53], [10, 20], [0, 53], [10, 10, 53], []])
def test_bad_prefix_ends_are_refused(gen, ends):
    acts, W_dec, b_dec, x, _ = random_problem(gen)
    with pytest.raises(ValueError, match="prefix ends"):
        cumulative_prefix_mse(acts, W_dec, b_dec, x, ends)
