"""The toy-model experiment (paper Figs 2, 3, 11): a vanilla and a Matryoshka L1 SAE trained
on hierarchical toy data, then matched to the true features.

Its profiles are in ``msae.experiments.profiles``: ``paper`` and ``default`` are the paper's
setup (cheap enough for a CPU); ``smoke`` exercises the same code in seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.toy import FeatureTree, ToyData, load_tree
from ..evals import metrics
from ..saes.base import SparseAutoencoder
from ..saes.l1 import L1SAE, L1Config
from ..training.loop import TrainConfig, train
from .report import format_table


@dataclass
class ToyExperimentConfig:
    tree: str | dict = "paper"  # a name in msae.toy.NAMED_TREES, a JSON path, or a tree dict
    d_model: int | None = None  # None: one dimension per feature
    steps: int = 40_000
    batch_size: int = 200
    lr: float = 3e-2
    betas: tuple[float, float] = (0.5, 0.9375)
    warmup_steps: int = 100
    n_prefixes: int = 10  # sampled per batch by the Matryoshka SAE
    target_l0: float | None = None  # None: the tree's expected L0
    l1_warmup_fraction: float = 0.2
    seed: int = 0
    eval_samples: int = 20_000

    def run_name(self) -> str:
        """A short stable hash of the config: changing any parameter gives a new run folder."""
        text = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


SAE_KINDS = ("vanilla", "matryoshka")


def make_data(config: ToyExperimentConfig) -> ToyData:
    tree = FeatureTree(load_tree(config.tree))
    return ToyData(tree, d_model=config.d_model, batch_size=config.batch_size, seed=config.seed)


def make_sae(kind: str, config: ToyExperimentConfig, data: ToyData) -> L1SAE:
    """The vanilla SAE has one prefix (the whole dictionary); the Matryoshka SAE samples
    ``n_prefixes`` per batch and keeps its latents sorted by use, as in the original toy code."""
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; choose one of {SAE_KINDS}")
    matryoshka = kind == "matryoshka"
    target = config.target_l0 if config.target_l0 is not None else data.tree.expected_l0()
    return L1SAE(
        L1Config(
            d_in=data.d_model,
            d_sae=data.tree.n_features,
            target_l0=target,
            l1_warmup_steps=int(config.l1_warmup_fraction * config.steps),
            n_prefixes=config.n_prefixes if matryoshka else 1,
            sort_latents=matryoshka,
            seed=config.seed,
        )
    )


def train_config(config: ToyExperimentConfig, d_model: int) -> TrainConfig:
    """Inputs are scaled to E||x||^2 = d_model, the scale the original toy code trained at (its
    learning rate and L1 start value assume it)."""
    return TrainConfig(
        normalized_sq_norm=float(d_model),
        steps=config.steps,
        lr=config.lr,
        betas=config.betas,
        warmup_steps=config.warmup_steps,
        decay_fraction=0.2,
        final_lr_fraction=0.1,
        checkpoint_every=max(1, config.steps // 10),
        log_every=max(1, config.steps // 200),
    )


def train_toy_saes(
    config: ToyExperimentConfig, runs_dir: str | Path, progress: bool = True
) -> dict[str, SparseAutoencoder]:
    """Train (or reload, if already trained) both SAEs under ``runs_dir/toy/<run name>/``."""
    run_dir = Path(runs_dir) / "toy" / config.run_name()
    saes = {}
    for kind in SAE_KINDS:
        data = make_data(config)  # each SAE sees the same stream of batches
        result = train(make_sae(kind, config, data), data, train_config(config, data.d_model), run_dir / kind, progress, kind)
        saes[kind] = result.sae.eval()
    return saes


class ToyEvaluation(NamedTuple):
    true_acts: torch.Tensor  # (N, n_features) 0/1
    latent_acts: torch.Tensor  # (N, d_sae) activation times decoder-row norm: the term's size
    x: torch.Tensor  # (N, d_model)
    matching: metrics.Matching
    matched_cosine: torch.Tensor  # (n_features,)
    decoder_cosine: torch.Tensor  # (n_features, n_features): matched decoder rows x true features
    parent_absorption: float
    l0: float
    variance_explained: float


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, data: ToyData, n_samples: int, seed: int = 12345) -> ToyEvaluation:
    """Match the SAE's latents to the true features on fresh samples and measure it."""
    true_acts, x = data.sample(n_samples, torch.Generator().manual_seed(seed))
    codes = sae.encode(x)
    latent_acts = codes * sae.W_dec.norm(dim=1)
    matching = metrics.match_latents(latent_acts, true_acts)
    cosines = metrics.decoder_cosines(sae.W_dec, data.directions)  # (d_sae, n_features)
    return ToyEvaluation(
        true_acts=true_acts,
        latent_acts=latent_acts,
        x=x,
        matching=matching,
        matched_cosine=metrics.matched_decoder_cosine(sae.W_dec, data.directions, matching),
        decoder_cosine=cosines[matching.latent_of_feature],
        parent_absorption=metrics.parent_absorption_rate(latent_acts, true_acts, data.tree.parent_feature, matching),
        l0=metrics.l0(codes),
        variance_explained=metrics.variance_explained(x, sae.decode(codes)),
    )


def summary(evaluation: ToyEvaluation) -> dict[str, float]:
    """The key numbers of one SAE, rounded for printing and for comparing runs."""
    return {
        "mean_matched_cosine": round(float(evaluation.matched_cosine.mean()), 3),
        "min_matched_cosine": round(float(evaluation.matched_cosine.min()), 3),
        "parent_absorption_rate": round(evaluation.parent_absorption, 3),
        "l0": round(evaluation.l0, 3),
        "variance_explained": round(evaluation.variance_explained, 3),
    }


def run(
    config: ToyExperimentConfig, seeds: list[int], runs_dir: str | Path, progress: bool = True
) -> dict[int, dict[str, ToyEvaluation]]:
    """Train (or reload) both SAEs for every seed and evaluate them: ``{seed: {kind: evaluation}}``."""
    evaluations = {}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        data = make_data(seeded)
        saes = train_toy_saes(seeded, runs_dir, progress)
        evaluations[seed] = {kind: evaluate(sae, data, config.eval_samples) for kind, sae in saes.items()}
    return evaluations


def median_seed(evaluations: dict[int, dict[str, ToyEvaluation]]) -> int:
    """The seed whose Matryoshka SAE has the median mean matched cosine (the lower median for an
    even count): a representative run, chosen by a fixed rule."""
    ranked = sorted(evaluations, key=lambda s: (float(evaluations[s]["matryoshka"].matched_cosine.mean()), s))
    return ranked[(len(ranked) - 1) // 2]


def summary_table(evaluations: dict[int, dict[str, ToyEvaluation]]) -> str:
    """One line per (SAE, seed) and the mean over seeds."""
    rows = []
    for kind in SAE_KINDS:
        per_seed = [{"sae": kind, "seed": seed, **summary(evaluations[seed][kind])} for seed in evaluations]
        columns = list(summary(evaluations[next(iter(evaluations))][kind]))
        mean = {c: sum(r[c] for r in per_seed) / len(per_seed) for c in columns}
        rows += per_seed + [{"sae": kind, "seed": "mean", **mean}]
    return format_table(rows, ["sae", "seed", *columns])
