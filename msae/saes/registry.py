"""Every SAE architecture of the paper's Table 1, by name, and a builder for each.

    build_sae("gated", d_in=576, d_sae=2304, l0=40, steps=1500)

``l0`` is the target L0 however the architecture takes it (``k`` for TopK, BatchTopK and
Matryoshka; ``target_l0`` for the penalty-based ones) and ``steps`` the run's length (the
penalty warm-up and the p schedule are fractions of it); other keywords are config fields.
:func:`table1_rows` describes each architecture, its key hyper-parameters read off its config
dataclass, so the table cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .base import SparseAutoencoder
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from .p_anneal import PAnnealConfig, PAnnealSAE
from .prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions
from .relu_l1 import ReLUL1Config, ReLUL1SAE
from .topk import TopKConfig, TopKSAE

# Fields a sweep passes to every architecture; one whose config lacks them drops them
# (e.g. BatchTopK's inference-threshold settings mean nothing to a Gated SAE).
SHARED_FIELDS = ("steps", "threshold_start_step", "threshold_beta", "dead_after_tokens", "seed", "model_name", "hook_name")

# The keys of ARCHITECTURES (a test checks the two agree).
ArchitectureName = Literal["relu", "topk", "batchtopk", "matryoshka", "gated", "jumprelu", "p_anneal"]


@dataclass(frozen=True)
class Architecture:
    """One row of Table 1: an architecture, its classes and how its L0 is set.

    Attributes:
        name: the registry key :func:`build_sae` takes, e.g. "matryoshka".
        display_name: the name shown in tables and plots, e.g. "Matryoshka BatchTopK".
        sae_class: the SAE class.
        config_class: its config dataclass.
        reference: the paper it comes from.
        sparsity: what makes the code sparse, in words.
        l0_control: how its L0 is set, in words.
        l0_field: the config field a target L0 goes to: "k" or "target_l0".
        hyperparameters: the config fields shown in Table 1 with their defaults.
        defaults: registry-level defaults, shown beside them (e.g. Matryoshka's group fractions).
    """

    name: ArchitectureName
    display_name: str
    sae_class: type[SparseAutoencoder]
    config_class: type
    reference: str
    sparsity: str
    l0_control: str
    l0_field: Literal["k", "target_l0"]
    hyperparameters: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)

    def hyperparameter_defaults(self) -> dict[str, Any]:
        """The named fields' defaults, read off the config dataclass, plus the registry's own."""
        fields = {f.name: f for f in dataclasses.fields(self.config_class)}
        values = {}
        for name in self.hyperparameters:
            f = fields[name]
            values[name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return {**values, **self.defaults}


_PENALTY_CONTROL = "target_l0: coefficient ramped over the first 5% of steps, then steered x exp(rate * clip(log2(L0/target), -1, 1)) per batch"

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture(
        "relu", "ReLU (L1)", ReLUL1SAE, ReLUL1Config,
        "Anthropic, Circuits Updates - April 2024 (how we train SAEs)",
        "ReLU + L1 penalty weighted by decoder-row norm (decoder unconstrained)",
        _PENALTY_CONTROL, "target_l0",
        ("l1_coefficient", "controller_rate", "penalty_warmup_fraction", "decoder_init_norm"),
    ),
    Architecture(
        "topk", "TopK", TopKSAE, TopKConfig,
        "Gao et al. 2024, Scaling and evaluating sparse autoencoders",
        "k largest pre-activations per token",
        "k (exactly k per token)", "k",
        ("auxk_alpha", "auxk_k", "dead_after_tokens"),
    ),
    Architecture(
        "batchtopk", "BatchTopK", MatryoshkaBatchTopKSAE, MatryoshkaConfig,
        "Bussmann et al. 2024, BatchTopK sparse autoencoders",
        "k*B largest pre-activations per batch; one global threshold at inference",
        "k (mean per token)", "k",
        ("auxk_alpha", "auxk_k", "dead_after_tokens", "threshold_beta", "threshold_start_step"),
    ),
    Architecture(
        "matryoshka", "Matryoshka BatchTopK", MatryoshkaBatchTopKSAE, MatryoshkaConfig,
        "Bussmann et al. 2025, Learning multi-level features with Matryoshka SAEs",
        "BatchTopK; every nested prefix of the dictionary reconstructs the input",
        "k (mean per token)", "k",
        ("group_weighting", "stop_gradient", "auxk_alpha", "threshold_beta"),
        {"group_fractions": tuple(round(f, 5) for f in PAPER_GROUP_FRACTIONS)},
    ),
    Architecture(
        "gated", "Gated", GatedSAE, GatedConfig,
        "Rajamanoharan et al. 2024, Improving dictionary learning with gated sparse autoencoders",
        "Heaviside gate path with L1 + auxiliary reconstruction; magnitude path W_mag = exp(r_mag) W_enc",
        _PENALTY_CONTROL, "target_l0",
        ("l1_coefficient", "controller_rate", "penalty_warmup_fraction"),
    ),
    Architecture(
        "jumprelu", "JumpReLU", JumpReLUSAE, JumpReLUConfig,
        "Rajamanoharan et al. 2024, Jumping ahead: JumpReLU sparse autoencoders",
        "per-latent threshold; L0 penalty through straight-through estimators",
        _PENALTY_CONTROL + "; thresholds start at the first batch's cut for the target", "target_l0",
        ("l0_coefficient", "bandwidth", "initial_threshold", "threshold_lr_scale", "controller_rate",
         "penalty_warmup_fraction"),
    ),
    Architecture(
        "p_anneal", "P-annealing", PAnnealSAE, PAnnealConfig,
        "Karvonen et al. 2024, Measuring progress in dictionary learning ... with board game models",
        "ReLU + L_p^p penalty, p annealed from p_start to p_end, coefficient rescaled at each change",
        _PENALTY_CONTROL, "target_l0",
        ("lp_coefficient", "p_start", "p_end", "n_p_updates", "anneal_start_fraction", "anneal_end_fraction"),
    ),
]}


def architecture(name: ArchitectureName) -> Architecture:
    """The registry entry of ``name``; raises ``ValueError`` listing the known names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_sae(architecture_name: ArchitectureName, **fields: Any) -> SparseAutoencoder:
    """A new SAE of the named architecture. ``fields`` are its config's fields, plus ``l0`` (the
    target L0, sent to ``k`` or ``target_l0``) and ``steps`` (sent to ``total_steps``). The
    :data:`SHARED_FIELDS` are dropped where the config has no such field; any other unknown
    field raises. "matryoshka" uses the paper's group fractions unless ``group_sizes`` or
    ``n_random_prefixes`` is given; "batchtopk" is the one-group case."""
    arch = architecture(architecture_name)
    known = {f.name for f in dataclasses.fields(arch.config_class)}
    fields = dict(fields)
    if "l0" in fields:
        if arch.l0_field in fields:
            raise ValueError(f"give either l0 or {arch.l0_field}, not both")
        l0 = fields.pop("l0")
        if arch.l0_field == "k":
            if float(l0) != int(l0):
                raise ValueError(f"{arch.display_name} needs a whole number of active latents, got l0={l0}")
            l0 = int(l0)
        fields[arch.l0_field] = l0
    if "steps" in fields:
        if "total_steps" in fields:
            raise ValueError("give either steps or total_steps, not both")
        fields["total_steps"] = fields.pop("steps")
    droppable = {*SHARED_FIELDS, "total_steps"}
    fields = {k: v for k, v in fields.items() if k in known or k not in droppable}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{arch.name}: unknown config fields {unknown}; {arch.config_class.__name__} has {sorted(known)}")
    if arch.name == "batchtopk" and (fields.get("group_sizes") not in (None, [fields.get("d_sae")])
                                     or fields.get("n_random_prefixes")):
        raise ValueError("batchtopk has one group; use 'matryoshka' for nested groups or random prefixes")
    if arch.name == "matryoshka" and fields.get("group_sizes") is None and not fields.get("n_random_prefixes"):
        if "d_sae" not in fields:
            raise ValueError("matryoshka needs d_sae")
        fields["group_sizes"] = group_sizes_from_fractions(fields["d_sae"], PAPER_GROUP_FRACTIONS)
    return arch.sae_class(arch.config_class(**fields))


def table1_rows() -> list[dict[str, Any]]:
    """One row per architecture: name, display name, class, reference, sparsity mechanism,
    how its L0 is set, and its key hyper-parameters with their defaults."""
    return [
        {
            "name": a.name,
            "architecture": a.display_name,
            "sae_class": a.sae_class.__name__,
            "config_class": a.config_class.__name__,
            "reference": a.reference,
            "sparsity": a.sparsity,
            "l0_control": a.l0_control,
            "hyperparameters": a.hyperparameter_defaults(),
        }
        for a in ARCHITECTURES.values()
    ]


def table1_markdown() -> str:
    """Table 1 as a markdown table."""
    header = ["Architecture", "Sparsity", "L0 set by", "Key hyper-parameters (defaults)", "Reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table1_rows():
        params = ", ".join(f"{k}={_short(v)}" for k, v in row["hyperparameters"].items())
        cells = [row["architecture"], row["sparsity"], row["l0_control"], params, row["reference"]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)
