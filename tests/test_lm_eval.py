import pytest
import torch
import torch.nn.functional as F

from lm_helpers import tiny_model
from msae.data.activations import CorpusConfig
from msae.evals import metrics
from msae.evals.lm_eval import (
    build_eval_set,
    cross_entropy_with,
    evaluate_sae,
    loss_recovered,
    pca_reconstruction,
    splice_controls,
    spliced_losses,
)
from msae.saes.base import InferenceSAE

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1)


@pytest.fixture(scope="module")
def eval_set(model):
    return build_eval_set(model, HOOK, CorpusConfig(n_documents=50, seed=2), n_contexts=6, context_size=24)


def test_clean_cross_entropy_is_the_models_own(model, eval_set):
    with torch.no_grad():
        logits = model(eval_set.tokens)
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), eval_set.tokens[:, 1:].flatten(), reduction="none")
    expected = losses[eval_set.keep[:, :-1].flatten()].mean()
    assert eval_set.ce_clean == pytest.approx(float(expected), rel=1e-5)
    assert eval_set.ce_zero > eval_set.ce_clean
    assert eval_set.keep[:, 0].sum() == 0  # the first position is never replaced or scored


def signed_identity_sae(d):
    """ReLU(x) - ReLU(-x) = x: a 2d-latent SAE that reconstructs perfectly."""
    sae = InferenceSAE(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_a_perfect_sae_recovers_all_the_loss(model, eval_set):
    result = evaluate_sae(signed_identity_sae(48), model, eval_set, prefix_ends=[48, 96])
    assert result["variance_explained"] == pytest.approx(1.0, abs=1e-6)
    assert result["ce_sae"] == pytest.approx(eval_set.ce_clean, rel=1e-5)
    assert result["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    positive_only = eval_set.x.clamp_min(0)  # the first prefix keeps only ReLU(x)
    assert result["prefixes"][0]["ce_sae"] == pytest.approx(cross_entropy_with(model, eval_set, positive_only), rel=1e-6)
    assert result["prefixes"][1]["ce_sae"] == pytest.approx(result["ce_sae"])
    assert result["kl_sae"] == pytest.approx(0, abs=1e-5) and result["prefixes"][0]["kl_sae"] > 1e-3
    assert len(result["frequency"]) == 96 and 0 < result["fraction_alive"] <= 1


def test_loss_recovered_formula():
    assert loss_recovered(ce_sae=3.0, ce_clean=2.0, ce_zero=10.0) == pytest.approx(7 / 8)


def _brute_force_losses(model, eval_set, replacement):
    """CE and KL(clean || spliced) from full forward passes of the whole model, in float64."""
    resid = eval_set.resid.clone()
    resid[eval_set.keep] = replacement
    with torch.no_grad():
        clean = model(eval_set.resid, start_at_layer=eval_set.layer + 1).double().log_softmax(-1)[:, :-1]
        spliced = model(resid, start_at_layer=eval_set.layer + 1).double().log_softmax(-1)[:, :-1]
    scored = eval_set.keep[:, :-1]
    targets = eval_set.tokens[:, 1:][scored]
    ce = -spliced[scored].gather(1, targets[:, None]).mean()
    kl = (clean[scored].exp() * (clean[scored] - spliced[scored])).sum(-1).mean()
    return float(ce), float(kl)


def test_spliced_losses_match_a_brute_force_computation(model, eval_set, gen):
    noisy = eval_set.x + 0.5 * eval_set.x.std() * torch.randn(eval_set.x.shape, generator=gen)
    zeros = torch.zeros_like(eval_set.x)
    losses = spliced_losses(model, eval_set, [eval_set.x, noisy, zeros], batch_contexts=4)  # chunks split contexts
    assert losses[0]["ce"] == pytest.approx(eval_set.ce_clean, rel=1e-5) and losses[0]["kl"] == pytest.approx(0, abs=1e-6)
    assert losses[2]["ce"] == pytest.approx(eval_set.ce_zero, rel=1e-5)
    for replacement, loss in zip((noisy, zeros), losses[1:]):
        ce, kl = _brute_force_losses(model, eval_set, replacement)
        assert loss["ce"] == pytest.approx(ce, rel=1e-4) and loss["kl"] == pytest.approx(kl, rel=1e-3)
        assert loss["kl"] > 0
    assert cross_entropy_with(model, eval_set, noisy) == pytest.approx(losses[1]["ce"], rel=1e-6)


def test_pca_reconstruction_takes_the_fewest_components(gen):
    x = torch.randn(400, 6, generator=gen) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
    for target in (0.5, 0.9, 0.99):
        x_hat, m = pca_reconstruction(x, target)
        assert metrics.variance_explained(x, x_hat) >= target
        if m > 1:
            fewer, _ = pca_reconstruction(x, 0.0)  # one component
            basis = torch.linalg.svd((x - x.mean(0)).double(), full_matrices=False)[2][: m - 1]
            one_less = ((x - x.mean(0)).double() @ basis.T @ basis + x.mean(0)).float()
            assert metrics.variance_explained(x, one_less) < target
    assert pca_reconstruction(x, 1.0 - 1e-9)[1] == 6


def test_splice_controls_on_a_perfect_and_a_lossy_sae(model, eval_set):
    perfect = splice_controls(signed_identity_sae(48), model, eval_set)
    assert perfect["sae"]["ce"] == pytest.approx(eval_set.ce_clean, rel=1e-5) and perfect["noise"]["kl"] < 1e-5
    assert perfect["clean"]["kl"] == pytest.approx(0, abs=1e-6)
    lossy = signed_identity_sae(48)
    with torch.no_grad():
        lossy.W_dec[:24].zero_()  # the positive half of the first 24 dimensions is lost
    controls = splice_controls(lossy, model, eval_set, seed=3)
    ve = controls["sae"]["variance_explained"]
    assert 0 < ve < 1 and controls["pca"]["variance_explained"] >= ve
    assert controls["noise"]["variance_explained"] < 1
    with torch.no_grad():
        error = eval_set.x - lossy.decode(lossy.encode(eval_set.x))
    # Noise as large as the SAE's error, token by token: its summed squared residual is the
    # error's (the noise's sample mean, ~1/n of it, is all variance_explained takes away).
    total = (eval_set.x - eval_set.x.mean(0)).double().pow(2).sum()
    noise_unexplained = (1 - controls["noise"]["variance_explained"]) * total
    assert float(noise_unexplained) == pytest.approx(float(error.double().pow(2).sum()), rel=0.05)
    for name in ("sae", "pca", "noise"):
        assert controls[name]["kl"] > 0
