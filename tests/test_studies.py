"""The studies beside the sweep (baselines, widths, ablations): their SAE configs, their plots'
numbers, and a small end-to-end run that trains them into the sweep's folder once."""

import importlib
import json
import random

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from lm_helpers import tiny_model, tiny_sweep_config
from msae.experiments import profiles, studies, sweep
from msae.experiments.names import parse_sae_name
from msae.io import load_sae
from msae.plots import studies as study_plots
from msae.saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions, prefix_ends
from msae.saes.registry import ARCHITECTURES, build_sae

SHARED = {"d_sae", "steps", "dead_after_tokens", "threshold_start_step", "threshold_beta", "seed", "model_name", "hook_name"}


def small_sweep(seed: int, d_sae: int = 256) -> sweep.SweepConfig:
    """The smoke profile with k values and a seed drawn from ``seed``."""
    rng = random.Random(seed)
    k_values = sorted(rng.sample(range(2, 40), 3))
    return profiles.sweep_config("smoke", d_sae=d_sae, k_values=k_values, matched_k=k_values[1], seed=rng.randrange(1000),
                              steps=rng.randrange(50, 500))


def test_baselines_carry_their_target_l0_and_the_sweeps_shared_fields(seed):
    config = small_sweep(seed)
    configs = studies.baseline_configs(config, studies.StudyConfig())
    assert set(configs) == {f"{a}_k{k}" for a in studies.BASELINES for k in config.k_values}
    for k in config.k_values:
        for arch in studies.BASELINES:
            fields = configs[f"{arch}_k{k}"]
            assert fields["architecture"] == arch and fields["l0"] == k
            assert fields["d_sae"] == config.d_sae and fields["steps"] == config.steps and fields["seed"] == config.seed
            assert set(fields) == SHARED | {"architecture", "l0"}
    chosen = studies.StudyConfig(baselines=["gated"], baseline_k_values=[config.k_values[0] + 100])
    assert list(studies.baseline_configs(config, chosen)) == [f"gated_k{config.k_values[0] + 100}"]


def test_relu_fixed_takes_the_coefficient_its_controlled_twin_ended_on(seed, tmp_path):
    config, rng = small_sweep(seed), random.Random(seed)
    study = studies.StudyConfig(baseline_k_values=rng.sample(range(2, 60), 2))
    final = {}
    for k in study.baseline_k_values:
        history = [{"step": step, "l1_coefficient": rng.uniform(0.01, 2)} for step in range(15, 300, 15)]
        final[k] = history[-1]["l1_coefficient"]
        (tmp_path / f"relu_k{k}").mkdir()
        (tmp_path / f"relu_k{k}" / "history.json").write_text(json.dumps(history))
    configs = studies.relu_fixed_configs(config, study, tmp_path)
    baselines = studies.baseline_configs(config, study)
    assert list(configs) == [f"relu_fixed_k{k}" for k in study.baseline_k_values]
    for k in study.baseline_k_values:
        fields = configs[f"relu_fixed_k{k}"]
        assert fields == {**baselines[f"relu_k{k}"], "l0": None, "l1_coefficient": final[k]}
        sae = build_sae(fields.pop("architecture"), d_in=8, **fields)
        assert sae.config.target_l0 is None and sae.l1_coefficient.item() == pytest.approx(final[k])
    # the dispatcher hands the folder on; a plan names them without reading anything
    assert studies.study_configs(config, study, "relu_fixed", tmp_path) == studies.relu_fixed_configs(config, study, tmp_path)
    assert studies.study_configs(config, study, "relu_fixed").keys() == configs.keys()
    # the other studies read no folder: the same SAEs with or without one; no ReLU baseline, no twin
    for name in set(studies.STUDY_CONFIGS) - {"relu_fixed"}:
        assert studies.study_configs(config, study, name, tmp_path) == studies.study_configs(config, study, name)
    assert "l1_coefficient" not in studies.relu_fixed_configs(config, study)[f"relu_fixed_k{study.baseline_k_values[0]}"]
    assert studies.relu_fixed_configs(config, studies.StudyConfig(baselines=["gated"]), tmp_path) == {}
    with pytest.raises(FileNotFoundError, match="run the baselines study first"):
        studies.relu_fixed_configs(config, studies.StudyConfig(baseline_k_values=[61]), tmp_path)


def test_scaling_skips_the_sweeps_own_width_and_names_the_others(seed):
    config = small_sweep(seed)
    width = random.Random(seed).choice([w for w in (64, 128, 512, 1024) if w != config.d_sae])  # not the sweep's own
    study = studies.StudyConfig(widths=[width, config.d_sae], width_k_values=config.k_values[:2])
    configs = studies.scaling_configs(config, study)
    assert set(configs) == {f"{a}_d{width}_k{k}" for a in study.width_architectures for k in config.k_values[:2]}
    for fields in configs.values():
        assert fields["d_sae"] == width
    paper_groups = group_sizes_from_fractions(width, PAPER_GROUP_FRACTIONS)
    assert configs[f"matryoshka_d{width}_k{config.k_values[0]}"]["group_sizes"] == paper_groups
    assert configs[f"topk_d{width}_k{config.k_values[1]}"]["l0"] == config.k_values[1]
    # the sweep's width is read from the main sweep and the baselines
    k = config.k_values[0]
    assert studies.scaling_name(config, "matryoshka", config.d_sae, k) == f"matryoshka_k{k}"
    assert studies.scaling_name(config, "relu", width, k) == f"relu_d{width}_k{k}"


def test_each_ablation_arm_differs_from_the_main_matryoshka_only_where_it_switches(seed):
    config = small_sweep(seed, d_sae=1024)
    k = config.k_values[-1]
    study = studies.StudyConfig(ablation_k_values=[k])
    configs = studies.ablation_configs(config, study)
    assert set(configs) == {f"{arm}_k{k}" for arm in studies.ABLATION_ARMS}
    main = sweep.sae_configs(config)[f"matryoshka_k{k}"]  # the sweep's own Matryoshka SAE
    expected_changes = {
        "matryoshka_size_weighted": {"group_weighting": "size"},
        "matryoshka_stop_gradient": {"stop_gradient": True},
        "matryoshka_3groups": {"group_sizes": [128, 256, 640]},
        "matryoshka_10groups": {"group_sizes": [2, 2, 4, 8, 16, 32, 64, 128, 256, 512]},
        "matryoshka_random3": {"group_sizes": None, "n_random_prefixes": 3},
        "matryoshka_random5": {"group_sizes": None, "n_random_prefixes": 5},
        "matryoshka_random10": {"group_sizes": None, "n_random_prefixes": 10},
    }
    for arm, changes in expected_changes.items():
        fields = configs[f"{arm}_k{k}"]
        assert fields["architecture"] == "matryoshka" and fields["steps"] == config.steps
        differing = {key for key in set(fields) | set(main) if fields.get(key) != main.get(key)}
        assert differing == {"architecture", "steps", *changes}, arm
        assert {key: fields[key] for key in changes} == changes
    # ten groups: prefix ends d/512, d/256, ..., d (log-spaced)
    assert prefix_ends(configs[f"matryoshka_10groups_k{k}"]["group_sizes"]) == [1024 // 2**i for i in range(9, -1, -1)]


@pytest.mark.parametrize("d_sae", [12, 37, 256, 511])
def test_small_widths_still_give_every_group_a_latent(d_sae):
    sizes = studies.study_group_sizes(d_sae, studies.TEN_GROUP_FRACTIONS)
    assert len(sizes) == 10 and min(sizes) >= 1 and sum(sizes) == d_sae
    # where every share is at least one latent, the sizes are the usual ones
    usual = group_sizes_from_fractions(4 * d_sae, PAPER_GROUP_FRACTIONS)
    assert studies.study_group_sizes(4 * d_sae, PAPER_GROUP_FRACTIONS) == usual
    with pytest.raises(ValueError, match="cannot split d_sae=9 latents into 10 groups"):
        studies.study_group_sizes(9, studies.TEN_GROUP_FRACTIONS)


def test_bad_study_requests_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown ablation arms \['matryoshka_dropout'\]"):
        studies.StudyConfig(ablation_arms=["matryoshka_dropout"])
    with pytest.raises(ValueError, match="unknown study 'pruning'"):
        studies.study_configs(profiles.sweep_config("smoke"), studies.StudyConfig(), "pruning")


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_build_sae_builds_every_study_sae(profile, gen):
    config = profiles.sweep_config(profile)
    study = profiles.study_config(profile)
    d_in = 16
    x = torch.randn(64, d_in, generator=gen)
    for name in ("baselines", "scaling", "ablations"):
        for sae_name, fields in studies.study_configs(config, study, name).items():
            arch = fields["architecture"]
            sae = build_sae(arch, d_in=d_in, **{k: v for k, v in fields.items() if k != "architecture"})
            assert isinstance(sae, ARCHITECTURES[arch].sae_class), sae_name
            assert sae.d_in == d_in and sae.d_sae == fields["d_sae"]
            target = getattr(sae.config, ARCHITECTURES[arch].l0_field)
            assert target == fields.get("l0", fields.get("k")) == int(sae_name.rsplit("_k", 1)[1])
            if fields.get("n_random_prefixes"):
                assert sae.config.n_random_prefixes == fields["n_random_prefixes"] and sae.config.group_sizes == [fields["d_sae"]]
            elif arch == "matryoshka":
                assert sae.config.group_sizes == fields["group_sizes"]
            if profile == "smoke":  # one step each, to see every config trains
                sae.initialize_from_batch(x)
                assert torch.isfinite(sae.training_step(x, 0).loss), sae_name


# --- plots: numbers read off hand-built results -------------------------------------------------


def fake_results(gen, config, names):
    metrics = {}
    for name in names:
        arch = next(a for a in sorted(ARCHITECTURES, key=len, reverse=True) if name.startswith(a + "_"))
        parsed = parse_sae_name(name)
        v = torch.rand(4, generator=gen).tolist()
        metrics[name] = {"l0": parsed.k * (0.5 + v[0]), "variance_explained": v[1], "loss_recovered": v[2],
                         "mean_max_cosine": v[3], "ce_sae": 3 + v[1], "ce_clean": 2.5,
                         "config": {ARCHITECTURES[arch].l0_field: parsed.k,
                                    "d_sae": parsed.width or parsed.prefix_width or config.d_sae}}
    return sweep.SweepResults(None, config, metrics)


def with_column(rows, column, values):
    """``rows`` with one more column, from ``{sae name: value}`` (a feature metric)."""
    return [{**r, column: values[r["sae"]]} if r["sae"] in values else r for r in rows]


def test_width_means_average_the_middle_l0s_at_each_width(gen, seed):
    config = profiles.sweep_config("smoke", d_sae=256, k_values=[4, 8, 16], matched_k=8)
    study = studies.StudyConfig(widths=[64, 1024], width_k_values=[4, 8], width_architectures=["matryoshka", "relu", "topk"])
    names = [f"{a}_k{k}" for a in ("matryoshka", "relu", "topk", "batchtopk") for k in (4, 8, 16)]
    names += [f"{a}_d{w}_k{k}" for a in ("matryoshka", "relu") for w in (64, 1024) for k in (4, 8)]
    names += ["topk_d64_k4"]  # topk lacks k8 at 64 and everything at 1024: only its sweep width counts
    results = fake_results(gen, config, names)
    absorption = {n: float(torch.rand((), generator=gen)) for n in names}
    rows = with_column(results.rows(), "absorption", absorption)
    means = study_plots.width_means(rows, study, ["variance_explained", "absorption"])
    m = results.metrics
    expected = (m["relu_d64_k4"]["variance_explained"] + m["relu_d64_k8"]["variance_explained"]) / 2
    assert means["relu"]["variance_explained"][0] == (64, pytest.approx(expected))
    assert [w for w, _ in means["matryoshka"]["absorption"]] == [64, 256, 1024]
    expected = (absorption["matryoshka_k4"] + absorption["matryoshka_k8"]) / 2
    assert means["matryoshka"]["absorption"][1] == (256, pytest.approx(expected))
    assert [w for w, _ in means["topk"]["variance_explained"]] == [256]
    fig = study_plots.scaling_vs_width(rows, study, ["variance_explained", "loss_recovered", "mean_max_cosine", "absorption"])
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["variance explained", "loss recovered", "mean max decoder cosine", "absorption (first letter)"]
    relu_line = next(line for line in axes[3].lines if line.get_label() == "ReLU (L1)")
    assert list(relu_line.get_ydata()) == pytest.approx([v for _, v in means["relu"]["absorption"]])


def test_fig5_and_the_l0_table_cover_every_architecture(gen):
    config = profiles.sweep_config("smoke", k_values=[4, 8], matched_k=8)
    names = [f"{a}_k{k}" for a in ARCHITECTURES for k in (4, 8)]
    names += ["batchtopk_w8_k1", "matryoshka_stop_gradient_k4", "relu_d64_k4", "relu_fixed_k4"]  # other studies: not in Fig 5
    results = fake_results(gen, config, names)
    rows = study_plots.by_architecture(results.rows_at_sweep_width())
    assert [r["sae"] for r in rows] == [f"{a}_k{k}" for a in ARCHITECTURES for k in (4, 8)]
    for r in rows:
        assert r["target_l0"] == int(r["sae"].rsplit("_k", 1)[1]) and r["l0"] == results.metrics[r["sae"]]["l0"]
    fig = study_plots.all_architectures_vs_l0(results.rows_at_sweep_width())
    left, right = fig.axes
    labels = [line.get_label() for line in left.lines]
    assert labels == [study_plots.ARCHITECTURES[a][0] for a in ARCHITECTURES]
    jumprelu = left.lines[labels.index("JumpReLU")]
    assert list(jumprelu.get_xdata()) == [results.metrics[f"jumprelu_k{k}"]["l0"] for k in (4, 8)]
    assert list(jumprelu.get_ydata()) == [results.metrics[f"jumprelu_k{k}"]["variance_explained"] for k in (4, 8)]


def test_training_curves_draw_each_history_in_each_panel(seed):
    rng = random.Random(seed)
    histories = {label: [{"step": 15 * (i + 1), "l1_coefficient": rng.uniform(0.01, 2), "l0": rng.uniform(1, 900),
                          "variance_explained": rng.random()} for i in range(rng.randrange(3, 30))]
                 for label in ("controller, L0 20", "fixed coefficient, L0 20")}
    fig = study_plots.training_curves(histories)
    for ax, key in zip(fig.axes, ("l1_coefficient", "l0", "variance_explained")):
        assert [line.get_label() for line in ax.lines] == list(histories)
        for line, history in zip(ax.lines, histories.values()):
            assert list(line.get_xdata()) == [r["step"] for r in history] and list(line.get_ydata()) == [r[key] for r in history]
    with pytest.raises(ValueError, match="no training histories"):
        study_plots.training_curves({})


def test_ablation_rows_put_each_arm_beside_the_main_saes(gen):
    config = profiles.sweep_config("smoke", k_values=[4, 8, 16], matched_k=8)
    names = [f"{a}_k{k}" for a in ("matryoshka", "batchtopk") for k in (4, 8, 16)]
    names += [f"{arm}_k{k}" for arm in ("matryoshka_stop_gradient", "matryoshka_3groups") for k in (8, 4)]
    results = fake_results(gen, config, names)
    grouped = study_plots.ablation_rows(results.rows_at_sweep_width())
    assert list(grouped) == ["Fig 17: stop-gradient", "Fig 18: number of groups"]  # only the arms run
    assert {label: [r["sae"] for r in arm_rows] for label, arm_rows in grouped["Fig 18: number of groups"].items()} == {
        "3 groups": ["matryoshka_3groups_k4", "matryoshka_3groups_k8"],
        study_plots.MAIN_MATRYOSHKA_LABEL: ["matryoshka_k4", "matryoshka_k8", "matryoshka_k16"],
        "BatchTopK": ["batchtopk_k4", "batchtopk_k8", "batchtopk_k16"],
    }
    fig = study_plots.ablations_vs_l0(results.rows_at_sweep_width())
    assert len(fig.axes) == 4 and [ax.get_ylabel() for ax in fig.axes[:2]] == ["variance explained", "loss recovered"]
    arm = next(line for line in fig.axes[1].lines if line.get_label() == "stop-gradient between groups")
    assert list(arm.get_ydata()) == [results.metrics[f"matryoshka_stop_gradient_k{k}"]["loss_recovered"] for k in (4, 8)]
    with pytest.raises(ValueError, match="no ablation arm"):
        study_plots.ablations_vs_l0(fake_results(gen, config, ["matryoshka_k4"]).rows())


# --- end to end on a tiny model -------------------------------------------------------------------

TINY_STUDY = studies.StudyConfig(
    baselines=["relu", "topk", "gated", "jumprelu", "p_anneal"], widths=[16], width_k_values=[4],
    width_architectures=["batchtopk", "matryoshka", "gated"],
    ablation_arms=["matryoshka_stop_gradient", "matryoshka_10groups", "matryoshka_random3"], ablation_k_values=[4],
)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    config = tiny_sweep_config(n_documents=60)
    runs = tmp_path_factory.mktemp("runs")
    model = tiny_model("llama")
    results = sweep.run_sweep(config, runs, progress=False, model=model, studies=["baselines", "scaling", "ablations", "relu_fixed"],
                              study_config=TINY_STUDY)
    return config, runs, model, results


def test_studies_land_in_the_sweeps_results_and_folder(tiny_sweep):
    config, runs, model, results = tiny_sweep
    expected = {f"{a}_k4" for a in TINY_STUDY.baselines}
    expected |= {f"{a}_d16_k4" for a in TINY_STUDY.width_architectures}
    expected |= {f"{arm}_k4" for arm in TINY_STUDY.ablation_arms}
    assert expected | {"batchtopk_k4", "matryoshka_k4"} <= set(results.metrics)
    clean = results.metrics["batchtopk_k4"]["ce_clean"]
    for name in expected:
        m = results.metrics[name]
        assert m["ce_clean"] == clean and m["ce_sae"] > 0 and 0 <= m["fraction_alive"] <= 1
        sae = load_sae(results.sae_path(name))
        assert type(sae).__name__ == m["config"]["class"] and sae.d_sae == len(m["frequency"])
        x = torch.randn(8, sae.d_in)
        assert sae.encode(x).shape == (8, sae.d_sae)
    assert results.metrics["gated_d16_k4"]["config"]["d_sae"] == 16
    assert results.metrics["gated_k4"]["config"]["target_l0"] == 4
    assert results.metrics["matryoshka_stop_gradient_k4"]["config"]["stop_gradient"] is True
    assert len(results.metrics["matryoshka_10groups_k4"]["config"]["group_sizes"]) == 10
    # the fixed-coefficient ReLU starts from where relu_k4's controller ended and keeps it past the warm-up
    fixed = results.metrics["relu_fixed_k4"]["config"]
    final = results.history("relu_k4")[-1]["l1_coefficient"]
    assert fixed["target_l0"] is None and fixed["l1_coefficient"] == pytest.approx(final, rel=1e-6)
    warmup = fixed["l1_warmup_steps"]
    assert {round(r["l1_coefficient"], 6) for r in results.history("relu_fixed_k4") if r["step"] > warmup} == {round(final, 6)}
    assert results.rows(["relu_fixed_k4"])[0]["target_l0"] is None
    # study SAEs are evaluated at full width only; the main Matryoshka SAE at every prefix
    assert not any("prefixes" in results.metrics[name] for name in expected)
    assert [p["width"] for p in results.metrics["matryoshka_k4"]["prefixes"]] == [1, 3, 7, 15, 32]
    recorded = json.loads((results.folder / "studies.json").read_text())
    assert recorded["ablations"]["ablation_arms"] == TINY_STUDY.ablation_arms
    assert [w for w, _ in study_plots.width_means(results.rows(), TINY_STUDY, ["l0"])["gated"]["l0"]] == [16, 32]


def test_running_the_studies_again_retrains_nothing(tiny_sweep, monkeypatch):
    config, runs, model, results = tiny_sweep
    monkeypatch.setattr(importlib.import_module("msae.experiments.sweep"), "evaluate_sae", lambda *a, **k: pytest.fail("re-evaluated"))
    monkeypatch.setattr(importlib.import_module("msae.training.loop"), "_loop", lambda *a, **k: pytest.fail("retrained"))
    again = sweep.run_sweep(config, runs, progress=False, model=model, studies=["baselines", "scaling", "ablations", "relu_fixed"],
                            study_config=TINY_STUDY)
    assert again.metrics == results.metrics
