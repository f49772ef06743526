"""Per-latent summaries against brute-force versions on fresh random codes."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from msae.evals.latent_summaries import SummaryConfig, TextSample, logit_effects, summarise_latents


def random_sample(rng, n_contexts=12, ctx=20, d_sae=9, density=0.15):
    tokens = torch.from_numpy(rng.integers(0, 50, size=(n_contexts, ctx)))
    keep = torch.ones(n_contexts, ctx, dtype=torch.bool)
    keep[:, 0] = False
    keep[torch.from_numpy(rng.random((n_contexts, ctx)) < 0.1)] = False
    n_kept = int(keep.sum())
    codes = rng.exponential(size=(n_kept, d_sae)) * (rng.random((n_kept, d_sae)) < density)
    codes[:, 3] = 0.0  # a dead latent
    sample = TextSample(tokens, keep, torch.randn(n_kept, 4))
    return sample, codes


def test_summaries_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    sample, codes = random_sample(rng)
    config = SummaryConfig(n_contexts=3, tokens_before=4, tokens_after=2, histogram_bins=5, n_logit_tokens=2)
    strings = {i: f"t{i}" for i in range(50)}
    groups = [1] * 4 + [2] * 5
    out = summarise_latents(sp.csr_matrix(codes), sample, range(9), strings, config, groups=groups)

    # brute force: the latent's activation at every (context, position), zero where not kept
    dense = np.zeros((*sample.tokens.shape, codes.shape[1]))
    dense[sample.keep.numpy()] = codes
    for latent in range(9):
        s = out[latent]
        column = dense[..., latent]
        assert s["group"] == groups[latent]
        assert s["frequency"] == pytest.approx((codes[:, latent] > 0).mean())
        assert s["max"] == pytest.approx(column.max())
        assert sum(s["histogram"]["counts"]) == (codes[:, latent] > 0).sum()
        best_per_context = column.max(axis=1)
        expected_contexts = [c for c in np.argsort(-best_per_context, kind="stable") if best_per_context[c] > 0][:3]
        assert len(s["contexts"]) == len(expected_contexts)
        for window, context in zip(s["contexts"], expected_contexts):
            peak = int(column[context].argmax())
            start, end = max(0, peak - 4), min(column.shape[1], peak + 3)
            assert window["peak"] == peak - start
            assert window["tokens"] == [f"t{t}" for t in sample.tokens[context, start:end].tolist()]
            np.testing.assert_allclose(window["acts"], column[context, start:end], atol=1e-4)
    assert out[3]["contexts"] == [] and out[3]["frequency"] == 0 and out[3]["max"] == 0


def test_logit_effects_match_float64_reference(seed):
    torch.manual_seed(seed)
    W_dec, W_U = torch.randn(300, 16), torch.randn(16, 40)
    top_ids, top_values, bottom_ids, bottom_values = logit_effects(W_dec, W_U, n=5, chunk=64)
    reference = (W_dec.double() @ W_U.double()).numpy()
    for latent in (0, 63, 64, 299):
        order = np.argsort(-reference[latent])
        np.testing.assert_array_equal(top_ids[latent], order[:5])
        np.testing.assert_allclose(top_values[latent], reference[latent, order[:5]], rtol=1e-5)
        np.testing.assert_array_equal(bottom_ids[latent], order[::-1][:5])
        np.testing.assert_allclose(bottom_values[latent], reference[latent, order[::-1][:5]], rtol=1e-5)
    with pytest.raises(ValueError, match="unembedding"):
        logit_effects(W_dec, torch.randn(8, 40), n=5)


def test_text_sample_checks_its_shapes():
    tokens = torch.zeros(2, 5, dtype=torch.long) + 7
    keep = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="rows"):
        TextSample(tokens, keep, torch.randn(9, 3))
    with pytest.raises(ValueError, match="shape"):
        TextSample(tokens, keep[:, :4], torch.randn(8, 3))
