"""Figures of the studies beside the sweep (``msae.experiments.studies``): Fig 5 with every
architecture, Fig 10 (metrics against width), Figs 16-19 (the Matryoshka ablations) and the
training curves of penalty-steered SAEs.

Every function takes flat rows, one per SAE, as ``SweepResults.rows()`` gives them; a feature
metric computed elsewhere (absorption, ...) is one more column of those rows
(``FeatureEvaluator.rows``). Fig 5 and Figs 16-19 read the SAEs at the sweep's width
(``SweepResults.rows_at_sweep_width()``), Fig 10 those of every width.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from ..experiments.studies import StudyConfig
from ..saes import registry
from .lm import ARCHITECTURES as MAIN_ARCHITECTURES
from .lm import Rows, plot_vs_l0

# (label, colour, marker) per registry name; BatchTopK and Matryoshka as in the other figures.
_BASELINE_STYLES = {"relu": ("tab:green", "^"), "topk": ("tab:orange", "v"), "gated": ("tab:purple", "D"),
                    "jumprelu": ("tab:brown", "P"), "p_anneal": ("tab:pink", "X")}
ARCHITECTURES = {
    name: MAIN_ARCHITECTURES.get(name) or (registry.ARCHITECTURES[name].display_name, *_BASELINE_STYLES[name])
    for name in registry.ARCHITECTURES
}

METRIC_LABELS = {
    "variance_explained": "variance explained",
    "loss_recovered": "loss recovered",
    "ce_sae": "cross-entropy with SAE (nats)",
    "mean_max_cosine": "mean max decoder cosine",
    "l0": "L0",
    "absorption": "absorption (first letter)",
}

# Figs 16-19: one row each, the arms it compares (``msae.experiments.studies.ABLATION_ARMS``) with their labels.
# The main sweep's Matryoshka SAE (five fixed groups, uniform weights, no stop-gradient) is the
# reference arm of every row.
ABLATION_ROWS = {
    "Fig 16: loss weighting": {"matryoshka_size_weighted": "weights proportional to group size"},
    "Fig 17: stop-gradient": {"matryoshka_stop_gradient": "stop-gradient between groups"},
    "Fig 18: number of groups": {"matryoshka_3groups": "3 groups", "matryoshka_10groups": "10 groups"},
    "Fig 19: random prefixes": {"matryoshka_random3": "3 random prefixes", "matryoshka_random5": "5 random prefixes",
                                "matryoshka_random10": "10 random prefixes"},
}
MAIN_MATRYOSHKA_LABEL = "Matryoshka (5 fixed groups, uniform)"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _log_ticks(ax: plt.Axes, values: Sequence[int]) -> None:
    """A log x axis labelled at ``values`` (the sweep's k values, the widths) only."""
    ax.set_xscale("log")
    ax.set_xticks(values, labels=[str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _l0_axis(ax: plt.Axes, ylabel: str, k_values: Sequence[int]) -> None:
    _log_ticks(ax, k_values)
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def by_architecture(rows: Rows) -> list[dict]:
    """The rows of Table 1's architectures (no ablation arm, no prefix-matched SAE), in the
    registry's order, then by k: Fig 5's SAEs and its table of target and reached L0."""
    order = list(ARCHITECTURES)
    kept = [r for r in rows if r["architecture"] in ARCHITECTURES and r["prefix_width"] is None]
    return sorted(kept, key=lambda r: (order.index(r["architecture"]), r["k"]))


def all_architectures_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 5 with every architecture of Table 1 that ``rows`` (at the sweep's width) hold:
    variance explained and cross-entropy with the SAE spliced in, against the L0 each SAE
    reaches at inference."""
    rows = by_architecture(rows)
    if not rows:
        raise ValueError("the rows hold no SAE of Table 1's architectures; run the sweep first")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for architecture, style in ARCHITECTURES.items():
        main = architecture in MAIN_ARCHITECTURES  # drawn on top, with thicker lines
        width = dict(linewidth=2 if main else 1.2, zorder=3 if main else 2)
        plot_vs_l0(rows, "variance_explained", left, architectures={architecture: style}, **width)
        plot_vs_l0(rows, "ce_sae", right, architectures={architecture: style}, **width)
    k_values = sorted({r["k"] for r in rows})
    _l0_axis(left, _label("variance_explained"), k_values)
    _l0_axis(right, _label("ce_sae"), k_values)
    right.axhline(rows[0]["ce_clean"], color="gray", linestyle="--", label="clean model")
    fig.legend(*right.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


def width_means(rows: Rows, study: StudyConfig, metrics: Sequence[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Fig 10's numbers: ``{architecture: {metric: [(width, mean), ...]}}``, the mean of each
    metric over the rows with k in ``study.width_k_values``, at each width the rows hold. A
    width where an architecture misses any of those k, or a value of any metric, is left out."""
    if not study.width_k_values:
        raise ValueError("the study config has no width_k_values to average over")
    found = {(r["architecture"], r["width"], r["k"]): r for r in rows if r["prefix_width"] is None}
    widths = sorted({width for _, width, _ in found})
    means: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for architecture in study.width_architectures:
        for width in widths:
            chosen = [found.get((architecture, width, k)) for k in study.width_k_values]
            if not all(r is not None and all(r.get(m) is not None for m in metrics) for r in chosen):
                continue
            for metric in metrics:
                mean = float(np.mean([r[metric] for r in chosen]))
                means.setdefault(architecture, {}).setdefault(metric, []).append((width, mean))
    return means


def scaling_vs_width(rows: Rows, study: StudyConfig,
                     metrics: Sequence[str] = ("variance_explained", "loss_recovered", "mean_max_cosine")) -> plt.Figure:
    """Fig 10: per metric, its mean over the middle L0s against dictionary width, one line per
    architecture."""
    means = width_means(rows, study, metrics)
    if not means:
        raise ValueError("no architecture has every SAE of the scaling study at any width; run studies "
                         "['baselines', 'scaling'] first")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), layout="constrained", squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for architecture, by_metric in means.items():
            label, colour, marker = ARCHITECTURES[architecture]
            widths, values = zip(*by_metric[metric])
            ax.plot(widths, values, marker=marker, color=colour, label=label)
        _log_ticks(ax, sorted({w for by_metric in means.values() for w, _ in by_metric[metric]}))
        ax.set_xlabel("dictionary width (latents)")
        ax.set_ylabel(_label(metric))
        ax.set_title(f"mean over L0 {', '.join(map(str, study.width_k_values))}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


def ablation_rows(rows: Rows) -> dict[str, dict[str, list[dict]]]:
    """``{figure row title: {arm label: its rows by k}}`` for the Figs 16-19 rows whose arms
    ``rows`` (at the sweep's width) hold, each with the main Matryoshka and BatchTopK SAEs as
    references."""
    def of(architecture: str) -> list[dict]:
        return sorted((r for r in rows if r["architecture"] == architecture and r["prefix_width"] is None),
                      key=lambda r: r["k"])

    grouped = {}
    for title, arms in ABLATION_ROWS.items():
        found = {label: of(arm) for arm, label in arms.items()}
        found = {label: arm_rows for label, arm_rows in found.items() if arm_rows}
        if found:
            grouped[title] = {**found, MAIN_MATRYOSHKA_LABEL: of("matryoshka"),
                              MAIN_ARCHITECTURES["batchtopk"][0]: of("batchtopk")}
    return grouped


def ablations_vs_l0(rows: Rows, metrics: Sequence[str] = ("variance_explained", "loss_recovered")) -> plt.Figure:
    """Figs 16-19: a row per ablation (loss weighting, stop-gradient, number of groups, random
    prefixes), a column per metric against L0; each arm beside the main sweep's Matryoshka and
    BatchTopK SAEs. An SAE without a value of a metric is left out of that column."""
    grouped = ablation_rows(rows)
    if not grouped:
        raise ValueError("the rows hold no ablation arm; run the sweep with studies=['ablations']")
    k_values = sorted({r["k"] for arms in grouped.values() for arm_rows in arms.values() for r in arm_rows})
    fig, axes = plt.subplots(len(grouped), len(metrics), figsize=(4.6 * len(metrics), 3.3 * len(grouped)),
                             layout="constrained", squeeze=False)
    arm_colours = plt.cm.viridis(np.linspace(0.15, 0.85, 3))
    for r, (title, arms) in enumerate(grouped.items()):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for i, (label, arm_rows) in enumerate(arms.items()):
                if label == MAIN_MATRYOSHKA_LABEL:
                    colour, marker = MAIN_ARCHITECTURES["matryoshka"][1:]
                elif label == MAIN_ARCHITECTURES["batchtopk"][0]:
                    colour, marker = MAIN_ARCHITECTURES["batchtopk"][1:]
                else:
                    colour, marker = arm_colours[i], "D"
                kept = [row for row in arm_rows if row.get(metric) is not None]
                if kept:
                    ax.plot([row["l0"] for row in kept], [row[metric] for row in kept], marker=marker, color=colour,
                            label=label)
            _l0_axis(ax, _label(metric), k_values)
            ax.set_title(title, fontsize=10)
        axes[r][0].legend(fontsize=7)
    return fig


def training_curves(histories: dict[str, Sequence[dict[str, float]]], coefficient: str = "l1_coefficient") -> plt.Figure:
    """The penalty ``coefficient``, the L0 and the variance explained logged along training,
    one line per SAE (``{label: history}``, histories as ``SweepResults.history`` reads them):
    how a controller steers the coefficient and what the SAE does meanwhile."""
    if not histories:
        raise ValueError("no training histories to plot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for label, history in histories.items():
        steps = [record["step"] for record in history]
        for ax, key in zip(axes, (coefficient, "l0", "variance_explained")):
            ax.plot(steps, [record[key] for record in history], label=label)
    for ax, ylabel, log in zip(axes, (coefficient.replace("_", " "), "L0 (training batch)", "variance explained (training batch)"),
                               (True, True, False)):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig
