"""The scale ladder (msae.experiments.ladder): its profile tables, the steps rule, the reuse of the
sweep's own SAEs at the sweep's budget, linked activation caches, the rows, the figure and the
lines that answer the study's question; end to end on a tiny model."""

import hashlib
import importlib
import json
import os
import random
from dataclasses import replace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from lm_helpers import tiny_model, tiny_sweep_config
from msae.data.activations import ActivationConfig, CorpusConfig, collect_activations
from msae.experiments import feature_evals, ladder, pipeline, profiles, sweep
from msae.plots import ladder as ladder_plots

# --- the profile tables -------------------------------------------------------------------------


def test_each_profile_has_a_ladder_and_the_default_one_holds_the_sweep():
    default = profiles.ladder_config("default")
    assert default.widths == [2304, 4608, 9216] and default.token_budgets == [600_000, 3_000_000]
    assert default.k is None and default.architectures == ["batchtopk", "matryoshka"]
    smoke = profiles.ladder_config("smoke")
    assert len(smoke.widths) == 2 and len(smoke.token_budgets) == 2
    paper = profiles.ladder_config("paper")
    assert max(paper.widths) == 65536 and max(paper.token_budgets) == 500_000_000
    for profile in profiles.PROFILE_NAMES:
        config, rungs = profiles.sweep_config(profile), profiles.ladder_config(profile)
        # the sweep is one point of its profile's ladder, so the ladder reuses its L0-40 (matched_k) SAEs
        assert config.d_sae in rungs.widths and config.n_tokens in rungs.token_budgets, profile
        assert ladder.rung_config(config, config.n_tokens) == config
        assert ladder.ladder_k(config, rungs) == config.matched_k
    assert profiles.ladder_config("smoke", widths=[64], k=None).widths == [64]
    assert profiles.ladder_config("smoke", widths=[64]).token_budgets == smoke.token_budgets


@pytest.mark.parametrize("fields, message", [
    ({"widths": []}, "widths must be a non-empty list"),
    ({"token_budgets": [0, 10]}, "token_budgets must be a non-empty list of positive integers"),
    ({"widths": [64, 64]}, "widths has repeated values"),
    ({"k": 0}, "k must be a positive integer or None"),
    ({"architectures": ["relu"]}, r"architectures must be some of \['batchtopk', 'matryoshka'\]"),
])
def test_bad_ladders_say_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=message):
        ladder.LadderConfig(**{"widths": [64], "token_budgets": [1000], **fields})


def test_the_steps_keep_the_sweeps_passes_over_the_data(seed):
    rng = random.Random(seed)
    config = profiles.sweep_config("smoke", n_tokens=rng.randrange(5_000, 50_000), steps=rng.randrange(20, 2000))
    epochs = config.steps * config.batch_size / config.n_tokens
    for tokens in (config.n_tokens // 3, 5 * config.n_tokens, rng.randrange(1_000, 10**7)):
        rung = ladder.rung_config(config, tokens)
        assert rung.steps == ladder.rung_steps(config, tokens) == max(1, round(config.steps * tokens / config.n_tokens))
        assert rung.steps * rung.batch_size / tokens == pytest.approx(epochs, rel=1 / rung.steps)
        assert {k for k in vars(config) if getattr(config, k) != getattr(rung, k)} <= {"n_tokens", "steps"}
    # the sweep's own budget is the sweep: same config, same folder
    assert ladder.rung_config(config, config.n_tokens).name() == config.name()
    default = profiles.sweep_config("default")
    assert ladder.rung_steps(default, 3_000_000) == 7500  # 1,500 steps of 1,024 on 600k tokens: 2.56 passes


def test_ladder_saes_are_the_sweeps_at_its_width_and_the_scaling_studys_elsewhere():
    config = profiles.sweep_config("default")
    for architecture in ("batchtopk", "matryoshka"):
        name, fields = ladder.ladder_sae_fields(config, architecture, 2304, 40)
        assert name == f"{architecture}_k40" and fields == sweep.sae_configs(config)[name]
        name, fields = ladder.ladder_sae_fields(config, architecture, 9216, 40)
        assert name == f"{architecture}_d9216_k40" and fields["d_sae"] == 9216
    _, fields = ladder.ladder_sae_fields(config, "matryoshka", 9216, 40)
    assert fields["group_sizes"] == [288, 576, 1152, 2304, 4896]  # the sweep's fractions of 9216


# --- linked activation caches -------------------------------------------------------------------


def test_a_larger_cache_links_the_smaller_ones_shards_and_equals_a_fresh_one(tmp_path):
    model = tiny_model()
    small = ActivationConfig(model_name="tiny", hook_name="blocks.1.hook_resid_post", corpus=CorpusConfig(n_documents=200),
                             context_size=16, n_tokens=150,
                             shard_contexts=4)
    large = replace(small, n_tokens=400)
    first = collect_activations(model, small, tmp_path / "linked", progress=False)
    linked_tokens = ladder.link_smaller_cache(large, tmp_path / "linked")
    assert linked_tokens == json.loads((first / "meta.json").read_text())["n_tokens"] >= 150
    linked = collect_activations(model, large, tmp_path / "linked", progress=False)
    fresh = collect_activations(model, large, tmp_path / "fresh", progress=False)
    assert json.loads((linked / "meta.json").read_text()) == json.loads((fresh / "meta.json").read_text())
    files = sorted(p.name for p in fresh.glob("*.npy"))
    assert files == sorted(p.name for p in linked.glob("*.npy")) and len(files) > 2 * len(list(first.glob("shard_*")))
    for name in files:
        assert np.array_equal(np.load(linked / name), np.load(fresh / name)), name
    assert os.path.samefile(linked / "shard_00000.npy", first / "shard_00000.npy")  # linked, not recomputed
    assert ladder.link_smaller_cache(large, tmp_path / "linked") == 0  # complete: nothing to do
    other_hook = replace(large, hook_name="blocks.0.hook_resid_post")
    assert ladder.link_smaller_cache(other_hook, tmp_path / "linked") == 0


# --- end to end on a tiny model -----------------------------------------------------------------

TINY_LADDER = ladder.LadderConfig(widths=[32, 64], token_budgets=[1200, 2400])


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".msae-lock"}


@pytest.fixture(scope="module")
def tiny_ladder(tmp_path_factory):
    config = tiny_sweep_config(n_documents=120)
    runs = tmp_path_factory.mktemp("runs")
    results = sweep.run_sweep(config, runs, progress=False, model=tiny_model())
    before = {name: digest(results.folder / name) for name in ("batchtopk_k4", "matryoshka_k4")}
    metrics_before = json.loads(json.dumps(results.metrics))
    trained = ladder.run_ladder(results, TINY_LADDER, runs, progress=False)
    evaluator = feature_evals.FeatureEvaluator(results, feature_evals.EvalConfig(letter_max_words=200, n_stories=300,
                                                                                 concept_stories=40), runs / "eval_data",
                                               progress=False)
    return config, runs, results, before, metrics_before, trained, evaluator


def test_the_sweeps_budget_reuses_the_sweeps_saes_untouched(tiny_ladder):
    config, runs, results, before, metrics_before, trained, _ = tiny_ladder
    own = trained.rungs[0]
    assert own.tokens == config.n_tokens and own.results.folder == results.folder and own.results.config == config
    for name in ("batchtopk_k4", "matryoshka_k4"):
        assert digest(results.folder / name) == before[name]  # same checkpoint, same weights: not retrained
        assert own.results.metrics[name] == metrics_before[name]
    assert own.names == ["batchtopk_k4", "matryoshka_k4", "batchtopk_d64_k4", "matryoshka_d64_k4"]
    # the larger budget is its own sweep folder, trained for proportionally more steps
    larger = trained.rungs[1]
    assert larger.results.folder == runs / "sweeps" / ladder.rung_config(config, 2400).name() != results.folder
    history = json.loads((larger.results.folder / "matryoshka_d64_k4" / "history.json").read_text())
    assert history[-1]["step"] == larger.results.config.steps == 2 * config.steps


def test_rows_have_one_record_per_sae_with_absorption(tiny_ladder):
    config, runs, results, _, _, trained, evaluator = tiny_ladder
    rows = trained.rows(evaluator)
    assert [(r["tokens"], r["width"], r["architecture"]) for r in rows] == [
        (t, w, a) for t in (1200, 2400) for w in (32, 64) for a in ("batchtopk", "matryoshka")]
    for r in rows:
        assert r["k"] == 4 and r["l0"] > 0 and 0 < r["variance_explained"] <= 1
        assert r["steps"] == ladder.rung_steps(config, r["tokens"]) and r["tokens_collected"] >= r["token_budget"] == r["tokens"]
        assert r["epochs"] == pytest.approx(r["steps"] * config.batch_size / r["tokens_collected"])
        assert r["absorption_scored"] in (True, False) and 0 <= r["absorption_all_letters"] <= 1
        assert (r["absorption"] is None) == (not r["absorption_scored"])
        assert (trained.sae_path(r["tokens"], r["sae"]) / "cfg.json").is_file()
    # absorption is cached in each rung's folder, the sweep's own results untouched by the swap
    assert evaluator.results is results
    assert (trained.rungs[1].results.folder / "batchtopk_k4" / "evals" / "absorption.json").is_file()
    assert trained.rows(evaluator) == rows


def test_running_the_ladder_again_retrains_and_reevaluates_nothing(tiny_ladder, monkeypatch):
    config, runs, results, _, _, trained, _ = tiny_ladder
    monkeypatch.setattr(importlib.import_module("msae.experiments.sweep"), "evaluate_sae",
                        lambda *a, **k: pytest.fail("re-evaluated"))
    monkeypatch.setattr(importlib.import_module("msae.training.loop"), "_loop", lambda *a, **k: pytest.fail("retrained"))
    again = ladder.run_ladder(results, TINY_LADDER, runs, progress=False)
    assert again.rows() == trained.rows()


def test_a_budget_the_corpus_cannot_fill_is_a_smaller_rung_with_the_same_passes(tiny_ladder):
    config, runs, results, *_ = tiny_ladder
    with pytest.warns(UserWarning, match="the corpus gave only .* of the 1,000,000 tokens asked for"):
        short = ladder.run_ladder(results, ladder.LadderConfig(widths=[32], token_budgets=[1_000_000]), runs, progress=False)
    rung = short.rungs[0]
    assert rung.token_budget == 1_000_000 and rung.tokens == rung.tokens_collected < 1_000_000
    assert rung.results.config.steps == ladder.rung_steps(config, rung.tokens)
    assert [r["tokens"] for r in short.rows()] == [rung.tokens] * 2


def test_the_runtime_estimate_counts_only_what_is_left(tiny_ladder, tmp_path):
    config, runs, results, _, _, trained, _ = tiny_ladder
    rows, note = ladder.estimate_runtime(results, TINY_LADDER, runs)
    assert [r["SAEs to train"] for r in rows] == [0, 0] and all(r["collection (min)"] == 0 for r in rows)
    assert "the sweep's own training" in note  # its run folders say how long it took
    bigger = replace(TINY_LADDER, widths=[32, 128], token_budgets=[1200, 100_000])
    rows, _ = ladder.estimate_runtime(results, bigger, runs)
    cost = ladder.measured_training_cost(results)
    assert rows[0]["SAEs to train"] == 2 and rows[1]["SAEs to train"] == 4
    steps = ladder.rung_steps(config, 100_000)
    assert rows[1]["training (min)"] == pytest.approx(cost * (32 + 32 + 128 + 128) * steps * config.batch_size / 60)
    # every cache of the tiny ladder (and of the short-corpus test) differs only in n_tokens: the largest counts
    have = max(json.loads(meta.read_text())["n_tokens"] for meta in (runs / "activations").glob("*/meta.json"))
    assert rows[1]["collection (min)"] == pytest.approx((100_000 - have) / ladder.COLLECTED_TOKENS_PER_SECOND / 60)
    # without the sweep's run folders: the rough rule
    elsewhere = sweep.SweepResults(tmp_path / "sweeps" / config.name(), config, {}, None)
    rows, note = ladder.estimate_runtime(elsewhere, bigger, tmp_path)
    assert "rough rule" in note and rows[0]["SAEs to train"] == 4
    assert rows[0]["training (min)"] == pytest.approx(
        ladder.SECONDS_PER_LATENT_TOKEN * (2 * 32 + 2 * 128) * config.steps * config.batch_size / 60)


def test_the_figure_plots_each_rows_value(tiny_ladder):
    *_, trained, evaluator = tiny_ladder
    rows = trained.rows(evaluator)
    fig = ladder_plots.scale_ladder(rows)
    assert len(fig.axes) == 6
    by_width, by_tokens = fig.axes[2], fig.axes[5]  # variance explained
    line = next(line for line in by_width.lines if line.get_label() == "Matryoshka, 2.4k tokens")
    expected = [r for r in rows if r["architecture"] == "matryoshka" and r["tokens"] == 2400]
    assert list(line.get_xdata()) == [32, 64] and list(line.get_ydata()) == [r["variance_explained"] for r in expected]
    line = next(line for line in by_tokens.lines if line.get_label() == "BatchTopK, 64 latents")
    assert list(line.get_xdata()) == [1200, 2400]
    with pytest.raises(ValueError, match="along must be"):
        ladder_plots.plot_ladder(rows, "variance_explained", along="steps")


# --- what the rows say, on hand-built rows ------------------------------------------------------


def rows_from(values):
    """``{(tokens, width): (matryoshka, batchtopk)}`` -> ladder rows with ``absorption``."""
    return [{"tokens": t, "width": w, "architecture": a, "k": 40, "absorption": v, "absorption_scored": True,
             "absorption_all_letters": v} for (t, w), pair in values.items() for a, v in zip(("matryoshka", "batchtopk"), pair)]


def test_the_gap_trends_say_whether_the_gap_shrinks_closes_grows_or_reverses():
    rows = rows_from({(1, 10): (0.40, 0.10), (1, 20): (0.30, 0.10), (1, 40): (0.20, 0.30),
                      (2, 10): (0.20, 0.10), (2, 20): (0.25, 0.25), (2, 40): (0.60, 0.10)})
    lines = ladder.gap_trends(rows, "absorption")
    assert lines == [
        "absorption, Matryoshka - BatchTopK, 1 tokens, width 10 -> 40: +0.300 -> -0.100: reverses",
        "absorption, Matryoshka - BatchTopK, 2 tokens, width 10 -> 40: +0.100 -> +0.500: grows",
        "absorption, Matryoshka - BatchTopK, width 10, tokens 1 -> 2: +0.300 -> +0.100: shrinks",
        "absorption, Matryoshka - BatchTopK, width 20, tokens 1 -> 2: +0.200 -> +0.000: closes",
        "absorption, Matryoshka - BatchTopK, width 40, tokens 1 -> 2: -0.100 -> +0.500: reverses",
    ]
    gaps = ladder.gap_rows(rows, ["absorption"])
    assert [(g["tokens"], g["width"]) for g in gaps] == [(1, 10), (1, 20), (1, 40), (2, 10), (2, 20), (2, 40)]
    assert gaps[0]["absorption_gap"] == pytest.approx(0.30)


def test_a_verdict_per_rung_with_the_diagnostic_where_absorption_is_not_scored():
    rows = rows_from({(600_000, 2304): (0.3, 0.1), (3_000_000, 2304): (0.05, 0.4)})
    for r in rows[2:]:
        r.update(absorption_scored=False, absorption=None)
    lines = ladder.rung_verdicts(rows)
    assert len(lines) == 3
    assert lines[0].endswith("here (width 2304, 600,000 tokens, L0 40): higher (0.300 vs 0.100) -> reversed")
    assert "3,000,000 tokens, L0 40): not measured" in lines[1]
    assert "diagnostic over every letter" in lines[2] and lines[2].endswith("lower (0.050 vs 0.400) -> same")
    assert ladder.absorption_column(rows) == "absorption_all_letters"
    assert ladder.absorption_column(rows[:2]) == "absorption"
    text = ladder.distance_from_paper(profiles.ladder_config("default"), profiles.ladder_config("paper"))
    assert text.endswith("(7.11x wider, 167x more tokens)")


def test_the_plan_names_the_saes_the_ladder_trains(tiny_ladder):
    config, _, results, _, metrics_before, trained, _ = tiny_ladder
    planned = pipeline.ladder_groups(config, TINY_LADDER, set(sweep.sae_configs(config)))
    # what the ladder trained: every SAE of a rung but those its folder (the sweep's) held before
    new = {f"ladder {rung.token_budget:,} tokens": [n for n in rung.names if rung.results.folder != results.folder
                                                    or n not in metrics_before] for rung in trained.rungs}
    assert {name: list(group) for name, (_, group) in planned.items()} == {k: v for k, v in new.items() if v}
    for rung in trained.rungs:
        run, group = planned[f"ladder {rung.token_budget:,} tokens"]
        assert run.steps == rung.results.config.steps and run.n_tokens == rung.token_budget
        for name, fields in group.items():
            assert fields["d_sae"] == rung.results.metrics[name]["config"]["d_sae"]
