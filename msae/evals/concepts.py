"""Judge-free interpretability: latents scored against known per-token concepts, and the
analysis behind the Fig 4 analogue (a general latent, its holes, and the latents that fill them).

Inputs throughout:

- ``acts``: (n_tokens, d_sae) latent activations (dense, or a torch sparse COO/CSR tensor);
  a latent *fires* on a token where its activation is above ``threshold`` (default 0).
- ``concepts``: (n_tokens, n_concepts) bool, ``concepts[t, c]`` when token t belongs to
  concept c (for example "is a female word", "is the name Lily"); ``concept_mask`` is one
  such (n_tokens,) column.

The F1 of latent i against concept c treats "i fires" as a classifier for c:
``F1 = 2 TP / (n_fires + n_concept)``, with ``TP`` the tokens where both hold. All latents
and concepts at once, this is one matrix product ``fires.T @ concepts`` accumulated over
chunks of tokens (:class:`ConceptCounts`), so (1e5 tokens) x (2e4 latents) x (100 concepts)
never needs more than a chunk of the firing matrix in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

# Chunks of ~2^24 firing entries: 64 MiB as float32, and small enough that a chunk's counts
# are exact integers in float32 (below 2^24).
_CHUNK_ENTRIES = 1 << 24


class ConceptCounts:
    """Running counts for concept F1, fed one chunk of tokens at a time.

    ``true_positives (d_sae, n_concepts)``: tokens where the latent fires and the concept
    holds; ``fires (d_sae,)`` and ``concept_sizes (n_concepts,)``: token counts; int64.
    """

    def __init__(self, d_sae: int, n_concepts: int, threshold: float = 0.0):
        self.threshold = threshold
        self.true_positives = torch.zeros(d_sae, n_concepts, dtype=torch.long)
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.concept_sizes = torch.zeros(n_concepts, dtype=torch.long)
        self.n_tokens = 0

    def update(self, acts: torch.Tensor, concepts: torch.Tensor) -> None:
        """Add a chunk: ``acts`` (n, d_sae) dense or sparse, ``concepts`` (n, n_concepts)."""
        _check_pair(acts, concepts, self.fires.shape[0], self.concept_sizes.shape[0])
        if acts.layout == torch.strided:
            members = concepts.to(torch.float32)  # (n, n_concepts)
            step = max(1, _CHUNK_ENTRIES // max(1, acts.shape[1]))
            for start in range(0, acts.shape[0], step):
                chunk = acts[start : start + step]
                _check_finite(chunk)
                fired = (chunk > self.threshold).to(torch.float32)  # (chunk, d_sae)
                true_positives = fired.T @ members[start : start + step].to(fired.device)  # (d_sae, n_concepts)
                self.true_positives += true_positives.round().long().cpu()
                self.fires += fired.sum(0).round().long().cpu()
        else:
            self._add_sparse(acts, concepts)
        self.concept_sizes += concepts.sum(0).long().cpu()
        self.n_tokens += acts.shape[0]

    def _add_sparse(self, acts: torch.Tensor, concepts: torch.Tensor) -> None:
        if self.threshold < 0:  # unstored zeros would fire too
            raise ValueError("sparse acts need threshold >= 0")
        coo = acts.to_sparse_coo().coalesce()
        values = coo.values()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("acts contain NaN or inf")
        tokens, latents = coo.indices()[:, values > self.threshold]  # the entries that fire
        fired_t = torch.sparse_coo_tensor(torch.stack([latents, tokens]), torch.ones_like(tokens, dtype=torch.float64),
                                          (acts.shape[1], acts.shape[0]), check_invariants=False)  # (d_sae, n)
        true_positives = torch.sparse.mm(fired_t, concepts.to(values.device, torch.float64))  # (d_sae, n_concepts)
        self.true_positives += true_positives.round().long().cpu()
        self.fires += torch.bincount(latents, minlength=acts.shape[1]).cpu()

    def f1(self) -> torch.Tensor:
        """(d_sae, n_concepts) float64 F1 of each latent against each concept (0 where a
        latent never fires and the concept is empty)."""
        denominator = (self.fires[:, None] + self.concept_sizes[None, :]).double()
        return torch.where(denominator > 0, 2 * self.true_positives.double() / denominator.clamp_min(1), 0.0)


class BestConcept(NamedTuple):
    """Each latent's best concept (:func:`concept_f1`).

    Attributes:
        f1: (d_sae,) float64, the best F1 of each latent over the concepts.
        concept: (d_sae,) long, the concept reaching it (the lowest index on ties); -1 where
            that F1 is 0.
    """

    f1: torch.Tensor
    concept: torch.Tensor


def concept_f1(acts: torch.Tensor, concepts: torch.Tensor, threshold: float = 0.0) -> BestConcept:
    """For each latent, its best F1 over the concepts and which concept gives it.

    ``acts`` (n_tokens, d_sae), dense or sparse; ``concepts`` (n_tokens, n_concepts) bool.
    For activations too large to hold at once, feed chunks to :class:`ConceptCounts` and
    call :func:`best_concept` on its ``f1()``."""
    _check_pair(acts, concepts)
    counts = ConceptCounts(acts.shape[1], concepts.shape[1], threshold)
    counts.update(acts, concepts)
    return best_concept(counts.f1())


def concept_f1_from_chunks(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], d_sae: int, n_concepts: int,
                           threshold: float = 0.0) -> BestConcept:
    """:func:`concept_f1` over a stream of (acts, concepts) chunks, e.g. encoded batch by batch."""
    counts = ConceptCounts(d_sae, n_concepts, threshold)
    for acts, concepts in chunks:
        counts.update(acts, concepts)
    return best_concept(counts.f1())


def best_concept(f1: torch.Tensor) -> BestConcept:
    """Row-wise best of a (d_sae, n_concepts) F1 matrix."""
    best_f1, best = f1.max(1).values, f1.argmax(1)  # argmax: the first maximum on ties
    return BestConcept(best_f1, torch.where(best_f1 > 0, best, -1))


def interpretability_summary(best_f1: torch.Tensor, alive_mask: torch.Tensor, cutoff: float = 0.5) -> dict[str, float]:
    """Mean best F1 over the alive latents, and the fraction of them whose best F1 is above
    ``cutoff``. ``best_f1`` and ``alive_mask`` are (d_sae,)."""
    if best_f1.shape != alive_mask.shape or best_f1.dim() != 1:
        raise ValueError(f"best_f1 {tuple(best_f1.shape)} and alive_mask {tuple(alive_mask.shape)} "
                         "must both be (d_sae,)")
    alive = best_f1[alive_mask.bool()].double()
    if alive.numel() == 0:
        raise ValueError("no latent is alive")
    return {"mean_f1": float(alive.mean()), "fraction_above": float((alive > cutoff).double().mean()),
            "cutoff": cutoff, "n_alive": alive.numel()}


# --- Fig 4: a general latent with holes --------------------------------------------------


class GeneralLatent(NamedTuple):
    """The latent that best matches a general concept (:func:`general_latent`).

    Attributes:
        latent: its index.
        f1: its F1 against the concept.
        precision: of the tokens it fires on, the fraction in the concept.
        recall: of the concept's tokens, the fraction it fires on.
    """

    latent: int
    f1: float
    precision: float
    recall: float


def general_latent(acts: torch.Tensor, concept_mask: torch.Tensor, threshold: float = 0.0) -> GeneralLatent:
    """The latent whose firing best matches a general concept (best F1), e.g. every female
    name, pronoun and role word."""
    mask = _check_mask(acts, concept_mask)
    if not bool(mask.any()):
        raise ValueError("concept_mask selects no token")
    counts = ConceptCounts(acts.shape[1], 1, threshold)
    counts.update(acts, mask[:, None])
    f1 = counts.f1()[:, 0]
    latent = int(f1.argmax())
    hits, fires, size = int(counts.true_positives[latent, 0]), int(counts.fires[latent]), int(mask.sum())
    return GeneralLatent(latent, float(f1[latent]), hits / fires if fires else 0.0, hits / size)


def holes(acts: torch.Tensor, latent: int, concept_mask: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Token indices (sorted, long) of the concept where ``latent`` is silent."""
    mask = _check_mask(acts, concept_mask)
    _check_latent(acts, latent)
    return (mask.to(acts.device) & ~(_column(acts, latent) > threshold)).nonzero().squeeze(1)


class AbsorbingLatents(NamedTuple):
    """The latents that fire in a latent's holes (:func:`absorbing_latents`).

    Attributes:
        latents: (m,) long, most holes covered first (the lower index on ties).
        holes_covered: (m,) long, how many of the holes each fires on.
        fraction_of_holes: (m,) float64, ``holes_covered / n_holes``.
        n_holes: the concept's tokens where the general latent is silent.
    """

    latents: torch.Tensor
    holes_covered: torch.Tensor
    fraction_of_holes: torch.Tensor
    n_holes: int


def absorbing_latents(acts: torch.Tensor, latent: int, concept_mask: torch.Tensor, top: int = 10,
                      threshold: float = 0.0) -> AbsorbingLatents:
    """The latents that fire where ``latent`` has holes in the concept (the "Lily" and "Sue"
    latents of the paper's Fig 4), ranked by how many holes each covers; at most ``top``,
    and only those covering at least one hole. ``latent`` itself is never listed."""
    hole_tokens = holes(acts, latent, concept_mask, threshold)
    if hole_tokens.numel() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return AbsorbingLatents(empty, empty, torch.empty(0, dtype=torch.float64), 0)
    on_holes = _rows(acts, hole_tokens) > threshold  # (n_holes, d_sae)
    covered = on_holes.sum(0).long().cpu()
    covered[latent] = 0
    # Stable sort on descending counts: equal counts keep increasing latent order.
    order = torch.sort(-covered, stable=True).indices
    order = order[covered[order] > 0][:top]
    n_holes = hole_tokens.numel()
    return AbsorbingLatents(order, covered[order], covered[order].double() / n_holes, n_holes)


# --- input checks and sparse-aware indexing ------------------------------------------------


def _check_pair(acts: torch.Tensor, concepts: torch.Tensor, d_sae: int | None = None,
                n_concepts: int | None = None) -> None:
    if acts.dim() != 2:
        raise ValueError(f"acts must be (n_tokens, d_sae), got shape {tuple(acts.shape)}")
    if concepts.dim() != 2:
        raise ValueError(f"concepts must be (n_tokens, n_concepts), got shape {tuple(concepts.shape)}")
    if concepts.shape[0] != acts.shape[0]:
        raise ValueError(f"acts cover {acts.shape[0]} tokens but concepts cover {concepts.shape[0]}")
    if concepts.dtype != torch.bool and bool(((concepts != 0) & (concepts != 1)).any()):
        raise ValueError("concepts must be bool (or 0/1)")
    if d_sae is not None and acts.shape[1] != d_sae:
        raise ValueError(f"acts have {acts.shape[1]} latents, expected {d_sae}")
    if n_concepts is not None and concepts.shape[1] != n_concepts:
        raise ValueError(f"concepts have {concepts.shape[1]} columns, expected {n_concepts}")


def _check_finite(acts: torch.Tensor) -> None:
    if not bool(torch.isfinite(acts).all()):
        raise ValueError("acts contain NaN or inf")


def _check_mask(acts: torch.Tensor, concept_mask: torch.Tensor) -> torch.Tensor:
    if concept_mask.dim() != 1:
        raise ValueError(f"concept_mask must be (n_tokens,), got shape {tuple(concept_mask.shape)}")
    _check_pair(acts, concept_mask[:, None])
    if acts.layout == torch.strided:
        _check_finite(acts)
    return concept_mask.bool()


def _check_latent(acts: torch.Tensor, latent: int) -> None:
    if not 0 <= latent < acts.shape[1]:
        raise ValueError(f"latent {latent} is out of range for {acts.shape[1]} latents")


def _column(acts: torch.Tensor, latent: int) -> torch.Tensor:
    if acts.layout == torch.strided:
        return acts[:, latent]
    return acts.to_sparse_coo().index_select(1, torch.tensor([latent], device=acts.device)).to_dense()[:, 0]


def _rows(acts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    if acts.layout == torch.strided:
        return acts[tokens.to(acts.device)]
    return acts.to_sparse_coo().index_select(0, tokens.to(acts.device)).to_dense()
