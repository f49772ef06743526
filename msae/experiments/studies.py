"""The studies trained beside the main sweep, on the same activations, batches and steps:

- ``baselines`` (Fig 5, Table 1): every baseline architecture at each of the sweep's L0s;
- ``scaling`` (Fig 10): Matryoshka and the baselines at several widths, at the middle L0s;
- ``ablations`` (Figs 16-19): Matryoshka variants (loss weighting, stop-gradient, number of
  groups, random prefixes) at the sweep's width;
- ``relu_fixed`` (Fig 5's ReLU, a diagnostic): ReLU (L1) at a fixed coefficient, the one the
  ``baselines`` study's ReLU SAE of each L0 ended on, with no target-L0 controller (the paper sets
  a ReLU SAE's L0 by its coefficient). It reads those SAEs' training histories, so it runs after
  the ``baselines`` study.

Each study is a dict ``name -> SAE fields`` (with an ``architecture`` key, see
``msae.saes.registry``) that ``msae.experiments.sweep.run_sweep(..., studies=[...])`` trains and evaluates
into the sweep's folder and ``results.json``, beside the main SAEs. The study sizes of each
profile are in ``msae.experiments.profiles``; they do not enter the sweep's folder name, so adding a study never
retrains the main sweep.

Names (``msae.experiments.names``): ``{architecture}_k{l0}`` for baselines (like the main
sweep's), ``{architecture}_d{width}_k{l0}`` for other widths, ``{arm}_k{l0}`` for ablation arms,
``relu_fixed_k{l0}`` for the fixed-coefficient twin of ``relu_k{l0}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..saes.prefixes import group_sizes_from_fractions, validate_group_sizes
from ..training.loop import read_history
from .names import sae_name

# Penalty-based and per-token architectures the paper compares against (Table 1), by registry name.
BASELINES = ["relu", "topk", "gated", "jumprelu", "p_anneal"]

# SPEC §6: three groups [1/8, 1/4, 5/8]; ten log-spaced groups (prefix ends d/512, d/256, ..., d).
THREE_GROUP_FRACTIONS = (1 / 8, 1 / 4, 5 / 8)
TEN_GROUP_FRACTIONS = (1 / 512, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)

# Ablation arms (Figs 16-19): Matryoshka config fields each one changes. The comparison arms are
# the main sweep's ``matryoshka_k*`` (five fixed groups, uniform weights) and ``batchtopk_k*``.
ABLATION_ARMS: dict[str, dict[str, Any]] = {
    "matryoshka_size_weighted": {"group_weighting": "size"},  # Fig 16
    "matryoshka_stop_gradient": {"stop_gradient": True},  # Fig 17
    "matryoshka_3groups": {"group_fractions": THREE_GROUP_FRACTIONS},  # Fig 18
    "matryoshka_10groups": {"group_fractions": TEN_GROUP_FRACTIONS},
    "matryoshka_random3": {"n_random_prefixes": 3},  # Fig 19
    "matryoshka_random5": {"n_random_prefixes": 5},
    "matryoshka_random10": {"n_random_prefixes": 10},
}


@dataclass
class StudyConfig:
    """The sizes of the studies trained beside a sweep (one per profile, ``msae.experiments.profiles``).

    Attributes:
        baselines: the baseline architectures (registry names) of the ``baselines`` study.
        baseline_k_values: the L0s they are trained at; None: the sweep's k values.
        widths: the ``scaling`` study's widths (Fig 10), besides the sweep's own d_sae.
        width_architectures: the architectures trained at each of those widths.
        width_k_values: the middle L0s Fig 10 averages over, at each width.
        ablation_arms: the Matryoshka variants of the ``ablations`` study (``ABLATION_ARMS``).
        ablation_k_values: the L0s each arm is trained at.
    """

    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    baseline_k_values: list[int] | None = None
    widths: list[int] = field(default_factory=list)
    width_architectures: list[str] = field(default_factory=lambda: ["batchtopk", "matryoshka", *BASELINES])
    width_k_values: list[int] = field(default_factory=list)
    ablation_arms: list[str] = field(default_factory=lambda: list(ABLATION_ARMS))
    ablation_k_values: list[int] = field(default_factory=list)

    def __post_init__(self):
        unknown = sorted(set(self.ablation_arms) - set(ABLATION_ARMS))
        if unknown:
            raise ValueError(f"unknown ablation arms {unknown}; known: {sorted(ABLATION_ARMS)}")


def matryoshka_fields(sweep, d_sae: int, k: int, **changes: Any) -> dict[str, Any]:
    """MatryoshkaConfig fields (and ``architecture``) of the sweep's Matryoshka SAE at width
    ``d_sae`` and L0 ``k``, with ``changes`` applied (``group_fractions`` replaces the groups;
    ``n_random_prefixes`` drops them)."""
    fractions = changes.pop("group_fractions", sweep.group_fractions)
    fields = dict(_shared(sweep, d_sae), architecture="matryoshka", k=k, group_sizes=study_group_sizes(d_sae, fractions))
    if changes.get("n_random_prefixes"):
        fields["group_sizes"] = None
    return {**fields, **changes}


def study_group_sizes(d_sae: int, fractions) -> list[int]:
    """``group_sizes_from_fractions``, except that a group whose share is under one latent (ten
    groups at a small width: d/512 < 1) gets one, taken from the last group."""
    if all(int(f * d_sae) >= 1 for f in fractions[:-1]):
        return group_sizes_from_fractions(d_sae, fractions)
    group_sizes_from_fractions(2**30, fractions)  # raises on malformed fractions
    sizes = [max(1, int(f * d_sae)) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    if sizes[-1] <= 0:
        raise ValueError(f"cannot split d_sae={d_sae} latents into {len(fractions)} groups of at least one latent "
                         f"with fractions {[round(f, 5) for f in fractions]}; use a wider SAE")
    validate_group_sizes(sizes, d_sae)
    return sizes


def architecture_fields(sweep, architecture: str, d_sae: int, k: int) -> dict[str, Any]:
    """Fields of one SAE of ``architecture`` at width ``d_sae`` and target L0 ``k``."""
    if architecture == "matryoshka":
        return matryoshka_fields(sweep, d_sae, k)
    return dict(_shared(sweep, d_sae), architecture=architecture, l0=k)


# Every study function takes (sweep config, StudyConfig, the sweep's folder or None) and returns
# {SAE name: build_sae fields}; only the studies whose fields depend on SAEs already trained
# (relu_fixed) read the folder.


def baseline_configs(sweep, study: StudyConfig, folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    return {sae_name(arch, k): architecture_fields(sweep, arch, sweep.d_sae, k)
            for k in (study.baseline_k_values or sweep.k_values) for arch in study.baselines}


def scaling_configs(sweep, study: StudyConfig, folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The widths other than the sweep's own (whose SAEs the main sweep and baselines hold)."""
    return {sae_name(arch, k, width=width): architecture_fields(sweep, arch, width, k)
            for width in study.widths if width != sweep.d_sae
            for k in study.width_k_values for arch in study.width_architectures}


def ablation_configs(sweep, study: StudyConfig, folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    return {sae_name(arm, k): matryoshka_fields(sweep, sweep.d_sae, k, **ABLATION_ARMS[arm])
            for k in study.ablation_k_values for arm in study.ablation_arms}


def relu_fixed_configs(sweep, study: StudyConfig, folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``relu_fixed_k{k}`` for each baseline L0 (none unless the baselines include "relu"): the
    fields of ``relu_k{k}`` with no target L0, at the coefficient ``relu_k{k}`` ended on (the last
    one in its history in the sweep's ``folder``). Without ``folder`` (a plan, or the names only)
    the coefficient is left at the config's default."""
    if "relu" not in study.baselines:
        return {}
    configs = {}
    for k in study.baseline_k_values or sweep.k_values:
        fields = dict(architecture_fields(sweep, "relu", sweep.d_sae, k), l0=None)
        if folder is not None:
            fields["l1_coefficient"] = final_l1_coefficient(Path(folder) / sae_name("relu", k))
        configs[sae_name("relu_fixed", k)] = fields
    return configs


def final_l1_coefficient(run_dir: Path) -> float:
    """The L1 coefficient of the last step logged in a finished run's history."""
    try:
        return float(read_history(run_dir)[-1]["l1_coefficient"])
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; the relu_fixed study takes the coefficient the controller ended on, so run "
                                "the baselines study first (studies=['baselines', 'relu_fixed'])") from None


def scaling_name(sweep, architecture: str, width: int, k: int) -> str:
    """The SAE of ``architecture`` at ``width`` and ``k``: from the main sweep or a study."""
    return sae_name(architecture, k, width=None if width == sweep.d_sae else width)


STUDY_CONFIGS = {"baselines": baseline_configs, "scaling": scaling_configs, "ablations": ablation_configs,
                 "relu_fixed": relu_fixed_configs}


def study_configs(sweep, study: StudyConfig, name: str, folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The SAEs of study ``name``, ``{name: build_sae fields}``; ``folder``, the sweep's, is read
    by the studies whose fields depend on SAEs already trained there (``relu_fixed``)."""
    if name not in STUDY_CONFIGS:
        raise ValueError(f"unknown study {name!r}; choose from {sorted(STUDY_CONFIGS)}")
    return STUDY_CONFIGS[name](sweep, study, folder)


def _shared(sweep, d_sae: int) -> dict[str, Any]:
    return dict(d_sae=d_sae, steps=sweep.steps, dead_after_tokens=sweep.dead_after_tokens, threshold_start_step=sweep.threshold_start_step,
                threshold_beta=sweep.threshold_beta, seed=sweep.seed, model_name=sweep.model_name,
                hook_name=sweep.hook_name)
