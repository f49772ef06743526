"""The feature evaluations end to end on a tiny sweep: every metric runs on saved SAEs, lands in
its JSON file, and is read back rather than recomputed. (Each metric's known-answer tests are in
its own module's tests.)"""

import json
import math

import pytest

from lm_helpers import local_text_sweep_config, tiny_model
from msae.evals.autointerp import JudgeConfig
from msae.experiments import feature_evals, profiles, sweep
from msae.io import load_sae


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    config = local_text_sweep_config("smoke", tmp_path_factory.mktemp("text"))
    runs = tmp_path_factory.mktemp("runs")
    results = sweep.run_sweep(config, runs, progress=False, model=tiny_model())
    eval_config = feature_evals.EvalConfig(n_stories=300, concept_stories=40, meta_sae_steps=20, meta_sae_batch_size=32)
    return feature_evals.FeatureEvaluator(results, eval_config, runs / "eval_data", progress=False)


@pytest.mark.parametrize("metric", ["absorption", "probing", "meta_sae", "concepts"])
def test_each_metric_is_saved_and_read_back(evaluator, metric, monkeypatch):
    result = evaluator.evaluate("matryoshka_k4", metric)
    path = evaluator.result_path("matryoshka_k4", metric)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result)) and result["seconds"] > 0
    monkeypatch.setattr(evaluator, f"_{metric}", lambda sae: pytest.fail("recomputed"))
    assert evaluator.evaluate("matryoshka_k4", metric) == json.loads(path.read_text())


def test_metric_values_are_in_range(evaluator):
    absorption = evaluator.evaluate("batchtopk_k4", "absorption")
    # SAEBench's rule: scored only with 20 letters whose probe has F1 > 0.6 (a random tiny model may have fewer)
    assert absorption["scored"] == (absorption["n_letters_probe_ok"] >= 20)
    diagnostics = absorption["diagnostics"]
    assert 0 <= diagnostics["mean_absorption_fraction_all_letters"] <= 1
    assert 1 <= diagnostics["mean_num_split_latents_all_letters"] <= 10
    if absorption["scored"]:
        assert 0 <= absorption["mean_absorption_fraction"] <= 1 and 1 <= absorption["mean_num_split_latents"] <= 10
    else:
        assert absorption["mean_absorption_fraction"] is None and "SAEBench needs 20" in absorption["not_scored_reason"]
    summary = evaluator.evaluate("batchtopk_k4", "probing")["summary"]
    assert 0 <= summary["sparse_probing_top_k"]["1"] <= 1 and set(summary["scr"]) >= {"2", "20"}
    meta = evaluator.evaluate("batchtopk_k4", "meta_sae")
    assert meta["width"] == 16 and meta["k"] == 4 and meta["variance_explained"] <= 1
    concepts = evaluator.evaluate("batchtopk_k4", "concepts")
    assert len(concepts["best_f1"]) == 64 and (math.isnan(concepts["mean_f1"]) or 0 <= concepts["mean_f1"] <= 1)


def test_autointerp_without_a_judge_is_skipped_and_not_saved(evaluator):
    result = evaluator.evaluate("matryoshka_k4", "autointerp")
    assert "no LLM judge" in result["skipped"]
    assert not evaluator.result_path("matryoshka_k4", "autointerp").exists()
    unreachable = feature_evals.FeatureEvaluator(evaluator.results, evaluator.config, evaluator.data_dir.parent,
                                                 judge=JudgeConfig(base_url="", model=""))
    assert "skipped" in unreachable.evaluate("matryoshka_k4", "autointerp")


def test_general_latent_study_finds_a_latent_per_sae(evaluator):
    names = {"BatchTopK": "batchtopk_k4", "Matryoshka": "matryoshka_k4"}
    study = evaluator.general_latent_study(names, concept="female", n_examples=2)
    for label, entry in study["saes"].items():
        assert 0 <= entry["latent"] < 64 and 0 <= entry["recall"] <= 1
        for example in study["examples"]:
            assert len(example["activations"][label]) == len(example["tokens"]) == len(example["concept"])
    assert evaluator.general_latent_study(names, concept="female", n_examples=2) == json.loads(json.dumps(study))


def test_unknown_metric_and_profile_are_refused(evaluator):
    with pytest.raises(ValueError, match="unknown metric"):
        evaluator.evaluate("matryoshka_k4", "vibes")
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.eval_config("huge")


def test_absorption_reported_officially_or_as_a_labelled_diagnostic(evaluator):
    names = ["batchtopk_k4", "matryoshka_k4"]
    table = evaluator.table(names, "absorption")
    scored = {n: {**r, "scored": True, "mean_absorption_fraction": 0.25 + i / 10} for i, (n, r) in enumerate(table.items())}
    label, values = feature_evals.reported_absorption(scored)
    assert label == "absorption (first letter)" and values == {"batchtopk_k4": 0.25, "matryoshka_k4": 0.35}
    unscored = {**scored, "matryoshka_k4": {**scored["matryoshka_k4"], "scored": False}}
    label, values = feature_evals.reported_absorption(unscored)
    assert "not scored" in label
    assert values == {n: r["diagnostics"]["mean_absorption_fraction_all_letters"] for n, r in table.items()}

    rows = evaluator.rows(names, ["absorption"])
    for row, table_row in zip(rows, feature_evals.absorption_table_rows(rows)):
        shown = table_row["absorption"]
        assert shown == (row["absorption"] if row["absorption_scored"] else "not scored")
        assert table_row["every letter"] == row["absorption_all_letters"]
    groups = feature_evals.absorption_group_rows(table)
    assert {r["sae"] for r in groups} == {"matryoshka_k4"}  # BatchTopK has one group
    sizes = load_sae(evaluator.results.sae_path("matryoshka_k4")).config.group_sizes
    assert len(groups) == 2 and len(sizes) > 1
    for row in groups:
        assert [k for k in row if k.startswith("group ")] == [f"group {g + 1} ({size})" for g, size in enumerate(sizes)]
        shares = [v for k, v in row.items() if k.startswith("group ")]
        assert all(v is None for v in shares) or sum(shares) == pytest.approx(1)
