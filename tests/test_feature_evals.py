"""The feature evaluations end to end on a tiny sweep: every metric runs on saved SAEs, lands in
its JSON file, and is read back rather than recomputed. (Each metric's known-answer tests are in
its own module's tests.)"""

import json
import math

import pytest

from lm_helpers import local_text_sweep_config, tiny_model
from msae.evals.autointerp import JudgeConfig
from msae.experiments import feature_evals, profiles, sweep


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
    assert 0 <= absorption["mean_absorption_fraction"] <= 1 and 1 <= absorption["mean_num_split_latents"] <= 10
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
