"""The depth study's bookkeeping and the adapter that lets msae's toy evaluation read the
reference implementation's SAE (the reference itself is not in the repository: a stand-in with
its interface is written here, and the real one is compared in notebook 19)."""

import json

import numpy as np
import pytest
import torch

from msae.experiments import profiles, toy
from msae.experiments.toy_depth import VARIANTS, coverage_rows, level_rows, run_variants, table_columns, variant_rows
from msae.experiments.toy_reference import ReferenceAdapter, load_reference, run_reference

STAND_IN = '''
import numpy as np
import torch
import torch.nn as nn


class RunningAvgNormalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.running_avg = nn.Parameter(torch.zeros(1), requires_grad=False)

    def normalize(self, x, update=False):
        if update:
            self.running_avg.data = 0.9 * self.running_avg + 0.1 * x.norm(dim=-1).mean()
        return x * (np.sqrt(x.shape[-1]) / self.running_avg.detach())

    def unnormalize(self, x):
        return x * (self.running_avg.detach() / np.sqrt(x.shape[-1]))


class MatryoshkaSAE(nn.Module):
    """The reference's interface: constructor keywords, step(x), get_acts(x), normalizer."""

    def __init__(self, d_model, n_latents, n_prefixes, target_l0, n_steps, lr=3e-2, permute_latents=True,
                 min_prefix_length=1, sparsity_type="l1", starting_sparsity_loss_scale=1.2):
        super().__init__()
        self.W_enc = nn.Parameter(torch.randn(d_model, n_latents) / np.sqrt(d_model))
        self.b_enc = nn.Parameter(0.1 * torch.randn(n_latents))
        self.W_dec = nn.Parameter(torch.randn(n_latents, d_model))
        self.b_dec = nn.Parameter(torch.randn(d_model))
        self.d_model, self.calls = d_model, []
        self.normalizer = RunningAvgNormalizer()

    def step(self, x):
        self.calls.append(x.clone())
        self.normalizer.normalize(x, update=True)

    def get_acts(self, x):
        x = self.normalizer.normalize(x)
        acts = torch.relu(x @ self.W_enc + self.b_enc) * self.W_dec.norm(dim=1)
        return self.normalizer.unnormalize(acts)

    def reconstruct(self, x):
        x = self.normalizer.normalize(x)
        return self.normalizer.unnormalize(torch.relu(x @ self.W_enc + self.b_enc) @ self.W_dec + self.b_dec)
'''


@pytest.fixture
def stand_in(tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "sae.py").write_text(STAND_IN)
    return folder


def test_adapter_reads_the_reference_as_its_own_get_acts_and_reconstruction(stand_in, seed):
    module = load_reference(stand_in)
    torch.manual_seed(seed)
    # as in the toy model, one latent per input dimension: the reference's get_acts unnormalises
    # by sqrt of its last dimension, the number of latents, where its reconstruction uses d_model
    sae = module.MatryoshkaSAE(d_model=7, n_latents=7, n_prefixes=3, target_l0=2, n_steps=5)
    for _ in range(5):
        sae.step(torch.randn(20, 7) * 3)
    adapter, x = ReferenceAdapter(sae), torch.randn(30, 7)
    codes = adapter.encode(x)
    torch.testing.assert_close(codes * adapter.W_dec.norm(dim=1), sae.get_acts(x))
    torch.testing.assert_close(adapter.decode(codes), sae.reconstruct(x).detach())


def test_reference_runs_on_msae_batches_and_are_cached(stand_in, tmp_path, monkeypatch):
    config = profiles.toy_config("smoke", steps=7, eval_samples=4000)
    runs = tmp_path / "runs"
    assert run_reference(config, [0], runs, None) is None  # nothing cached, no source
    seen = {}
    real_train = __import__("msae.experiments.toy_reference", fromlist=["x"]).train_reference

    def spy(module, cfg, kind):
        adapter = real_train(module, cfg, kind)
        seen[kind] = adapter.sae.calls
        return adapter

    monkeypatch.setattr("msae.experiments.toy_reference.train_reference", spy)
    first = run_reference(config, [0], runs, stand_in)
    data = toy.make_data(config)
    expected = [data.next_batch() for _ in range(7)]
    for kind in ("vanilla", "matryoshka"):  # both fed msae's stream for the seed, batch for batch
        assert len(seen[kind]) == 7 and all(torch.equal(a, b) for a, b in zip(seen[kind], expected))
        saved = json.loads((runs / "toy_reference" / config.run_name() / f"{kind}.json").read_text())
        assert saved["summary"] == first[0][kind] and saved["config"]["steps"] == 7
    monkeypatch.setattr("msae.experiments.toy_reference.train_reference", lambda *a: pytest.fail("retrained"))
    assert run_reference(config, [0], runs, None) == first


def test_level_rows_average_each_level_over_seeds():
    summaries = {
        s: {kind: {"mean_matched_cosine": 0.5 + s, "min_matched_cosine": 0.1, "cosine_L0": 0.9 - s / 10, "cosine_L1": 0.8,
                   "cosine_L2": 0.7, "absorption_L0": 0.1 * (s + 1), "absorption_L1": 0.0}
            for kind in ("vanilla", "matryoshka")}
        for s in (0, 1)
    }
    rows = level_rows({"depth3": summaries}, implementation="reference")
    assert len(rows) == 2 * 3
    top = next(r for r in rows if r["sae"] == "vanilla" and r["level"] == 0)
    assert top["cosine"] == pytest.approx(0.85) and top["absorption"] == pytest.approx(0.15)
    assert top["implementation"] == "reference" and top["seeds"] == 2
    last = next(r for r in rows if r["sae"] == "matryoshka" and r["level"] == 2)
    assert last["absorption"] is None and last["cosine"] == pytest.approx(0.7)
    assert np.isclose(last["mean cosine (tree)"], 1.0)


def test_each_variant_changes_its_own_setting_and_keeps_the_paper_runs_names():
    base = profiles.toy_config("smoke", tree="depth2")
    data = toy.make_data(base)
    n_features = data.tree.n_features
    names = {name: make(base).run_name() for name, make in VARIANTS.items()}
    assert names["paper settings"] == base.run_name() and len(set(names.values())) == len(VARIANTS)
    saes = {name: toy.make_sae("matryoshka", make(base), data).config for name, make in VARIANTS.items()}
    assert saes["paper settings"].d_sae == n_features and saes["paper settings"].sort_latents
    assert saes["every prefix end"].n_prefixes == n_features
    assert saes["uniform prefix ends"].pareto_exponent > 0.9
    assert not saes["no latent sorting"].sort_latents
    assert saes["2 latents per feature"].d_sae == 2 * n_features
    assert VARIANTS["2.5x steps"](base).steps == int(2.5 * base.steps)
    assert VARIANTS["lr / 3"](base).lr == pytest.approx(base.lr / 3)
    # the vanilla SAE has one prefix and no sorting whatever the variant says
    vanilla = toy.make_sae("vanilla", VARIANTS["every prefix end"](base), data).config
    assert vanilla.n_prefixes == 1 and not vanilla.sort_latents


def test_bad_variant_settings_are_refused_before_training(tmp_path):
    config = profiles.toy_config("smoke", tree="depth2", steps=5)
    with pytest.raises(ValueError, match="unknown variants"):
        run_variants(config, ["depth2"], [0], ["paper settings", "more magic"], tmp_path)
    with pytest.raises(ValueError, match="latents_per_feature"):
        toy.check_config(profiles.toy_config("smoke", tree="depth2", latents_per_feature=0))
    with pytest.raises(ValueError, match="at most 30 prefixes"):
        toy.check_config(profiles.toy_config("smoke", tree="depth2", latents_per_feature=2, n_prefixes=31))
    toy.check_config(profiles.toy_config("smoke", tree="depth2", latents_per_feature=2, n_prefixes=30))
    with pytest.raises(ValueError, match="kinds"):
        toy.train_toy_saes(config, tmp_path, progress=False, kinds=("topk",))
    assert not (tmp_path / "toy").exists()


def test_variant_study_trains_only_matryoshka_and_averages_over_seeds(tmp_path):
    config = profiles.toy_config("smoke", steps=40, warmup_steps=5, eval_samples=2000)
    variants = ["paper settings", "2 latents per feature"]
    results = run_variants(config, ["depth2"], [0, 1], variants, tmp_path, progress=False)
    for variant in variants:
        run_dir = tmp_path / "toy" / VARIANTS[variant](toy.replace(config, tree="depth2", seed=0)).run_name()
        assert sorted(p.name for p in run_dir.iterdir()) == ["matryoshka"]
    rows = variant_rows(results)
    assert [(r["variant"], r["tree"]) for r in rows] == [(v, "depth2") for v in variants]
    for row in rows:
        evaluations = results[row["variant"]]["depth2"]
        summaries = [toy.summary(e) for e in evaluations.values()]
        assert row["absorption L0"] == pytest.approx(np.mean([e.absorption_by_depth[0] for e in evaluations.values()]))
        assert 0 <= row["covered L0"] <= 1
        assert row["min cosine"] == pytest.approx(np.mean([s["min_matched_cosine"] for s in summaries]))
        dead = [sum(1 for j in range(e.latent_acts.shape[1]) if not bool((e.latent_acts[:, j] > 0).any()))
                for e in evaluations.values()]
        assert row["dead"] == pytest.approx(np.mean(dead)) and row["seeds"] == 2
    assert results["2 latents per feature"]["depth2"][0].latent_acts.shape[1] == 30


def _planted(data, latent_acts, true_acts):
    # only what the coverage rows read; absorption per level as a marker
    return toy.ToyEvaluation(true_acts, latent_acts, None, None, None, None, None, {0: 0.25, 1: 0.5}, None, None, None)


def test_coverage_rows_find_parents_by_level(gen):
    data = toy.make_data(profiles.toy_config("smoke", tree="depth3"))
    true_acts, _ = data.sample(6000, gen)
    tree = data.tree
    perfect = true_acts * (1 + 0.05 * torch.rand(true_acts.shape, generator=gen))
    absorbed = perfect.clone()
    for parent in range(tree.n_features):
        children = [c for c in range(tree.n_features) if tree.parent_feature[c] == parent]
        if children and tree.feature_depth[parent] == 0:  # top-level parents silent under a child
            absorbed[true_acts[:, children].sum(1) > 0, parent] = 0.0
    results = {"depth3": {0: {"vanilla": _planted(data, absorbed, true_acts), "matryoshka": _planted(data, perfect, true_acts)},
                          1: {"vanilla": _planted(data, absorbed, true_acts), "matryoshka": _planted(data, absorbed, true_acts)}}}
    rows = {r["sae"]: r for r in coverage_rows(results)}
    assert rows["vanilla"]["covered L0"] == 0.0 and rows["vanilla"]["covered L1"] == 1.0
    assert rows["matryoshka"]["covered L0"] == 0.5 and rows["matryoshka"]["covered L1"] == 1.0  # one seed of two
    assert rows["matryoshka"]["absorption L1"] == 0.5 and "covered L2" not in rows["matryoshka"]  # leaves are no parents


def test_table_columns_put_every_level_in_order_where_the_first_row_has_them():
    rows = [{"variant": "a", "tree": "paper", "absorption L0": 0.1, "covered L0": 0.9, "dead": 0.0},
            {"variant": "a", "tree": "paper4", "absorption L0": 0.1, "covered L0": 0.9, "absorption L2": 0.5,
             "covered L2": 0.2, "absorption L1": 0.3, "covered L1": 0.7, "dead": 3.0}]
    assert table_columns(rows) == ["variant", "tree", "absorption L0", "covered L0", "absorption L1", "covered L1",
                                   "absorption L2", "covered L2", "dead"]
