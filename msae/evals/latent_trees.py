"""Latent trees (the paper's App. F): which latent of a small dictionary each latent of the next
one refines.

The levels are dictionaries of increasing size: the groups of one Matryoshka SAE (group 1, then
group 2, ...), or a chain of separately trained SAEs (BatchTopK SAEs of 72, 216, ... latents).
For a candidate parent A in one level and a latent B in the next, the *directed masked cosine*

    sim(A <- B) = cos(a[M], b[M]) * max(b) / max(a),    M = the tokens where B is active,

is the cosine of their activations over B's tokens only (so A may fire elsewhere too: a parent is
more general than its child), scaled by the ratio of their largest activations over all tokens
(so a loud latent that fires weakly everywhere is not everyone's parent: the cosine of two
non-negative vectors is high whenever both are non-zero). It is directed: sim(A <- B) is not
sim(B <- A). Each latent of level l+1 hangs under its most similar latent of level l when that
similarity reaches the threshold (0.6 in the paper); the rest are unattached. Applied level by
level this gives a forest whose roots are the first level's latents.

Activations are scipy CSR matrices (tokens x latents): SAE codes are sparse (L0 of 40 in 2,304
latents), so the products below cost the number of co-active pairs, not tokens x P x C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

PAPER_THRESHOLD = 0.6


def encode_sparse(sae, x: torch.Tensor, chunk: int = 4096) -> sp.csr_matrix:
    """The SAE's inference code of ``x`` (n, d_in) as a float32 CSR matrix (n, d_sae)."""
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"expected activations of shape (n, {sae.d_in}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("the activations hold NaN or infinite values")
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            acts = sae.encode(x[start : start + chunk].to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu().numpy()
            parts.append(sp.csr_matrix(acts))
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, sae.d_sae), dtype=np.float32)


def directed_similarity(parents: sp.spmatrix, children: sp.spmatrix) -> np.ndarray:
    """``sim[a, b]`` = sim(parent a <- child b) of the module docstring, (P, C) float64.

    Args:
        parents: (n_tokens, P) non-negative activations of the candidate parents.
        children: (n_tokens, C) non-negative activations of the children, on the same tokens.
    A latent that never fires scores 0 with everything."""
    if parents.shape[0] != children.shape[0]:
        raise ValueError(f"parents and children are read on different tokens: {parents.shape[0]} vs {children.shape[0]}")
    a = sp.csc_matrix(parents, dtype=np.float64)
    b = sp.csc_matrix(children, dtype=np.float64)
    if (a.data < 0).any() or (b.data < 0).any():
        raise ValueError("latent activations must be non-negative")
    # b is zero off its mask, so the masked dot product is the plain one
    dot = (a.T @ b).toarray()
    child_mask = b.copy()
    child_mask.data = (child_mask.data > 0).astype(np.float64)
    parent_sq = a.multiply(a)
    parent_norm_on_mask = np.sqrt((parent_sq.T @ child_mask).toarray())  # ||a[M_b]|| for every (a, b)
    child_norm = np.sqrt(np.asarray(b.multiply(b).sum(axis=0))).ravel()
    parent_max = _column_max(a)
    child_max = _column_max(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = dot / (parent_norm_on_mask * child_norm[None, :])
        scale = child_max[None, :] / parent_max[:, None]
        sim = cosine * scale
    return np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)


def _column_max(m: sp.csc_matrix) -> np.ndarray:
    return np.asarray(m.max(axis=0).toarray()).ravel() if m.shape[0] else np.zeros(m.shape[1])


@dataclass(frozen=True)
class Node:
    """One latent in a tree.

    Attributes:
        level: its level, 0 for the smallest dictionary.
        latent: its index in that level's SAE (for a Matryoshka SAE, its index in the whole SAE).
    """

    level: int
    latent: int

    @property
    def key(self) -> str:
        return f"{self.level}:{self.latent}"

    @classmethod
    def from_key(cls, key: str) -> Node:
        level, latent = key.split(":")
        return cls(int(level), int(latent))


@dataclass
class LatentTree:
    """A forest over the latents of several levels.

    Attributes:
        levels: latent indices of each level, smallest dictionary first.
        parent: for each attached node of level >= 1, its parent (a node one level up).
        score: sim(parent <- node) of each attached node.
        threshold: the similarity a node needed to attach.
        level_names: a label per level (e.g. "group 2", "BatchTopK 216").
    """

    levels: list[list[int]]
    parent: dict[Node, Node]
    score: dict[Node, float]
    threshold: float
    level_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._children: dict[Node, list[Node]] = {}
        for child, parent in self.parent.items():
            self._children.setdefault(parent, []).append(child)
        for kids in self._children.values():
            kids.sort(key=lambda n: -self.score[n])

    def children(self, node: Node) -> list[Node]:
        """Attached nodes of the next level under ``node``, most similar first."""
        return self._children.get(node, [])

    def roots(self) -> list[Node]:
        return [Node(0, latent) for latent in self.levels[0]] if self.levels else []

    def descendants(self, node: Node) -> list[Node]:
        """Every node below ``node``, depth first."""
        out = []
        for child in self.children(node):
            out.append(child)
            out.extend(self.descendants(child))
        return out

    def depth(self, node: Node) -> int:
        """Levels below ``node`` in its subtree (0 for a leaf)."""
        return max((1 + self.depth(c) for c in self.children(node)), default=0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: node keys "level:latent"."""
        return {"levels": self.levels, "parent": {c.key: p.key for c, p in self.parent.items()},
                "score": {n.key: s for n, s in self.score.items()}, "threshold": self.threshold,
                "level_names": self.level_names}

    @classmethod
    def from_dict(cls, data: dict) -> LatentTree:
        return cls(data["levels"], {Node.from_key(c): Node.from_key(p) for c, p in data["parent"].items()},
                   {Node.from_key(n): float(s) for n, s in data["score"].items()}, float(data["threshold"]),
                   list(data["level_names"]))

    def level_rows(self) -> list[dict[str, object]]:
        """Per level from the second: how many latents attached, their share and mean score."""
        rows = []
        for level in range(1, len(self.levels)):
            attached = [Node(level, latent) for latent in self.levels[level] if Node(level, latent) in self.parent]
            n = len(self.levels[level])
            rows.append({
                "level": self.level_names[level] if self.level_names else level,
                "latents": n,
                "attached": len(attached),
                "attached share": len(attached) / n if n else float("nan"),
                "mean score": float(np.mean([self.score[a] for a in attached])) if attached else float("nan"),
                "parents used": len({self.parent[a] for a in attached}),
            })
        return rows


def build_tree(level_activations: Sequence[sp.spmatrix], level_latents: Sequence[Sequence[int]] | None = None,
               threshold: float = PAPER_THRESHOLD, level_names: Sequence[str] | None = None) -> LatentTree:
    """The forest over ``level_activations`` ((n_tokens, n_l) per level, all on the same tokens):
    each latent of level l+1 under its most similar latent of level l if sim >= ``threshold``.

    ``level_latents[l]`` names level l's columns (default ``range(n_l)``): a Matryoshka group's
    latents keep their index in the whole SAE."""
    if not level_activations:
        raise ValueError("a tree needs at least one level")
    n_tokens = level_activations[0].shape[0]
    if any(m.shape[0] != n_tokens for m in level_activations):
        raise ValueError("every level must be read on the same tokens")
    if level_latents is None:
        level_latents = [list(range(m.shape[1])) for m in level_activations]
    if len(level_latents) != len(level_activations) or any(len(ids) != m.shape[1] for ids, m in zip(level_latents, level_activations)):
        raise ValueError("level_latents must name every column of every level")
    if level_names is not None and len(level_names) != len(level_activations):
        raise ValueError(f"{len(level_names)} level names for {len(level_activations)} levels")
    parent, score = {}, {}
    for level in range(1, len(level_activations)):
        sim = directed_similarity(level_activations[level - 1], level_activations[level])
        if sim.shape[0] == 0:
            continue
        best = sim.argmax(axis=0)
        for column, latent in enumerate(level_latents[level]):
            s = float(sim[best[column], column])
            if s >= threshold:
                node = Node(level, int(latent))
                parent[node] = Node(level - 1, int(level_latents[level - 1][best[column]]))
                score[node] = s
    return LatentTree([list(map(int, ids)) for ids in level_latents], parent, score, threshold,
                      list(level_names) if level_names is not None else [])


def matryoshka_tree(codes: sp.spmatrix, prefix_ends: Sequence[int], threshold: float = PAPER_THRESHOLD) -> LatentTree:
    """The tree of one Matryoshka SAE: its groups are the levels (``prefix_ends``: the end of each
    prefix, the last being d_sae)."""
    codes = sp.csc_matrix(codes)
    if not prefix_ends or prefix_ends[-1] != codes.shape[1] or list(prefix_ends) != sorted(set(prefix_ends)):
        raise ValueError(f"prefix ends {list(prefix_ends)} must increase to the SAE's {codes.shape[1]} latents")
    starts = [0, *prefix_ends[:-1]]
    levels = [codes[:, s:e] for s, e in zip(starts, prefix_ends)]
    return build_tree(levels, [list(range(s, e)) for s, e in zip(starts, prefix_ends)], threshold,
                      [f"group {g + 1}" for g in range(len(levels))])
