"""Nested prefixes of a Matryoshka dictionary: group sizes, weights and random prefixes.

A Matryoshka SAE of width ``d_sae`` is split into groups of latents. Prefix ``i`` is the
first ``m_i`` latents, where ``m_i`` is the running total of the group sizes, so the last
prefix is always the whole dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

# The paper's split of the dictionary (SPEC §1): for 65,536 latents the prefixes are
# {2048, 6144, 14336, 30720, 65536}.
PAPER_GROUP_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)


def group_sizes_from_fractions(d_sae: int, fractions: Sequence[float]) -> list[int]:
    """Group sizes for ``d_sae`` latents: ``int(f * d_sae)`` for all but the last group,
    which takes the remainder so the sizes always sum to ``d_sae``."""
    if not fractions:
        raise ValueError("group fractions must not be empty")
    if any(f <= 0 for f in fractions):
        raise ValueError(f"group fractions must all be positive, got {list(fractions)}")
    total = sum(fractions)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"group fractions must sum to 1, got {list(fractions)} (sum {total:.6f})")
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    validate_group_sizes(sizes, d_sae)
    return sizes


def validate_group_sizes(group_sizes: Sequence[int], d_sae: int) -> None:
    """Raise ``ValueError`` saying what is wrong unless the sizes are positive integers
    that sum to ``d_sae``."""
    sizes = list(group_sizes)
    if not sizes:
        raise ValueError("group_sizes must not be empty")
    bad = [s for s in sizes if not isinstance(s, int) or isinstance(s, bool) or s <= 0]
    if bad:
        raise ValueError(f"group sizes must be positive integers; got {bad} in {sizes}")
    if sum(sizes) != d_sae:
        raise ValueError(
            f"group sizes {sizes} sum to {sum(sizes)}, but the dictionary has d_sae={d_sae} latents"
        )


def prefix_ends(group_sizes: Sequence[int]) -> list[int]:
    """Running totals of the group sizes: the width of each prefix, e.g. [2,4,10] -> [2,6,16]."""
    ends, total = [], 0
    for size in group_sizes:
        total += size
        ends.append(total)
    return ends


def group_weights(kind: Literal["uniform", "size"] | Sequence[float], group_sizes: Sequence[int]) -> list[float]:
    """Weight of each prefix's reconstruction loss.

    ``"uniform"``: 1/G each (the paper's default); ``"size"``: proportional to the group's
    size (the weighted-loss ablation); or an explicit list of G non-negative weights.
    """
    n = len(group_sizes)
    if isinstance(kind, str):
        if kind == "uniform":
            return [1.0 / n] * n
        if kind == "size":
            total = sum(group_sizes)
            return [s / total for s in group_sizes]
        raise ValueError(f"unknown group weighting {kind!r}; use 'uniform', 'size' or a list of weights")
    weights = [float(w) for w in kind]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} group weights for {n} groups")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"group weights must be non-negative and not all zero, got {weights}")
    return weights


def pareto_prefix_probabilities(d_sae: int, exponent: float = 0.5) -> torch.Tensor:
    """Probability of each prefix length ``m = 1 .. d_sae - 1`` under a truncated Pareto law:
    ``P(m) ∝ m**a - (m-1)**a`` with ``a = exponent``, so short prefixes are likelier.

    Returns a (d_sae - 1,) tensor; entry ``j`` is the probability of length ``j + 1``.
    """
    if not 0 < exponent < 1:
        raise ValueError(f"pareto exponent must be in (0, 1), got {exponent}")
    m = torch.arange(d_sae, dtype=torch.float64)  # 0 .. d_sae-1
    cdf = m.pow(exponent)
    pmf = cdf[1:] - cdf[:-1]
    return pmf / pmf.sum()


def sample_prefix_ends(
    d_sae: int, n_prefixes: int, generator: torch.Generator, exponent: float = 0.5
) -> list[int]:
    """Sample ``n_prefixes`` distinct, increasing prefix widths; the last is always ``d_sae``.

    The other ``n_prefixes - 1`` widths are drawn without replacement from
    :func:`pareto_prefix_probabilities`.
    """
    if not 1 <= n_prefixes <= d_sae:
        raise ValueError(f"n_prefixes must be between 1 and d_sae={d_sae}, got {n_prefixes}")
    if n_prefixes == 1:
        return [d_sae]
    probs = pareto_prefix_probabilities(d_sae, exponent)
    drawn = torch.multinomial(probs, n_prefixes - 1, replacement=False, generator=generator) + 1
    return sorted(drawn.tolist()) + [d_sae]
