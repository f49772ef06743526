"""The training stages as one command (msae.experiments.pipeline): its plan counts what the
sweep trains, and its memory figure is the SAEs' real size."""

import pytest

from lm_helpers import tiny_model, tiny_sweep_config
from msae.experiments import pipeline, profiles, sweep
from msae.experiments.names import parse_sae_name
from msae.experiments.studies import STUDY_CONFIGS, study_configs
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig


def test_the_plan_counts_the_saes_the_sweep_trains(tmp_path):
    config = tiny_sweep_config(60, k_values=[4, 8], matched_k=4)
    results = sweep.run_sweep(config, tmp_path, progress=False, model=tiny_model())
    groups = pipeline.sae_groups(config)
    assert set(groups["sweep"]) == {n for n in results.metrics if parse_sae_name(n).prefix_width is None}
    planned = sorted(f["d_sae"] for f in groups["prefix-matched BatchTopK"].values())
    trained = sorted(m["config"]["d_sae"] for n, m in results.metrics.items() if parse_sae_name(n).prefix_width)
    assert planned == trained
    study = profiles.study_config("smoke")
    with_studies = pipeline.sae_groups(config, study)
    assert {name: len(g) for name, g in with_studies.items() if name in STUDY_CONFIGS} == {
        name: len(study_configs(config, study, name)) for name in STUDY_CONFIGS}


@pytest.mark.parametrize("d_in, d_sae, batch", [(32, 64, 16), (48, 200, 7)])
def test_the_memory_figure_is_the_saes_real_size(d_in, d_sae, batch):
    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=d_in, d_sae=d_sae, k=3))
    parameters = sum(p.numel() for p in sae.parameters())
    assert pipeline.sae_training_bytes(d_in, d_sae, batch) == 4 * (4 * parameters + 2 * batch * d_sae)


def test_the_dry_run_prints_every_stage_without_a_model(capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "measure_matmul_flops", lambda device: 1e10)  # no timing noise here
    monkeypatch.setattr(pipeline, "measure_sae_step", lambda *a, **k: 0.01)
    import msae.data.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the dry run loaded a model"))
    pipeline.main(["--profile", "smoke", "--dry-run", "--nproc", "2", "--studies", "--ladder"])
    out = capsys.readouterr().out
    config = profiles.sweep_config("smoke")
    assert out.startswith("plan: profile smoke on 2 processes (times estimated")
    for stage in ("harvest", "sweep", "prefix-matched BatchTopK", *STUDY_CONFIGS, "memory", "total"):
        assert f"\n  {stage} " in out, stage
    assert f"{config.n_tokens:,} tokens" in out and f"{config.steps:,} steps of {config.batch_size:,}" in out
    # the sweep's 4 SAEs, 2 per rank, each step 0.01 s: 60 steps x 2 x 0.01 = 1.2 s
    assert "sweep                      4 SAEs (4 x 256 latents), 60 steps of 256  ~1 s" in out
    # the ladder's budgets (6,000 and the sweep's 12,000 tokens) collect nothing new: a smaller
    # rung links the sweep's shards; the sweep's own rung leaves out the sweep's SAEs
    ladder = profiles.ladder_config("smoke")
    assert sorted(ladder.token_budgets) == [6_000, config.n_tokens] and sorted(ladder.widths) == [128, config.d_sae]
    assert "ladder 6,000 tokens        6,000 tokens of activations (disk), 4 SAEs (2 x 128, 2 x 256 latents), " \
           "30 steps of 256  ~1 s" in out  # 30 x (0.01 + 0.01) s
    assert "ladder 12,000 tokens       12,000 tokens of activations (disk), 2 SAEs (2 x 128 latents), 60 steps of 256" in out
    # at default the 3M rung collects only what the sweep's 600k-token cache does not hold
    stages = {s.name: s for s in pipeline.plan("default", 1, studies=False, device="cpu", ladder=True)}
    harvest = stages["harvest"].seconds  # the sweep's 600,000 tokens
    assert stages["ladder 3,000,000 tokens"].seconds == pytest.approx(harvest * 2_400_000 / 600_000 + 6 * 7_500 * 0.01)
    assert stages["ladder 600,000 tokens"].seconds == pytest.approx(4 * 1_500 * 0.01)
    paper = pipeline.plan("paper", nproc=8, device="cpu")  # a GPU profile is not timed on a CPU
    assert all(stage.seconds is None for stage in paper)
    assert "no times" in pipeline.format_plan("paper", 8, paper, "cpu")


def test_a_measured_sae_step_takes_time():
    assert 0 < pipeline.measure_sae_step(32, 64, 4, 16, "cpu", steps=1) < 10
    assert pipeline.measure_matmul_flops("cpu", size=128, repeats=1) > 1e6
