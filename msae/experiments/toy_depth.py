"""The toy model beyond two levels (notebook 19): vanilla and Matryoshka SAEs on trees of depth
2, 3 and 4 (``msae.data.toy.hierarchy_tree``), several seeds each, with the matched cosine and
the parent absorption of every level, beside the paper authors' reference toy code run on the
same trees, seeds and batches (:mod:`msae.experiments.toy_reference`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.toy import FeatureTree, load_tree
from . import toy
from .toy import SAE_KINDS, ToyEvaluation, ToyExperimentConfig

DEPTH_TREES = ("depth2", "depth3", "depth4")


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


def _summary(evaluation: ToyEvaluation | dict[str, float]) -> dict[str, float]:
    return evaluation if isinstance(evaluation, dict) else toy.summary(evaluation)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
