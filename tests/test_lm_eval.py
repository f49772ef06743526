import pytest
import torch
import torch.nn.functional as F

from lm_helpers import tiny_model
from msae.data.activations import CorpusConfig
from msae.evals.lm_eval import build_eval_set, cross_entropy_with, evaluate_sae, loss_recovered
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
    assert len(result["frequency"]) == 96 and 0 < result["fraction_alive"] <= 1


def test_loss_recovered_formula():
    assert loss_recovered(ce_sae=3.0, ce_clean=2.0, ce_zero=10.0) == pytest.approx(7 / 8)
