"""The scale ladder's figure (``msae.experiments.ladder``): absorption and variance explained of
BatchTopK and Matryoshka SAEs at one L0 against width and against training tokens.

Panels take flat rows, one per SAE, as ``LadderResults.rows(evaluator)`` gives them (``width``,
``tokens``, ``architecture`` and the metric columns).
"""

from __future__ import annotations

from typing import Literal

import matplotlib.pyplot as plt

from .lm import ARCHITECTURES, Rows
from .studies import _log_ticks

Along = Literal["width", "tokens"]
# one line style per value of the axis not plotted (a token budget, or a width), smallest first
LINE_STYLES = ("-", "--", ":", "-.")
METRIC_LABELS = {
    "absorption": "absorption (SAEBench's score)",
    "absorption_all_letters": "absorption, every letter (diagnostic)",
    "variance_explained": "variance explained",
}
AXIS_LABELS = {"width": "dictionary width (latents)", "tokens": "training tokens (distinct)"}


def tokens_label(tokens: int) -> str:
    """600000 -> "600k", 3000000 -> "3M"."""
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if tokens >= size:
            return f"{tokens / size:g}{unit}"
    return str(tokens)


def _other_label(along: Along, value: int) -> str:
    return f"{tokens_label(value)} tokens" if along == "width" else f"{value:,} latents"


def plot_ladder(rows: Rows, metric: str, along: Along = "width", ax: plt.Axes | None = None) -> plt.Axes:
    """``metric`` against ``along`` ("width" or "tokens"): one line per architecture (its colour and
    marker) and value of the other axis (its line style: the token budget when along width, the
    width when along tokens). Rows whose ``metric`` is missing or None are left out; with none
    left the panel says so."""
    if along not in AXIS_LABELS:
        raise ValueError(f"along must be 'width' or 'tokens', got {along!r}")
    ax = ax if ax is not None else plt.subplots(figsize=(5, 4), layout="constrained")[1]
    other = "tokens" if along == "width" else "width"
    kept = [r for r in rows if r.get(metric) is not None]
    others = sorted({r[other] for r in kept})
    for architecture, (label, colour, marker) in ARCHITECTURES.items():
        for i, value in enumerate(others):
            line = sorted((r for r in kept if r["architecture"] == architecture and r[other] == value), key=lambda r: r[along])
            if line:
                ax.plot([r[along] for r in line], [r[metric] for r in line], color=colour, marker=marker,
                        linestyle=LINE_STYLES[i % len(LINE_STYLES)], label=f"{label}, {_other_label(along, value)}")
    if kept:
        _log_ticks(ax, sorted({r[along] for r in kept}))
        if along == "tokens":
            ax.set_xticklabels([tokens_label(t) for t in sorted({r["tokens"] for r in kept})])
    else:
        ax.text(0.5, 0.5, "not scored by SAEBench's rule\n(too few letters with a good probe)", ha="center",
                va="center", transform=ax.transAxes, fontsize=9, color="gray")
    ax.set_xlabel(AXIS_LABELS[along])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
    ax.grid(alpha=0.3)
    return ax


def scale_ladder(rows: Rows, metrics: tuple[str, ...] = ("absorption", "absorption_all_letters", "variance_explained")
                 ) -> plt.Figure:
    """The ladder's figure: a column per metric, against width (top row, a line per token budget)
    and against tokens (bottom row, a line per width)."""
    if not rows:
        raise ValueError("no ladder rows to plot; run msae.experiments.ladder.run_ladder first")
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 7.2), layout="constrained", squeeze=False)
    for row, along in enumerate(("width", "tokens")):
        for ax, metric in zip(axes[row], metrics):
            plot_ladder(rows, metric, along, ax)
        axes[row][-1].legend(fontsize=7)
    k = sorted({r["k"] for r in rows})
    fig.suptitle(f"BatchTopK and Matryoshka at L0 {', '.join(map(str, k))}: against width and training tokens",
                 fontsize=11)
    return fig
