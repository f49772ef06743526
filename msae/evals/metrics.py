"""Metrics on SAE activations and weights.

Reconstruction metrics follow SAEBench's definitions; the matching metrics compare an SAE
with the known features of synthetic data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from scipy.optimize import linear_sum_assignment


def l0(acts: torch.Tensor) -> float:
    """Mean number of non-zero latents per token; ``acts`` is (N, d_sae)."""
    return float((acts != 0).sum()) / acts.shape[0]


def variance_explained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - Var(x - x_hat) / Var(x)``, variances summed over the input dimensions, over the
    N tokens of (N, d_in) inputs."""
    x, x_hat = x.double(), x_hat.double()
    residual = x - x_hat
    unexplained = (residual - residual.mean(0)).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - unexplained / total)


def fraction_alive(acts: torch.Tensor) -> float:
    """Fraction of latents that fire on at least one of the N tokens of (N, d_sae) ``acts``."""
    return float((acts != 0).any(0).float().mean())


def unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def decoder_cosines(W_dec: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(d_sae, n_features) cosine of each decoder row with each true feature direction."""
    return unit_rows(W_dec.double()) @ unit_rows(directions.double()).T


class Matching(NamedTuple):
    """Latent ``latent_of_feature[j]`` is the one matched to true feature ``j``.

    Attributes:
        latent_of_feature: (n_features,) long, the latent matched to each feature.
        similarity: (d_sae, n_features) the activation similarity matched on.
    """

    latent_of_feature: torch.Tensor
    similarity: torch.Tensor


def match_latents(latent_acts: torch.Tensor, true_acts: torch.Tensor) -> Matching:
    """Assign one distinct latent to each true feature (Hungarian algorithm), maximising the
    summed cosine similarity between the latent's and the feature's activations over N samples.

    Args:
        latent_acts: (N, d_sae); true_acts: (N, n_features) with n_features <= d_sae.
    """
    if latent_acts.shape[0] != true_acts.shape[0]:
        raise ValueError("latent and true activations must cover the same samples")
    if true_acts.shape[1] > latent_acts.shape[1]:
        raise ValueError(f"cannot match {true_acts.shape[1]} features to {latent_acts.shape[1]} latents")
    similarity = unit_rows(latent_acts.double().T) @ unit_rows(true_acts.double().T).T  # (d_sae, n_feat)
    latents, features = linear_sum_assignment(similarity.numpy(), maximize=True)
    latent_of_feature = torch.empty(true_acts.shape[1], dtype=torch.long)
    latent_of_feature[torch.as_tensor(features)] = torch.as_tensor(latents)
    return Matching(latent_of_feature, similarity)


def matched_decoder_cosine(W_dec: torch.Tensor, directions: torch.Tensor, matching: Matching) -> torch.Tensor:
    """(n_features,) cosine of each true feature's direction with its matched decoder row."""
    cosines = decoder_cosines(W_dec, directions)
    features = torch.arange(directions.shape[0])
    return cosines[matching.latent_of_feature, features]


def _parent_samples(true_acts: torch.Tensor, parent_feature: list[int] | torch.Tensor):
    """For each parent feature: ``(parent, parent_on, child_on)``, (N,) masks of the samples where
    it is active and where one of its children is."""
    parent_feature = torch.as_tensor(parent_feature)
    for parent in sorted(set(parent_feature.tolist()) - {-1}):
        children = (parent_feature == parent).nonzero().flatten()
        yield parent, true_acts[:, parent] > 0, (true_acts[:, children] > 0).any(1)


def parent_absorption_counts(
    latent_acts: torch.Tensor,
    true_acts: torch.Tensor,
    parent_feature: list[int] | torch.Tensor,
    matching: Matching,
    min_fraction: float = 0.5,
) -> dict[int, tuple[int, int]]:
    """Per parent feature: ``(absorbed, together)``, the samples where it and one of its child
    features are active on which its matched latent does not fire, and all such samples.

    A parent latent "fires" on a sample if its activation reaches ``min_fraction`` of its median
    activation on samples where the parent is active with no child (its normal size).

    Args:
        latent_acts: (N, d_sae); true_acts: (N, n_features) 0/1.
        parent_feature: (n_features,) index of each feature's parent, or -1.
    """
    counts = {}
    for parent, parent_on, child_on in _parent_samples(true_acts, parent_feature):
        act = latent_acts[:, matching.latent_of_feature[parent]]
        alone = act[parent_on & ~child_on]
        if alone.numel() == 0:
            raise ValueError(f"no sample has parent feature {parent} active without a child")
        normal = alone.median()
        together = act[parent_on & child_on]
        if normal <= 0:  # the latent does not even fire for its parent alone
            absorbed = together.numel()
        else:
            absorbed = int((together < min_fraction * normal).sum())
        counts[parent] = (absorbed, together.numel())
    return counts


def parent_absorption_rate(
    latent_acts: torch.Tensor,
    true_acts: torch.Tensor,
    parent_feature: list[int] | torch.Tensor,
    matching: Matching,
    min_fraction: float = 0.5,
    parents: Sequence[int] | None = None,
) -> float:
    """How often a parent's matched latent fails to fire when the parent and a child are active:
    :func:`parent_absorption_counts` pooled over all (sample, parent) pairs, or over the
    ``parents`` given (e.g. those of one level of the tree)."""
    counts = parent_absorption_counts(latent_acts, true_acts, parent_feature, matching, min_fraction)
    chosen = [counts[p] for p in (counts if parents is None else parents)]
    total = sum(together for _, together in chosen)
    if total == 0:
        raise ValueError("no sample has a parent and one of its children active together")
    return sum(absorbed for absorbed, _ in chosen) / total


def parent_coverage(
    latent_acts: torch.Tensor,
    true_acts: torch.Tensor,
    parent_feature: list[int] | torch.Tensor,
    min_fraction: float = 0.5,
) -> dict[int, float]:
    """Per parent feature, without the matching: the best any one latent does at following the
    parent whatever its children do, ``max over latents of min(r_alone, r_with_child, precision)``:
    ``r_alone`` is how often the latent fires on the samples where the parent is active with no
    child, ``r_with_child`` on those where one of its children is active too, and ``precision``
    the share of the latent's firings where the parent is active (so an ancestor's latent, which
    fires on all of the parent's samples and more, does not count). "Fires" is the rule of
    :func:`parent_absorption_counts` (at least ``min_fraction`` of the latent's median on the
    parent-alone samples).

    Near 1: some latent is the parent's, whichever feature the matching gave it to. A parent
    split into latents for "parent or child 1", "parent or child 2", ... scores the largest
    child's share of the samples with a child; an absorbed parent 0.

    Args:
        latent_acts: (N, d_sae); true_acts: (N, n_features) 0/1.
        parent_feature: (n_features,) index of each feature's parent, or -1.
    """
    coverage = {}
    for parent, parent_on, child_on in _parent_samples(true_acts, parent_feature):
        alone = latent_acts[parent_on & ~child_on]
        if alone.shape[0] == 0 or not bool((parent_on & child_on).any()):
            raise ValueError(f"parent feature {parent} needs samples both with and without a child active")
        normal = alone.median(0).values  # (d_sae,)
        threshold = torch.where(normal > 0, min_fraction * normal, torch.inf)
        fires = latent_acts >= threshold  # (N, d_sae)
        r_alone = fires[parent_on & ~child_on].double().mean(0)
        r_with_child = fires[parent_on & child_on].double().mean(0)
        precision = fires[parent_on].double().sum(0) / fires.double().sum(0).clamp(min=1)
        coverage[parent] = float(torch.minimum(torch.minimum(r_alone, r_with_child), precision).max())
    return coverage


def mean_max_decoder_cosine(W_dec: torch.Tensor, block: int = 4096) -> float:
    """Mean over latents of the largest cosine between its decoder row and any other row.
    Computed ``block`` rows at a time, so wide dictionaries fit in memory."""
    unit = unit_rows(W_dec.float())
    best = []
    for start in range(0, unit.shape[0], block):
        cosines = unit[start : start + block] @ unit.T  # (block, d_sae)
        rows = torch.arange(cosines.shape[0])
        cosines[rows, rows + start] = -torch.inf  # not with itself
        best.append(cosines.max(1).values)
    return float(torch.cat(best).double().mean())
