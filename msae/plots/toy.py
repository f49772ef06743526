"""Figures of the toy model: decoder cosines (Fig 2) and activations (Figs 3 and 11)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..experiments.toy import SAE_KINDS, ToyEvaluation

TITLES = {"vanilla": "Vanilla SAE", "matryoshka": "Matryoshka SAE"}


def short_name(name: str) -> str:
    """'parent 0' -> 'P0', 'child 0.1' -> 'C0.1', 'single 3' -> 'S3'; other names unchanged."""
    kind, _, rest = name.partition(" ")
    return f"{kind[0].upper()}{rest}" if kind in ("parent", "child", "single") else name


def decoder_cosine_grid(evaluations: dict[int, dict[str, ToyEvaluation]], feature_names: list[str]) -> plt.Figure:
    """Fig 2: cosine of each true feature's matched decoder row with every true feature, one
    row of panels per seed. A clean dictionary is the identity."""
    seeds = list(evaluations)
    fig, axes = plt.subplots(len(seeds), 2, figsize=(9, 4.2 * len(seeds)), squeeze=False, layout="constrained")
    labels = [short_name(n) for n in feature_names]
    ticks = range(len(labels))
    for row, seed in enumerate(seeds):
        for col, kind in enumerate(SAE_KINDS):
            ax = axes[row, col]
            image = ax.imshow(evaluations[seed][kind].decoder_cosine.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_title(f"{TITLES[kind]} (seed {seed})")
            ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
            ax.set_yticks(ticks, labels, fontsize=7)
            ax.set_xlabel("true feature")
            ax.set_ylabel("matched latent's decoder row")
    fig.colorbar(image, ax=axes, shrink=0.6, label="cosine similarity")
    return fig


def _activation_panels(
    rows: torch.Tensor, features: list[int], evaluations: dict[str, ToyEvaluation], feature_names: list[str], title: str
) -> plt.Figure:
    """True activations of ``features`` on the sample ``rows`` beside each SAE's matched latents."""
    first = evaluations[SAE_KINDS[0]]
    panels = [("True features", first.true_acts[rows][:, features])]
    for kind in SAE_KINDS:
        latents = evaluations[kind].matching.latent_of_feature[features]
        panels.append((f"{TITLES[kind]}: matched latents", evaluations[kind].latent_acts[rows][:, latents]))
    vmax = max(float(p.max()) for _, p in panels)
    width = min(6.0, max(2.5, 0.35 * len(features)))
    fig, axes = plt.subplots(1, 3, figsize=(3 * width + 1, 6), layout="constrained", sharey=True)
    labels = [short_name(feature_names[f]) for f in features]
    for ax, (name, values) in zip(axes, panels):
        image = ax.imshow(values.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(features)), labels, rotation=90, fontsize=8)
    axes[0].set_ylabel("sample")
    fig.colorbar(image, ax=axes, shrink=0.8, label="activation (latents: times decoder norm)")
    fig.suptitle(title)
    return fig


def _descendants(parent_feature: list[int], feature: int) -> list[int]:
    """Every feature below ``feature``, depth first (each child followed by its own subtree)."""
    out = []
    for child in (f for f, p in enumerate(parent_feature) if p == feature):
        out += [child, *_descendants(parent_feature, child)]
    return out


def parent_activations(
    evaluations: dict[str, ToyEvaluation], parent_feature: list[int], feature_names: list[str], parent: int, per_case: int = 8
) -> plt.Figure:
    """Fig 3: samples where ``parent`` fires, alone, then with each descendant as the deepest
    active feature below it (a child alone, then that child with each of its own children, ...),
    and what each SAE's matched latents do on them. An absorbing SAE's parent latent goes dark
    when a child fires; in a deeper tree a child's latent can go dark under a grandchild too."""
    below = _descendants(parent_feature, parent)
    true = evaluations[SAE_KINDS[0]].true_acts
    parent_on = true[:, parent] > 0

    def none_of(features):
        return true[:, features].sum(1) == 0 if features else torch.ones(len(true), dtype=torch.bool)

    cases = [parent_on & none_of(below)]
    cases += [parent_on & (true[:, d] > 0) & none_of(_descendants(parent_feature, d)) for d in below]
    rows = torch.cat([case.nonzero().flatten()[:per_case] for case in cases])
    deeper = any(parent_feature[d] != parent for d in below)
    what = "each child and grandchild" if deeper else "each child"
    title = f"Samples where {feature_names[parent]} is active: alone, then with {what}"
    return _activation_panels(rows, [parent] + below, evaluations, feature_names, title)


def all_activations(evaluations: dict[str, ToyEvaluation], feature_names: list[str], n_samples: int = 60) -> plt.Figure:
    """Fig 11: the first ``n_samples`` samples with any feature active, ordered by their first
    active feature, for every feature."""
    true = evaluations[SAE_KINDS[0]].true_acts
    active = (true.sum(1) > 0).nonzero().flatten()[:n_samples]
    first_feature = true[active].argmax(1)  # index of the first active feature
    rows = active[torch.argsort(first_feature, stable=True)]
    title = "Every feature: true activations and the matched latents"
    return _activation_panels(rows, list(range(true.shape[1])), evaluations, feature_names, title)


def depth_levels(rows: list[dict]) -> plt.Figure:
    """The depth study: for each tree (columns), the parent absorption of each level's parents
    (top) and the mean matched cosine of each level's features (bottom), vanilla against
    Matryoshka, msae's implementation solid and the reference's dashed (``toy_depth.level_rows``)."""
    trees = list(dict.fromkeys(r["tree"] for r in rows))
    fig, axes = plt.subplots(2, len(trees), figsize=(3.6 * len(trees), 6), squeeze=False, layout="constrained", sharey="row")
    colours = {"vanilla": "tab:gray", "matryoshka": "tab:orange"}
    styles = {"msae": "-", "reference": "--"}
    for col, tree in enumerate(trees):
        for row, metric in enumerate(("absorption", "cosine")):
            ax = axes[row, col]
            for implementation in dict.fromkeys(r["implementation"] for r in rows):
                for kind in SAE_KINDS:
                    points = [(r["level"], r[metric]) for r in rows if r["tree"] == tree and r["sae"] == kind
                              and r["implementation"] == implementation and r[metric] is not None]
                    if points:
                        ax.plot(*zip(*points), styles.get(implementation, ":"), marker="o", color=colours[kind],
                                label=f"{TITLES[kind]} ({implementation})")
            levels = sorted({r["level"] for r in rows if r["tree"] == tree})
            ax.set_xticks(levels)
            ax.set_ylim(-0.05, 1.05)
            if row == 0:
                ax.set_title(tree)
        axes[0, col].set_xlabel("level of the parents (0: top)")
        axes[1, col].set_xlabel("level of the features (0: top)")
    axes[0, 0].set_ylabel("parent absorption")
    axes[1, 0].set_ylabel("mean matched cosine")
    axes[0, -1].legend(fontsize=7, loc="best")
    return fig
