"""Figures of the language-model sweep: Figs 5, 8, 12 and 13.

Each ``plot_*`` function draws on one axes (``ax``, or a new figure's) from flat rows, as
``SweepResults.rows()`` / ``latent_rows()`` / ``prefix_rows()`` and ``FeatureEvaluator.rows()``
give them, and returns the axes; the figure functions lay those panels out as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

Rows = Sequence[dict[str, Any]]

# (label, colour, marker) of the main sweep's two architectures, shared by every figure
ARCHITECTURES = {"batchtopk": ("BatchTopK", "tab:blue", "o"), "matryoshka": ("Matryoshka", "tab:red", "s")}


def _axes(ax: plt.Axes | None, figsize=(5.5, 4)) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize, layout="constrained")[1]


def plot_vs_l0(rows: Rows, metric: str, ax: plt.Axes | None = None, ylabel: str | None = None,
               architectures: dict[str, tuple[str, str, str]] = ARCHITECTURES, **style: Any) -> plt.Axes:
    """One line per architecture of ``architectures`` (``{name: (label, colour, marker)}``): each
    row's ``metric`` against the L0 it reaches (``l0``), in increasing ``k``; rows of other
    architectures, or whose ``metric`` is missing or None, are left out. ``style`` goes to
    ``ax.plot``."""
    ax = _axes(ax)
    for architecture, (label, colour, marker) in architectures.items():
        kept = sorted((r for r in rows if r["architecture"] == architecture and r.get(metric) is not None),
                      key=lambda r: r["k"])
        if kept:
            ax.plot([r["l0"] for r in kept], [r[metric] for r in kept], marker=marker, color=colour, label=label,
                    **style)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def reconstruction_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 5: variance explained, cross-entropy with the SAE spliced in and the KL divergence of
    the spliced model's predictions from the clean model's, against L0."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    plot_vs_l0(rows, "variance_explained", left, "variance explained")
    plot_vs_l0(rows, "ce_sae", middle, "cross-entropy with SAE (nats)")
    middle.axhline(rows[0]["ce_clean"], color="gray", linestyle="--", label="clean model")
    middle.legend()
    plot_vs_l0(rows, "kl_sae", right, "KL(clean || with SAE) (nats)")
    return fig


def decoder_cosine_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 8: mean over latents of the largest cosine with any other decoder row."""
    ax = plot_vs_l0(rows, "mean_max_cosine", ylabel="mean max decoder cosine")
    ax.legend()
    return ax.figure


def plot_frequency_by_index(latents: Rows, reference: Rows | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """Fig 12: the firing frequency of each latent (``latent_rows`` of a Matryoshka SAE) by index,
    coloured by group with each group's mean; ``reference`` (another SAE's latents, e.g.
    BatchTopK's) sorted by frequency, in gray."""
    ax = _axes(ax, figsize=(9, 4))
    frequency = np.asarray([r["frequency"] for r in latents])
    group = np.asarray([r["group"] for r in latents])
    groups = sorted(set(group.tolist()))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(groups)))
    floor = 0.5 / 10**6  # silent latents still show on the log axis
    for colour, g in zip(colours, groups):
        index = np.flatnonzero(group == g)
        start, end = int(index[0]), int(index[-1]) + 1
        ax.scatter(index, np.maximum(frequency[index], floor), s=3, color=colour,
                   label=f"group {g}: latents {start}-{end - 1}")
        ax.hlines(frequency[index].mean(), start, end, color=colour, linewidth=2)
    if reference is not None:
        ordered = np.sort(np.asarray([r["frequency"] for r in reference]))[::-1]
        ax.plot(np.maximum(ordered, floor), color="gray", linewidth=1, label="BatchTopK, sorted by frequency")
    ax.set_yscale("log")
    ax.set_xlabel("latent index")
    ax.set_ylabel("firing frequency")
    ax.legend(fontsize=8, markerscale=3)
    return ax


def plot_prefixes(prefix_rows: Rows, metric: str, ax: plt.Axes | None = None, ylabel: str | None = None) -> plt.Axes:
    """Fig 13, one panel: ``metric`` of each Matryoshka prefix and of the BatchTopK SAE of that
    width (``SweepResults.prefix_rows``), against the width."""
    ax = _axes(ax)
    for source, label, architecture, style in (("matryoshka prefix", "Matryoshka prefix", "matryoshka", "s-"),
                                               ("batchtopk", "BatchTopK of that width", "batchtopk", "o-")):
        kept = [r for r in prefix_rows if r["source"] == source]
        ax.plot([r["width"] for r in kept], [r[metric] for r in kept], style, color=ARCHITECTURES[architecture][1],
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("dictionary width (prefix)")
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def prefixes_vs_batchtopk(prefix_rows: Rows) -> plt.Figure:
    """Fig 13: each prefix of one Matryoshka SAE against a BatchTopK SAE of that width trained
    at the prefix's L0: variance explained and cross-entropy."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    plot_prefixes(prefix_rows, "variance_explained", left, "variance explained")
    plot_prefixes(prefix_rows, "ce_sae", right, "cross-entropy with SAE (nats)")
    right.axhline(prefix_rows[0]["ce_clean"], color="gray", linestyle="--", label="clean model")
    left.legend()
    return fig
