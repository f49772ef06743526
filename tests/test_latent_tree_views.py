"""Tree views of saved SAEs on a tiny model: msae's folders, dictionary_learning's, chains of
SAEs, the summaries' cache and the browser page's data."""

import json
import re

import numpy as np
import pytest
import torch

from lm_helpers import tiny_model
from msae.data.activations import CorpusConfig
from msae.evals.latent_trees import Node, encode_sparse
from msae.experiments import latent_trees as trees
from msae.io import save_sae
from msae.plots.latent_browser import browser_html
from msae.saes.registry import build_sae

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model_and_sample():
    model = tiny_model("llama")
    config = trees.TreeConfig(n_contexts=12, context_size=24, summary=trees.SummaryConfig(n_contexts=3, tokens_before=3, tokens_after=1))
    from msae.evals.latent_summaries import sample_text

    text = sample_text(model, HOOK, CorpusConfig(source="stories", n_documents=60, seed=3), config.n_contexts, config.context_size)
    return model, text, config


def thresholded_sae(d_sae, group_sizes, x, seed):
    """A Matryoshka (or, with one group, BatchTopK) SAE with random weights and an inference
    threshold at the pre-activations' 90th percentile, so that its codes are sparse."""
    torch.manual_seed(seed)
    sae = build_sae("matryoshka", d_in=x.shape[1], d_sae=d_sae, l0=3, group_sizes=group_sizes)
    with torch.no_grad():
        sae.threshold.fill_(float(sae.pre_activations(x).quantile(0.9)))
    return sae


def test_matryoshka_view_from_msae_and_dictionary_learning_folders(tmp_path, model_and_sample, seed, monkeypatch):
    model, sample, config = model_and_sample
    sae = thresholded_sae(24, [4, 8, 12], sample.resid, seed)
    save_sae(sae, tmp_path / "mat" / "sae")
    view = trees.build_view("Matryoshka", [tmp_path / "mat" / "sae"], model, sample, "k1", config)
    assert view.tree.level_names == ["group 1", "group 2", "group 3"]
    assert view.tree.levels == [list(range(0, 4)), list(range(4, 12)), list(range(12, 24))]
    # every root and every attached node has its summary, with the latent's own index and group
    expected = {Node(0, i).key for i in range(4)} | {n.key for n in view.tree.parent}
    assert set(view.summaries) == expected
    groups = trees.latent_groups([4, 12, 24])
    for key, summary in view.summaries.items():
        assert summary["latent"] == Node.from_key(key).latent and summary["group"] == groups[summary["latent"]]
    codes = encode_sparse(sae, sample.resid).toarray()
    for latent in range(4):
        assert view.summaries[f"0:{latent}"]["frequency"] == pytest.approx((codes[:, latent] > 0).mean())

    # the same weights as a dictionary_learning folder give the same tree and summaries
    dl = tmp_path / "dl" / "sae"
    dl.mkdir(parents=True)
    state = {"W_enc": sae.W_enc.detach(), "b_enc": sae.b_enc.detach(), "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach(),
             "k": torch.tensor(3), "threshold": sae.threshold.detach().clone(), "group_sizes": torch.tensor([4, 8, 12])}
    torch.save(state, dl / "ae.pt")
    (dl / "config.json").write_text(json.dumps({"trainer": {"dict_class": "MatryoshkaBatchTopKSAE", "layer": 1}}))
    again = trees.build_view("Matryoshka", [dl], model, sample, "k1", config)
    assert again.tree.parent == view.tree.parent
    assert json.dumps(again.summaries) == json.dumps(view.summaries)

    # summaries are cached beside each SAE: a second view computes none
    assert (tmp_path / "mat" / "evals" / "latent_summaries-k1.json").is_file()
    monkeypatch.setattr(trees, "summarise_latents", lambda *a, **k: pytest.fail("summaries recomputed"))
    cached = trees.build_view("Matryoshka", [tmp_path / "mat" / "sae"], model, sample, "k1", config)
    assert json.dumps(cached.summaries) == json.dumps(view.summaries)


def test_chain_view_and_the_browser_page(tmp_path, model_and_sample, seed):
    model, sample, config = model_and_sample
    folders = []
    for i, width in enumerate((6, 12, 24)):
        folders.append(save_sae(thresholded_sae(width, [width], sample.resid, seed + i), tmp_path / f"btk{width}" / "sae"))
    config = trees.TreeConfig(**{**config.__dict__, "threshold": 0.3})  # random SAEs: a low bar, so that nodes attach
    view = trees.build_view("BatchTopK", folders, model, sample, "k1", config)
    assert view.tree.level_names == ["6 latents", "12 latents", "24 latents"]
    assert view.tree.parent, "no latent attached: the test says nothing about the page's links"
    for child, parent in view.tree.parent.items():
        assert parent.level == child.level - 1 and view.tree.score[child] >= 0.3
    with pytest.raises(ValueError, match="narrow to wide"):
        trees.build_view("BatchTopK", folders[::-1], model, sample, "k1", config)

    page = browser_html(view)
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert set(data["nodes"]) == set(view.summaries)
    for key, node in data["nodes"].items():
        assert node["children"] == [c.key for c in view.tree.children(Node.from_key(key))]
        for tokens, acts, peak in node["contexts"]:
            assert len(tokens) == len(acts) and acts[peak] == pytest.approx(max(acts), abs=1e-2)
    sizes = [data["nodes"][k]["descendants"] for k in data["roots"]]
    assert sizes == sorted(sizes, reverse=True)
    # the page's token table decodes back to the summaries' text
    first = view.summaries[data["roots"][0]]["contexts"][0]["tokens"]
    assert [data["strings"][s] for s in data["nodes"][data["roots"][0]]["contexts"][0][0]] == first
    assert np.isfinite([n["frequency"] for n in data["nodes"].values()]).all()


def test_text_sample_can_leave_out_positions_of_outsized_norm():
    from msae.evals.latent_summaries import sample_text

    model = tiny_model("llama")
    corpus = CorpusConfig(source="stories", n_documents=30, seed=5)
    full = sample_text(model, HOOK, corpus, 6, 20)
    ratio = 1.02  # the tiny model has no sinks: a ratio near 1 drops about half the positions
    trimmed = sample_text(model, HOOK, corpus, 6, 20, max_norm_ratio=ratio)
    norms = full.resid.norm(dim=1)
    kept = norms <= ratio * norms.median()
    assert 0 < int(kept.sum()) < len(norms)
    torch.testing.assert_close(trimmed.resid, full.resid[kept])
    # the kept mask drops exactly those positions, so rows still line up with (context, position)
    assert int(trimmed.keep.sum()) == int(kept.sum()) and (trimmed.keep <= full.keep).all()
    positions = full.keep.nonzero()[kept]
    assert (trimmed.keep.nonzero() == positions).all()
