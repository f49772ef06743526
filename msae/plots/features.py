"""Figures of the feature-quality evaluations: Figs 1, 4, 6, 7, 9 and 14.

Figs 6, 7, 9 and 14 take flat rows, one per SAE, as ``FeatureEvaluator.rows(names, metrics)``
gives them (the sweep's columns, ``l0`` among them, and each metric's, see
``msae.experiments.feature_evals.flat_columns``); each panel is ``msae.plots.lm.plot_vs_l0``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .lm import ARCHITECTURES, Rows, plot_vs_l0


def absorption_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 6: mean first-letter absorption fraction and mean number of split latents per letter:
    SAEBench's scores (solid, where it scores them), and the same means over every letter with a
    probe-correct word (dashed: a diagnostic, drawn so the figure says something where SAEBench's
    rule declines to score)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    plot_vs_l0(rows, "absorption", left, "mean absorption fraction (lower is better)")
    plot_vs_l0(rows, "split_latents", right, "split latents per letter")
    every_letter = {name: (f"{label}, every letter", colour, marker) for name, (label, colour, marker) in ARCHITECTURES.items()}
    plot_vs_l0(rows, "absorption_all_letters", left, architectures=every_letter, linestyle="--", alpha=0.6)
    plot_vs_l0(rows, "split_latents_all_letters", right, architectures=every_letter, linestyle="--", alpha=0.6)
    left.set_ylabel("mean absorption fraction (lower is better)")
    left.set_ylim(bottom=0)  # a fraction: from 0, as the paper draws it, so small gaps look small
    right.set_ylabel("split latents per letter")
    left.legend()
    return fig


def probing_vs_l0(rows: Rows, n_ablated: int = 20) -> plt.Figure:
    """Fig 7: sparse probing accuracy with the top latent, SCR and TPP with ``n_ablated`` latents."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    plot_vs_l0(rows, "sparse_probing_top1", axes[0], "sparse probing accuracy, top-1 latent")
    plot_vs_l0(rows, f"scr_{n_ablated}", axes[1], f"SCR, top {n_ablated} latents ablated")
    plot_vs_l0(rows, f"tpp_{n_ablated}", axes[2], f"TPP, top {n_ablated} latents ablated")
    axes[0].legend()
    return fig


def interpretability_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 9: the judge-free score (mean best concept F1 of the latents) and, when a judge ran
    (rows with ``autointerp_score``), the LLM-judge detection score."""
    judged = any(r.get("autointerp_score") is not None for r in rows)
    panels = 2 if judged else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), layout="constrained", squeeze=False)
    plot_vs_l0(rows, "concept_f1", axes[0, 0], "mean best concept F1 (judge-free)")
    if judged:
        plot_vs_l0(rows, "autointerp_score", axes[0, 1], "autointerp detection score (LLM judge)")
    axes[0, 0].legend()
    return fig


def meta_sae_vs_l0(rows: Rows) -> plt.Figure:
    """Fig 14 at one width: variance of the decoder rows a meta-SAE explains, against the SAE's
    L0; lower means more atomic latents."""
    ax = plot_vs_l0(rows, "meta_sae_variance_explained", ylabel="meta-SAE variance explained")
    ax.legend()
    return ax.figure


def headline_bars(values: dict[str, dict[str, float]]) -> plt.Figure:
    """Fig 1: ``values[metric][architecture]`` as grouped bars, one panel per metric."""
    fig, axes = plt.subplots(1, len(values), figsize=(4 * len(values), 3.6), layout="constrained")
    for ax, (metric, by_arch) in zip(np.atleast_1d(axes), values.items()):
        labels = [ARCHITECTURES[a][0] for a in by_arch]
        colours = [ARCHITECTURES[a][1] for a in by_arch]
        bars = ax.bar(labels, list(by_arch.values()), color=colours)
        ax.bar_label(bars, fmt="%.3f")
        ax.set_title(metric)
        ax.set_ylim(0, max(1e-9, max(by_arch.values())) * 1.25)
    return fig


def general_latent_examples(study: dict, max_tokens: int = 28) -> plt.Figure:
    """Fig 4: the general latent of each SAE on example stories. Each token is a box shaded by
    the latent's activation (relative to its largest on the shown tokens); tokens of the
    concept where the latent is silent (holes) are outlined in red."""
    labels = list(study["saes"])
    examples = study["examples"]
    rows = [(e, label) for e in examples for label in labels]
    fig, ax = plt.subplots(figsize=(16, 0.45 * len(rows) + 0.6 * len(examples)), layout="constrained")
    ax.set_axis_off()
    y = 0.0
    for example in examples:
        tokens = example["tokens"][:max_tokens]
        concept = example["concept"][:max_tokens]
        for label in labels:
            values = np.asarray(example["activations"][label][:max_tokens])
            scale = max(values.max(), 1e-9)
            x = 0.0
            ax.text(-0.5, y + 0.5, f"{label} (latent {study['saes'][label]['latent']})", ha="right", va="center", fontsize=8)
            for token, value, member in zip(tokens, values, concept):
                width = 0.25 + 0.11 * len(token.strip() or " ")
                hole = member and value <= 0
                ax.add_patch(Rectangle((x, y), width, 0.9, facecolor=plt.cm.Oranges(0.85 * value / scale),
                                       edgecolor="red" if hole else "white", linewidth=2 if hole else 0.5))
                ax.text(x + width / 2, y + 0.45, token.strip() or "·", ha="center", va="center", fontsize=7,
                        weight="bold" if member else "normal")
                x += width + 0.05
            y -= 1.0
        y -= 0.6
    ax.set_xlim(-0.5, 16)
    ax.set_ylim(y + 0.5, 1.2)
    ax.set_title(f"the best '{study['concept']}' latent of each SAE on example stories: shade = activation, "
                 "bold = a concept token, red box = a concept token where the latent is silent (a hole)", fontsize=9)
    return fig
