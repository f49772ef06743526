"""Figures of the language-model sweep: Figs 5, 8, 12 and 13."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..experiments.sweep import SweepResults

ARCHITECTURES = {"batchtopk": ("BatchTopK", "tab:blue", "o"), "matryoshka": ("Matryoshka", "tab:red", "s")}


def _against_l0(results: SweepResults, metric: str, ax: plt.Axes, ylabel: str) -> None:
    for architecture, (label, colour, marker) in ARCHITECTURES.items():
        names = results.names(architecture)
        l0 = [results.metrics[n]["l0"] for n in names]
        ax.plot(l0, [results.metrics[n][metric] for n in names], marker=marker, color=colour, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def reconstruction_vs_l0(results: SweepResults) -> plt.Figure:
    """Fig 5: variance explained and cross-entropy with the SAE spliced in, against L0."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    _against_l0(results, "variance_explained", left, "variance explained")
    _against_l0(results, "ce_sae", right, "cross-entropy with SAE (nats)")
    clean = results.metrics[results.names("batchtopk")[0]]["ce_clean"]
    right.axhline(clean, color="gray", linestyle="--", label="clean model")
    right.legend()
    return fig


def decoder_cosine_vs_l0(results: SweepResults) -> plt.Figure:
    """Fig 8: mean over latents of the largest cosine with any other decoder row."""
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    _against_l0(results, "mean_max_cosine", ax, "mean max decoder cosine")
    ax.legend()
    return fig


def frequency_by_index(results: SweepResults, k: int) -> plt.Figure:
    """Fig 12: firing frequency of each latent of the Matryoshka SAE with this k, by index,
    coloured by group; the BatchTopK SAE's frequencies, sorted, for reference."""
    matryoshka = results.metrics[f"matryoshka_k{k}"]
    frequency = np.asarray(matryoshka["frequency"])
    ends = [0] + [p["width"] for p in matryoshka["prefixes"]]
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(ends) - 1))
    floor = 0.5 / 10**6
    for g, (start, end) in enumerate(zip(ends[:-1], ends[1:])):
        ax.scatter(np.arange(start, end), np.maximum(frequency[start:end], floor), s=3, color=colours[g],
                   label=f"group {g + 1}: latents {start}-{end - 1}")
        ax.hlines(frequency[start:end].mean(), start, end, color=colours[g], linewidth=2)
    batchtopk = np.sort(np.asarray(results.metrics[f"batchtopk_k{k}"]["frequency"]))[::-1]
    ax.plot(np.maximum(batchtopk, floor), color="gray", linewidth=1, label="BatchTopK, sorted by frequency")
    ax.set_yscale("log")
    ax.set_xlabel("latent index")
    ax.set_ylabel("firing frequency")
    ax.legend(fontsize=8, markerscale=3)
    return fig


def prefixes_vs_batchtopk(results: SweepResults, k: int) -> plt.Figure:
    """Fig 13: each prefix of one Matryoshka SAE against a BatchTopK SAE of that width trained
    at the prefix's L0: variance explained and cross-entropy."""
    prefixes = results.metrics[f"matryoshka_k{k}"]["prefixes"]
    widths = [p["width"] for p in prefixes]
    matched = [results.matched_batchtopk(p, k) for p in prefixes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, metric, label in ((left, "variance_explained", "variance explained"), (right, "ce_sae", "cross-entropy with SAE (nats)")):
        ax.plot(widths, [p[metric] for p in prefixes], "s-", color=ARCHITECTURES["matryoshka"][1], label="Matryoshka prefix")
        ax.plot(widths, [m[metric] for m in matched], "o-", color=ARCHITECTURES["batchtopk"][1], label="BatchTopK of that width")
        ax.set_xscale("log")
        ax.set_xlabel("dictionary width (prefix)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.axhline(prefixes[0]["ce_clean"], color="gray", linestyle="--", label="clean model")
    left.legend()
    return fig
