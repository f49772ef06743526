"""The sweep end to end on the paper profile's code path (Hugging Face datasets reader,
Gemma-2-shaped model) with offline stand-ins: local text files and a tiny random model."""

import json

import pytest

from lm_helpers import local_text_sweep_config, tiny_model
from msae.experiments import profiles, sweep


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory):
    config = local_text_sweep_config("paper", tmp_path_factory.mktemp("text"), k_values=[2, 4], device="cpu",
                                     needs_gpu=False)
    runs = tmp_path_factory.mktemp("runs")
    model = tiny_model("gemma2")
    return config, runs, model, sweep.run_sweep(config, runs, progress=False, model=model)


def test_sweep_trains_evaluates_and_matches_prefixes(paper_like):
    config, runs, model, results = paper_like
    expected = {"batchtopk_k2", "matryoshka_k2", "batchtopk_k4", "matryoshka_k4"}
    assert expected <= set(results.metrics)
    prefixes = results.metrics["matryoshka_k4"]["prefixes"]
    assert [p["width"] for p in prefixes] == [2, 6, 14, 30, 64]
    for prefix in prefixes:
        other = results.matched_batchtopk(prefix, 4)
        assert other["config"]["d_sae"] == prefix["width"]
        assert other["config"]["k"] == max(1, round(prefix["l0"]))
    for name in expected:
        m = results.metrics[name]
        # one evaluation set for all (a random model's clean CE need not beat zero-ablation)
        assert m["ce_clean"] == results.metrics["batchtopk_k2"]["ce_clean"] and m["ce_sae"] > 0
        assert 0 <= m["fraction_alive"] <= 1 and len(m["frequency"]) == 64
        assert results.sae_path(name).joinpath("cfg.json").is_file()
    assert json.loads((results.folder / "config.json").read_text())["model_name"] == "gemma-2-2b"


def test_a_second_run_reuses_everything(paper_like, monkeypatch):
    config, runs, model, results = paper_like
    import msae.experiments.sweep as module

    monkeypatch.setattr(module, "evaluate_sae", lambda *a, **k: pytest.fail("re-evaluated"))
    again = sweep.run_sweep(config, runs, progress=False, model=model)
    assert again.metrics == results.metrics


def test_a_finished_sweep_loads_its_model_only_when_asked(paper_like, monkeypatch):
    config, runs, model, results = paper_like
    import msae.experiments.sweep as module

    loads = []
    monkeypatch.setattr(module, "load_model", lambda *a, **k: loads.append(a) or model)
    monkeypatch.setattr(module, "build_eval_set", lambda *a, **k: pytest.fail("evaluation set built"))
    again = sweep.run_sweep(config, runs, progress=False)
    assert again.metrics == results.metrics and loads == []
    assert again.model is model and again.model is model and len(loads) == 1  # loaded once, on first use
    # with a study not yet trained, the model is needed at once
    loads.clear()
    monkeypatch.setattr(module, "build_eval_set", lambda *a, **k: pytest.fail("stop after loading"))
    with pytest.raises(pytest.fail.Exception, match="stop after loading"):
        sweep.run_sweep(config, runs, progress=False, studies=["baselines"])
    assert len(loads) == 1


def test_results_from_before_kl_are_evaluated_again(paper_like, monkeypatch):
    config, runs, model, results = paper_like
    import msae.experiments.sweep as module

    path = results.folder / "results.json"
    saved = json.loads(path.read_text())
    old = {name: {k: v for k, v in m.items() if k != "kl_sae"} if name == "matryoshka_k2" else m
           for name, m in saved.items()}
    path.write_text(json.dumps(old))
    evaluated = []
    real = module.evaluate_sae
    monkeypatch.setattr(module, "evaluate_sae", lambda sae, *a, **k: evaluated.append(sae.d_sae) or real(sae, *a, **k))
    again = sweep.run_sweep(config, runs, progress=False, model=model)
    assert evaluated == [64]  # only the SAE whose metrics lacked KL
    assert again.metrics["matryoshka_k2"]["kl_sae"] == pytest.approx(saved["matryoshka_k2"]["kl_sae"], rel=1e-5)
    assert again.metrics["matryoshka_k2"]["kl_sae"] >= 0


def test_gpu_profile_without_a_gpu_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        sweep.run_sweep(profiles.sweep_config("paper"), tmp_path)


def test_bad_profiles_and_configs():
    with pytest.raises(ValueError, match="unknown profile 'big'"):
        profiles.sweep_config("big")
    with pytest.raises(ValueError, match="matched_k=7 must be one of"):
        profiles.sweep_config("smoke", matched_k=7)
