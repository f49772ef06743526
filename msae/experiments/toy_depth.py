"""The toy model beyond two levels (notebook 19): vanilla and Matryoshka SAEs on trees of depth
2, 3 and 4 (``msae.data.toy.hierarchy_tree``), several seeds each, with the matched cosine and
the parent absorption of every level, beside the paper authors' reference toy code run on the
same trees, seeds and batches (:mod:`msae.experiments.toy_reference`); and the Matryoshka SAE
under changes to the paper's settings, one at a time (:data:`VARIANTS`), to find what it takes
to recover a deeper tree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.toy import FeatureTree, load_tree
from ..evals.metrics import parent_coverage
from . import toy
from .toy import SAE_KINDS, ToyEvaluation, ToyExperimentConfig

DEPTH_TREES = ("depth2", "depth3", "depth4", "paper3")
# the Matryoshka SAE at the paper's settings on trees that differ in one property of their design:
# the paper tree against paper3 and paper4 (depth), depth2/3 against depth2/3-rare (how often
# children fire)
DESIGN_TREES = ("paper", "paper3", "paper4", "depth2", "depth2-rare", "depth3", "depth3-rare")
# a parent counts as covered when one latent fires on at least this share of its samples without
# a child and of those with one, and this share of its firings are on the parent's samples
# (``msae.evals.metrics.parent_coverage``)
COVERED = 0.9


def _every_prefix_end(config: ToyExperimentConfig) -> ToyExperimentConfig:
    return replace(config, n_prefixes=toy.sae_width(config))


# Changes to the paper's toy settings, each applied alone to the Matryoshka SAE: the levers the
# paper's setup has (prefixes, their law, latent order, steps, learning rate, dictionary size).
VARIANTS: dict[str, Callable[[ToyExperimentConfig], ToyExperimentConfig]] = {
    "paper settings": lambda config: config,
    "every prefix end": _every_prefix_end,  # all d_sae nested losses in every batch
    "uniform prefix ends": lambda config: replace(config, pareto_exponent=0.99),  # not favouring short ones
    "no latent sorting": lambda config: replace(config, sort_latents=False),
    "2.5x steps": lambda config: replace(config, steps=int(2.5 * config.steps)),
    "lr / 3": lambda config: replace(config, lr=config.lr / 3),
    "2 latents per feature": lambda config: replace(config, latents_per_feature=2),
}


def run_depths(config: ToyExperimentConfig, trees: Sequence[str], seeds: Sequence[int], runs_dir: str | Path,
               progress: bool = True) -> dict[str, dict[int, dict[str, ToyEvaluation]]]:
    """msae's vanilla and Matryoshka toy SAEs on each tree (``{tree: {seed: {kind: evaluation}}}``);
    every tree is checked before the first one trains."""
    for tree in trees:
        toy.check_config(replace(config, tree=tree))
    return {tree: toy.run(replace(config, tree=tree), seeds, runs_dir, progress) for tree in trees}


def level_rows(results: dict[str, dict[int, dict[str, Any]]], implementation: str = "msae") -> list[dict[str, Any]]:
    """One row per (tree, SAE, level): the mean over seeds of that level's matched cosine and of
    its parents' absorption (None for the last level, which has no children), and the pooled
    numbers of the tree. ``results`` maps tree -> seed -> kind -> a ``toy.summary`` dict or a
    :class:`ToyEvaluation`."""
    rows = []
    for tree, by_seed in results.items():
        depth = FeatureTree(load_tree(tree)).depth
        for kind in SAE_KINDS:
            summaries = [_summary(by_seed[seed][kind]) for seed in by_seed]
            for level in range(depth):
                rows.append({
                    "tree": tree, "sae": kind, "implementation": implementation, "level": level,
                    "cosine": _mean(s.get(f"cosine_L{level}") for s in summaries),
                    "absorption": _mean(s.get(f"absorption_L{level}") for s in summaries),
                    "mean cosine (tree)": _mean(s["mean_matched_cosine"] for s in summaries),
                    "min cosine (tree)": _mean(s["min_matched_cosine"] for s in summaries),
                    "seeds": len(summaries),
                })
    return rows


def covered_by_level(evaluation: ToyEvaluation, tree: str) -> dict[int, float]:
    """The share of each level's parents that some latent covers (:data:`COVERED`), found without
    the matching: absorption reads the matched latent, and when a parent's latent is matched to
    one of its children the parent counts as absorbed though a latent follows it."""
    shape = FeatureTree(load_tree(tree))
    coverage = parent_coverage(evaluation.latent_acts, evaluation.true_acts, shape.parent_feature)
    levels: dict[int, list[bool]] = {}
    for parent, value in coverage.items():
        levels.setdefault(shape.feature_depth[parent], []).append(value >= COVERED)
    return {level: sum(flags) / len(flags) for level, flags in sorted(levels.items())}


def coverage_rows(results: dict[str, dict[int, dict[str, ToyEvaluation]]]) -> list[dict[str, Any]]:
    """One row per (tree, SAE) of msae's runs: the mean over seeds of the share of each level's
    parents covered by some latent (``covered L<d>``) beside their absorption (``absorption L<d>``)."""
    rows = []
    for tree, by_seed in results.items():
        for kind in SAE_KINDS:
            evaluations = [by_seed[seed][kind] for seed in by_seed]
            rows.append({"tree": tree, "sae": kind, **_level_columns(tree, evaluations)})
    return rows


def _level_columns(tree: str, evaluations: list[ToyEvaluation]) -> dict[str, float | None]:
    covered = [covered_by_level(e, tree) for e in evaluations]
    columns: dict[str, float | None] = {}
    for level in sorted(covered[0]):
        columns[f"absorption L{level}"] = _mean(e.absorption_by_depth.get(level) for e in evaluations)
        columns[f"covered L{level}"] = _mean(c[level] for c in covered)
    return columns


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of ``rows`` once, for printing: the per-level columns (``absorption L<d>``,
    ``covered L<d>``) by level, where the first row has them, wherever trees of different depths
    add them."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    levels = sorted((k for k in keys if k.startswith(("absorption L", "covered L"))),
                    key=lambda k: (int(k.rsplit("L", 1)[1]), k.startswith("covered")))
    first = next((i for i, k in enumerate(keys) if k in levels), len(keys))
    rest = [k for k in keys if k not in levels]
    return rest[:first] + levels + rest[first:]


def _summary(evaluation: ToyEvaluation | dict[str, float]) -> dict[str, float]:
    return evaluation if isinstance(evaluation, dict) else toy.summary(evaluation)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_variants(config: ToyExperimentConfig, trees: Sequence[str], seeds: Sequence[int], variants: Sequence[str],
                 runs_dir: str | Path, progress: bool = True) -> dict[str, dict[str, dict[int, ToyEvaluation]]]:
    """The Matryoshka toy SAE under each of ``variants`` (names in :data:`VARIANTS`) on each tree
    and seed: ``{variant: {tree: {seed: evaluation}}}``. Every config is checked before any trains."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    configs = {(v, tree): VARIANTS[v](replace(config, tree=tree)) for v in variants for tree in trees}
    for c in configs.values():
        toy.check_config(c)
    out: dict[str, dict[str, dict[int, ToyEvaluation]]] = {v: {} for v in variants}
    for (v, tree), c in configs.items():
        runs = toy.run(c, seeds, runs_dir, progress, kinds=("matryoshka",))
        out[v][tree] = {seed: by_kind["matryoshka"] for seed, by_kind in runs.items()}
    return out


def variant_rows(results: dict[str, dict[str, dict[int, ToyEvaluation]]]) -> list[dict[str, Any]]:
    """One row per (variant, tree): the mean over seeds of each level's parent absorption
    (``absorption L<d>``) and share of parents covered (``covered L<d>``, :func:`covered_by_level`),
    of the mean and min matched cosine, and of the latents that never fire on the evaluation
    samples (``dead``)."""
    rows = []
    for variant, by_tree in results.items():
        for tree, by_seed in by_tree.items():
            evaluations = list(by_seed.values())
            summaries = [toy.summary(e) for e in evaluations]
            row: dict[str, Any] = {"variant": variant, "tree": tree, **_level_columns(tree, evaluations)}
            row["mean cosine"] = _mean(s["mean_matched_cosine"] for s in summaries)
            row["min cosine"] = _mean(s["min_matched_cosine"] for s in summaries)
            row["dead"] = _mean(float((e.latent_acts > 0).sum(0).eq(0).sum()) for e in evaluations)
            row["seeds"] = len(evaluations)
            rows.append(row)
    return rows
