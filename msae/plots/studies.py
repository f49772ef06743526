"""Figures of the studies beside the sweep (``msae.studies``): Fig 5 with every architecture,
Fig 10 (metrics against width) and Figs 16-19 (the Matryoshka ablations).

Every function reads ``SweepResults.metrics``; a feature metric computed elsewhere (absorption,
SCR, ...) comes in as ``extra_metrics``: ``{metric: {sae name: value}}``.
"""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from ..experiments.studies import StudyConfig, scaling_name
from ..experiments.sweep import SweepResults
from ..saes import registry
from .lm import ARCHITECTURES as MAIN_ARCHITECTURES

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

# Figs 16-19: one row each, the arms it compares (``msae.studies.ABLATION_ARMS``) with their labels.
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


def names_by_k(results: SweepResults, prefix: str) -> list[str]:
    """The SAEs named ``{prefix}_k{k}`` in the results, by increasing k (so ``matryoshka`` finds
    the main sweep's Matryoshka SAEs and not the ablation arms or other widths)."""
    pattern = re.compile(rf"{re.escape(prefix)}_k(\d+)")
    found = [(int(m.group(1)), name) for name in results.metrics if (m := pattern.fullmatch(name))]
    return [name for _, name in sorted(found)]


def metric_value(results: SweepResults, name: str, metric: str, extra_metrics: dict | None = None) -> float:
    """``metric`` of SAE ``name``: from ``extra_metrics`` when it holds that metric, else the sweep's."""
    if extra_metrics and metric in extra_metrics:
        return float(extra_metrics[metric][name])
    return float(results.metrics[name][metric])


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _plot_vs_l0(results: SweepResults, ax: plt.Axes, names: list[str], metric: str, **style) -> None:
    ax.plot([results.metrics[n]["l0"] for n in names], [results.metrics[n][metric] for n in names], **style)


def _log_ticks(ax: plt.Axes, values: list[int]) -> None:
    """A log x axis labelled at ``values`` (the sweep's k values, the widths) only."""
    ax.set_xscale("log")
    ax.set_xticks(values, labels=[str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _l0_axis(ax: plt.Axes, ylabel: str, k_values: list[int]) -> None:
    _log_ticks(ax, k_values)
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def all_architectures_vs_l0(results: SweepResults) -> plt.Figure:
    """Fig 5 with every architecture of Table 1 that the results hold: variance explained and
    cross-entropy with the SAE spliced in, against the L0 each SAE reaches at inference."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    plotted = 0
    for architecture, (label, colour, marker) in ARCHITECTURES.items():
        names = names_by_k(results, architecture)
        if not names:
            continue
        plotted += 1
        main = architecture in MAIN_ARCHITECTURES  # drawn on top, with thicker lines
        style = dict(marker=marker, color=colour, label=label, linewidth=2 if main else 1.2, zorder=3 if main else 2)
        _plot_vs_l0(results, left, names, "variance_explained", **style)
        _plot_vs_l0(results, right, names, "ce_sae", **style)
    if not plotted:
        raise ValueError("the results hold no SAE named {architecture}_k{k}; run the sweep first")
    _l0_axis(left, _label("variance_explained"), results.config.k_values)
    _l0_axis(right, _label("ce_sae"), results.config.k_values)
    clean = next(iter(results.metrics.values()))["ce_clean"]
    right.axhline(clean, color="gray", linestyle="--", label="clean model")
    fig.legend(*right.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


def l0_reached(results: SweepResults) -> list[dict]:
    """Per SAE of Fig 5: its architecture, target L0 (``k`` or ``target_l0``, as configured)
    and the L0 it reaches on the evaluation tokens."""
    rows = []
    for architecture in ARCHITECTURES:
        field = registry.ARCHITECTURES[architecture].l0_field
        for name in names_by_k(results, architecture):
            m = results.metrics[name]
            rows.append({"sae": name, "architecture": architecture, "target": float(m["config"][field]), "l0": m["l0"]})
    return rows


def width_means(results: SweepResults, study: StudyConfig, metrics: list[str],
                extra_metrics: dict | None = None) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Fig 10's numbers: ``{architecture: {metric: [(width, mean), ...]}}``, the mean of each
    metric over the SAEs with L0 in ``study.width_k_values``, at each width (the sweep's and the
    study's). A width where an architecture misses any of those SAEs is left out."""
    if not study.width_k_values:
        raise ValueError("the study config has no width_k_values to average over")
    widths = sorted({results.config.d_sae, *study.widths})
    means: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for architecture in study.width_architectures:
        for width in widths:
            names = [scaling_name(results.config, architecture, width, k) for k in study.width_k_values]
            if not all(n in results.metrics and (not extra_metrics or all(n in v for v in extra_metrics.values()))
                       for n in names):
                continue
            for metric in metrics:
                mean = float(np.mean([metric_value(results, n, metric, extra_metrics) for n in names]))
                means.setdefault(architecture, {}).setdefault(metric, []).append((width, mean))
    return means


def scaling_vs_width(results: SweepResults, study: StudyConfig, extra_metrics: dict | None = None,
                     metrics: tuple[str, ...] = ("variance_explained", "loss_recovered", "mean_max_cosine")) -> plt.Figure:
    """Fig 10: per metric (those of the sweep, then each of ``extra_metrics``), its mean over
    the middle L0s against dictionary width, one line per architecture."""
    metrics = [*metrics, *(m for m in (extra_metrics or {}) if m not in metrics)]
    means = width_means(results, study, metrics, extra_metrics)
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


def ablation_rows(results: SweepResults) -> dict[str, dict[str, list[str]]]:
    """``{row title: {arm label: SAE names by k}}`` for the Figs 16-19 rows whose arms the
    results hold, each with the main Matryoshka and BatchTopK SAEs as references."""
    rows = {}
    for title, arms in ABLATION_ROWS.items():
        found = {label: names_by_k(results, arm) for arm, label in arms.items()}
        found = {label: names for label, names in found.items() if names}
        if found:
            rows[title] = {**found, MAIN_MATRYOSHKA_LABEL: names_by_k(results, "matryoshka"),
                           MAIN_ARCHITECTURES["batchtopk"][0]: names_by_k(results, "batchtopk")}
    return rows


def ablations_vs_l0(results: SweepResults, metrics: tuple[str, ...] = ("variance_explained", "loss_recovered"),
                    extra_metrics: dict | None = None) -> plt.Figure:
    """Figs 16-19: a row per ablation (loss weighting, stop-gradient, number of groups, random
    prefixes), a column per metric against L0; each arm beside the main sweep's Matryoshka and
    BatchTopK SAEs. ``extra_metrics`` adds columns (an SAE missing from one is left out there)."""
    metrics = [*metrics, *(m for m in (extra_metrics or {}) if m not in metrics)]
    rows = ablation_rows(results)
    if not rows:
        raise ValueError("the results hold no ablation arm; run the sweep with studies=['ablations']")
    fig, axes = plt.subplots(len(rows), len(metrics), figsize=(4.6 * len(metrics), 3.3 * len(rows)),
                             layout="constrained", squeeze=False)
    arm_colours = plt.cm.viridis(np.linspace(0.15, 0.85, 3))
    for r, (title, arms) in enumerate(rows.items()):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for i, (label, names) in enumerate(arms.items()):
                if label == MAIN_MATRYOSHKA_LABEL:
                    colour, marker = MAIN_ARCHITECTURES["matryoshka"][1:]
                elif label == MAIN_ARCHITECTURES["batchtopk"][0]:
                    colour, marker = MAIN_ARCHITECTURES["batchtopk"][1:]
                else:
                    colour, marker = arm_colours[i], "D"
                if extra_metrics and metric in extra_metrics:
                    names = [n for n in names if n in extra_metrics[metric]]
                if names:
                    ax.plot([results.metrics[n]["l0"] for n in names],
                            [metric_value(results, n, metric, extra_metrics) for n in names],
                            marker=marker, color=colour, label=label)
            _l0_axis(ax, _label(metric), results.config.k_values)
            ax.set_title(title, fontsize=10)
        axes[r][0].legend(fontsize=7)
    return fig
