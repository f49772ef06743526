"""The toy-model experiment (paper Figs 2, 3, 11): a vanilla and a Matryoshka L1 SAE trained
on hierarchical toy data, then matched to the true features.

Its profiles are in ``msae.experiments.profiles``: ``paper`` and ``default`` are the paper's
setup (cheap enough for a CPU); ``smoke`` exercises the same code in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.toy import FeatureNode, FeatureTree, ToyData, load_tree
from ..evals import metrics
from ..saes.base import SparseAutoencoder
from ..saes.l1 import L1SAE, L1Config
from ..training.loop import TrainConfig, train
from .report import format_table


@dataclass
class ToyExperimentConfig:
    """The toy experiment: the tree, the SAEs' training and the evaluation (profiles in
    ``msae.experiments.profiles``; the defaults are the paper's setup).

    Attributes:
        tree: a name in ``msae.data.toy.NAMED_TREES``, the path of a JSON tree, or a tree dict.
        d_model: the input dimension; None: one dimension per feature.
        steps: training steps of each SAE.
        batch_size: samples per batch.
        lr: Adam's learning rate.
        betas: Adam's betas.
        warmup_steps: linear warm-up steps of the learning rate.
        n_prefixes: prefixes the Matryoshka SAE samples per batch.
        target_l0: the L0 the L1 coefficient steers to; None: the tree's expected L0.
        l1_warmup_fraction: the fraction of steps over which the L1 penalty ramps up.
        seed: the seed of the data and the SAEs (``run`` replaces it per seed).
        eval_samples: fresh samples the SAEs are evaluated on.
        latents_per_feature: the SAEs' latents per true feature (the paper: 1).
        sort_latents: whether the Matryoshka SAE keeps its latents sorted by use (the paper: yes).
        pareto_exponent: the exponent of the truncated Pareto law the Matryoshka SAE draws its
            prefix ends from (the paper's 0.5; towards 1 the law becomes uniform).
    """

    tree: str | dict = "paper"
    d_model: int | None = None
    steps: int = 40_000
    batch_size: int = 200
    lr: float = 3e-2
    betas: tuple[float, float] = (0.5, 0.9375)
    warmup_steps: int = 100
    n_prefixes: int = 10
    target_l0: float | None = None
    l1_warmup_fraction: float = 0.2
    seed: int = 0
    eval_samples: int = 20_000
    latents_per_feature: int = 1
    sort_latents: bool = True
    pareto_exponent: float = 0.5

    def run_name(self) -> str:
        """A short stable hash of the config: changing any parameter, or the tree's content (a
        JSON file edited in place included), gives a new run folder. Fields added after runs were
        cached leave the hash alone at their default, so those runs are still found."""
        fields = {**asdict(self), "tree": tree_key(self.tree)}
        for name, default in _UNHASHED_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        text = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


_UNHASHED_DEFAULTS = {"latents_per_feature": 1, "sort_latents": True, "pareto_exponent": 0.5}

# sha256 of the paper tree's content (sorted-key JSON of paper_tree().to_dict()) when run names
# hashed the tree spec itself, i.e. the name "paper": that content keeps hashing as "paper", so
# runs of the default tree made then are still found. Edit paper_tree() and this stops matching.
_PAPER_TREE_SHA256 = "2cfb52212d1caa8ed707dea180bbd9d529230263a26d2399e5fc1e9eb08565fb"


def tree_key(spec: str | dict | FeatureNode) -> str | dict:
    """What a run name hashes for the tree: its parsed content, not its name or path, so the same
    tree keys the same run however it is given and an edited file keys a new one."""
    content = load_tree(spec).to_dict()
    if hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest() == _PAPER_TREE_SHA256:
        return "paper"
    return content


SAE_KINDS = ("vanilla", "matryoshka")


# below this an event counts as impossible (the tolerance FeatureTree allows on probability sums)
_IMPOSSIBLE = 1e-9
# a parent's latent's normal size is the median over the samples where it fires alone: want a few
_MIN_EXPECTED_ALONE = 5


def check_config(config: ToyExperimentConfig) -> None:
    """Raise ``ValueError`` for a config whose run would fail only after training: checked before
    any, so a bad tree costs nothing. The evaluation measures parent absorption, which needs every
    parent feature to fire sometimes without its children and some to fire with one."""
    tree = FeatureTree(load_tree(config.tree))  # bad probabilities, keys or sums > 1
    if config.latents_per_feature < 1:
        raise ValueError(f"latents_per_feature must be >= 1, got {config.latents_per_feature}")
    d_sae = sae_width(config)
    if config.n_prefixes > d_sae:
        raise ValueError(
            f"n_prefixes={config.n_prefixes} but the SAEs have {d_sae} latents ({config.latents_per_feature} per "
            f"feature of the tree's {tree.n_features}): at most {d_sae} prefixes (lower n_prefixes or grow the tree)"
        )
    pairs = tree.parent_alone_probabilities()
    if not pairs:
        raise ValueError("the tree has no parent feature (a read-out node with read-out descendants): "
                         "the toy experiment measures how children absorb their parents")
    node_of_feature = {f: n for n, f in enumerate(tree.node_feature) if f >= 0}
    for feature, (alone, _) in pairs.items():
        if alone > _IMPOSSIBLE:
            continue
        node = node_of_feature[feature]
        why = "its child features' active_prob leave it no chance to fire alone"
        if node in tree.group_parent:
            children = [c for c, parent in enumerate(tree.node_parent) if parent == node]
            total = sum(tree.node_prob[c] for c in children)
            why = (f"its mutually exclusive children's active_prob sum to {total:.4g}; keep the sum below 1, "
                   "or add a child with is_read_out false for 'no child'")
        raise ValueError(f"parent feature {tree.feature_names[feature]!r} at {tree.node_path[node]} never fires "
                         f"without a child feature, so its absorption cannot be measured: {why}")
    for feature, (alone, _) in pairs.items():
        if alone * config.eval_samples < _MIN_EXPECTED_ALONE:
            raise ValueError(
                f"parent feature {tree.feature_names[feature]!r} fires without a child feature with probability "
                f"{alone:.3g}: about {alone * config.eval_samples:.1f} times in eval_samples={config.eval_samples}, too few "
                f"to measure its latent's normal size (want >= {_MIN_EXPECTED_ALONE}); raise eval_samples or its active_prob")
    if all(together <= _IMPOSSIBLE for _, together in pairs.values()):
        raise ValueError("no parent feature of the tree ever fires together with a child feature "
                         "(their active_prob are 0), so absorption cannot be measured")
    data = make_data(config)  # d_model too small for the features
    for kind in SAE_KINDS:
        make_sae(kind, config, data)  # the SAE configs' own checks, e.g. target_l0 <= d_sae


def make_data(config: ToyExperimentConfig) -> ToyData:
    tree = FeatureTree(load_tree(config.tree))
    return ToyData(tree, d_model=config.d_model, batch_size=config.batch_size, seed=config.seed)


def sae_width(config: ToyExperimentConfig) -> int:
    """The SAEs' number of latents: ``latents_per_feature`` per feature of the tree."""
    return config.latents_per_feature * FeatureTree(load_tree(config.tree)).n_features


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = [kind for kind in kinds if kind not in SAE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {SAE_KINDS}, got {list(kinds)}")


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
            d_sae=config.latents_per_feature * data.tree.n_features,  # sae_width without reloading the tree
            target_l0=target,
            l1_warmup_steps=int(config.l1_warmup_fraction * config.steps),
            n_prefixes=config.n_prefixes if matryoshka else 1,
            pareto_exponent=config.pareto_exponent,
            sort_latents=matryoshka and config.sort_latents,
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
    config: ToyExperimentConfig, runs_dir: str | Path, progress: bool = True, kinds: Sequence[str] = SAE_KINDS
) -> dict[str, SparseAutoencoder]:
    """Train (or reload, if already trained) the SAEs of ``kinds`` (both by default) under
    ``runs_dir/toy/<run name>/``."""
    check_config(config)  # the Matryoshka SAE's config would otherwise fail after the vanilla one trained
    _check_kinds(kinds)
    run_dir = Path(runs_dir) / "toy" / config.run_name()
    saes = {}
    for kind in kinds:
        data = make_data(config)  # each SAE sees the same stream of batches
        result = train(make_sae(kind, config, data), data, train_config(config, data.d_model), run_dir / kind, progress, kind)
        saes[kind] = result.sae.eval()
    return saes


class ToyEvaluation(NamedTuple):
    """One SAE matched to the true features on fresh samples.

    Attributes:
        true_acts: (N, n_features) which true features are active (0/1).
        latent_acts: (N, d_sae) each latent's activation times its decoder-row norm: the size of its term.
        x: (N, d_model) the samples.
        matching: the assignment of latents to true features.
        matched_cosine: (n_features,) cosine of each feature's matched decoder row with its direction.
        decoder_cosine: (n_features, n_features) matched decoder rows against the true directions.
        parent_absorption: the rate at which a parent's latent is silent while one of its children fires.
        absorption_by_depth: that rate pooled over the parents of each level (0: top-level parents,
            absorbed by their children; 1: children absorbed by grandchildren; ...).
        feature_depth: (n_features,) each feature's level in the tree (``FeatureTree.feature_depth``).
        l0: mean active latents per sample.
        variance_explained: of the samples by the SAE's reconstruction.
    """

    true_acts: torch.Tensor
    latent_acts: torch.Tensor
    x: torch.Tensor
    matching: metrics.Matching
    matched_cosine: torch.Tensor
    decoder_cosine: torch.Tensor
    parent_absorption: float
    absorption_by_depth: dict[int, float]
    feature_depth: list[int]
    l0: float
    variance_explained: float

    def cosine_by_depth(self) -> dict[int, float]:
        """Mean matched cosine of the features of each level."""
        depth = torch.tensor(self.feature_depth)
        return {d: float(self.matched_cosine[depth == d].mean()) for d in sorted(set(self.feature_depth))}


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, data: ToyData, n_samples: int, seed: int = 12345) -> ToyEvaluation:
    """Match the SAE's latents to the true features on fresh samples and measure it."""
    true_acts, x = data.sample(n_samples, torch.Generator().manual_seed(seed))
    codes = sae.encode(x)
    latent_acts = codes * sae.W_dec.norm(dim=1)
    matching = metrics.match_latents(latent_acts, true_acts)
    cosines = metrics.decoder_cosines(sae.W_dec, data.directions)  # (d_sae, n_features)
    tree = data.tree
    parents = sorted(set(tree.parent_feature) - {-1})
    by_depth = {
        depth: metrics.parent_absorption_rate(latent_acts, true_acts, tree.parent_feature, matching,
                                              parents=[p for p in parents if tree.feature_depth[p] == depth])
        for depth in sorted({tree.feature_depth[p] for p in parents})
    }
    return ToyEvaluation(
        true_acts=true_acts,
        latent_acts=latent_acts,
        x=x,
        matching=matching,
        matched_cosine=metrics.matched_decoder_cosine(sae.W_dec, data.directions, matching),
        decoder_cosine=cosines[matching.latent_of_feature],
        parent_absorption=metrics.parent_absorption_rate(latent_acts, true_acts, tree.parent_feature, matching),
        absorption_by_depth=by_depth,
        feature_depth=list(tree.feature_depth),
        l0=metrics.l0(codes),
        variance_explained=metrics.variance_explained(x, sae.decode(codes)),
    )


def summary(evaluation: ToyEvaluation) -> dict[str, float]:
    """The key numbers of one SAE, rounded for printing and for comparing runs, pooled and per level
    of the tree: ``cosine_L<d>`` (mean matched cosine of level d's features, 0 the top level) and
    ``absorption_L<d>`` (the absorption of level d's parents by their children)."""
    out = {
        "mean_matched_cosine": round(float(evaluation.matched_cosine.mean()), 3),
        "min_matched_cosine": round(float(evaluation.matched_cosine.min()), 3),
        "parent_absorption_rate": round(evaluation.parent_absorption, 3),
        "l0": round(evaluation.l0, 3),
        "variance_explained": round(evaluation.variance_explained, 3),
    }
    out.update({f"cosine_L{d}": round(c, 3) for d, c in evaluation.cosine_by_depth().items()})
    out.update({f"absorption_L{d}": round(a, 3) for d, a in evaluation.absorption_by_depth.items()})
    return out


def run(
    config: ToyExperimentConfig, seeds: list[int], runs_dir: str | Path, progress: bool = True,
    kinds: Sequence[str] = SAE_KINDS,
) -> dict[int, dict[str, ToyEvaluation]]:
    """Train (or reload) the SAEs of ``kinds`` (both by default) for every seed and evaluate them:
    ``{seed: {kind: evaluation}}``."""
    seeds = list(seeds)
    if not seeds:  # the tables and plots of an empty result fail far from the cause
        raise ValueError("seeds is empty: give at least one seed to train and evaluate")
    check_config(config)  # before the first seed trains, not after
    evaluations = {}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        data = make_data(seeded)
        saes = train_toy_saes(seeded, runs_dir, progress, kinds)
        evaluations[seed] = {kind: evaluate(sae, data, config.eval_samples) for kind, sae in saes.items()}
    return evaluations


def median_seed(evaluations: dict[int, dict[str, ToyEvaluation]]) -> int:
    """The seed whose Matryoshka SAE has the median mean matched cosine (the lower median for an
    even count): a representative run, chosen by a fixed rule."""
    ranked = sorted(evaluations, key=lambda s: (float(evaluations[s]["matryoshka"].matched_cosine.mean()), s))
    return ranked[(len(ranked) - 1) // 2]


def mean_summary(evaluations: dict[int, dict[str, ToyEvaluation]], kind: str) -> dict[str, float]:
    """The mean over seeds of each key number of :func:`summary`, for the SAE ``kind``."""
    per_seed = [summary(evaluations[seed][kind]) for seed in evaluations]
    return {c: sum(s[c] for s in per_seed) / len(per_seed) for c in per_seed[0]}


def summary_table(evaluations: dict[int, dict[str, ToyEvaluation]]) -> str:
    """One line per (SAE, seed) and the mean over seeds."""
    rows = []
    for kind in SAE_KINDS:
        rows += [{"sae": kind, "seed": seed, **summary(evaluations[seed][kind])} for seed in evaluations]
        rows.append({"sae": kind, "seed": "mean", **mean_summary(evaluations, kind)})
    columns = list(summary(evaluations[next(iter(evaluations))][SAE_KINDS[0]]))
    return format_table(rows, ["sae", "seed", *columns])
