"""Each figure's claim in the paper, and whether a run shows it: the last cell of every figure
notebook prints one line per claim, so a reader learns from the notebook itself whether the
paper's result holds at the profile that ran.

A claim compares Matryoshka with its baseline (BatchTopK, or the vanilla SAE of the toy model)
on one number. Its direction is "lower", "higher" or "comparable" (for Matryoshka); comparable
means within ``tolerance`` of each other, relative to the larger magnitude. The tolerances were
fixed with the claims, before looking at any result of ours, and no setting is tuned to meet them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["lower", "higher", "comparable"]


@dataclass(frozen=True)
class Claim:
    """One claim of the paper about Matryoshka against a baseline.

    Attributes:
        figure: where the paper shows it, e.g. "Fig 6".
        quantity: what is compared, e.g. "first-letter absorption".
        direction: Matryoshka's value against the baseline's: "lower", "higher" or "comparable".
        paper_at: where the paper compares it, e.g. "L0 40" (printed beside its values).
        paper_matryoshka: the paper's value for Matryoshka, where it gives one.
        paper_baseline: the paper's value for the baseline, where it gives one.
        baseline: the baseline's name, e.g. "BatchTopK".
        tolerance: how close, relative to the larger magnitude, counts as comparable.
    """

    figure: str
    quantity: str
    direction: Direction
    paper_at: str = "L0 40"
    paper_matryoshka: float | None = None
    paper_baseline: float | None = None
    baseline: str = "BatchTopK"
    tolerance: float = 0.02


# The paper's claims (SPEC section 4; values from its text and figures, L0 40 where it says so).
CLAIMS = {
    "fig1_absorption": Claim("Fig 1", "first-letter absorption", "lower", paper_matryoshka=0.05, paper_baseline=0.49),
    "fig1_variance_explained": Claim("Fig 1", "variance explained", "lower", paper_matryoshka=0.70, paper_baseline=0.72),
    "fig1_decoder_cosine": Claim("Fig 1", "mean max decoder cosine", "lower"),
    "fig2_matched_cosine": Claim("Fig 2", "mean cosine of matched decoder rows with the true features", "higher",
                                 paper_at="the toy tree", baseline="vanilla SAE"),
    "fig3_parent_absorption": Claim("Figs 3, 11", "parent absorption (parent silent while a child fires)", "lower",
                                    paper_at="the toy tree", baseline="vanilla SAE"),
    "fig4_general_latent_recall": Claim("Fig 4", "recall of the best 'female' latent (holes lower it)", "higher",
                                        paper_at="TinyStories"),
    "fig5_variance_explained": Claim("Fig 5", "variance explained (slightly worse)", "lower", paper_at="every L0"),
    "fig5_ce": Claim("Fig 5", "cross-entropy with the SAE spliced in", "comparable", paper_at="every L0"),
    "fig6_absorption": Claim("Fig 6", "first-letter absorption", "lower", paper_matryoshka=0.05, paper_baseline=0.49),
    "fig6_split_latents": Claim("Fig 6", "split latents per letter", "lower", paper_at="every L0",
                                paper_matryoshka=1.0, paper_baseline=3.0),
    "fig7_scr": Claim("Fig 7", "SCR, top 20 latents ablated", "higher", paper_at="every L0"),
    "fig7_tpp": Claim("Fig 7", "TPP, top 20 latents ablated", "higher", paper_at="every L0"),
    "fig8_decoder_cosine": Claim("Fig 8", "mean max decoder cosine (considerably lower)", "lower", paper_at="every L0"),
    "fig9_interpretability": Claim("Fig 9", "interpretability score", "comparable", paper_at="every L0", tolerance=0.1),
    "fig13_variance_explained": Claim("Fig 13", "variance explained of the smallest prefix against a BatchTopK SAE "
                                      "of its width at its L0", "lower", paper_at="65k latents, L0 40"),
    "fig14_meta_sae": Claim("Fig 14", "meta-SAE variance explained", "lower", paper_at="65k latents, L0 40",
                            paper_matryoshka=0.42, paper_baseline=0.55),
}


def observed_direction(matryoshka: float, baseline: float, tolerance: float) -> Direction:
    """Matryoshka's value against the baseline's: comparable within ``tolerance`` (relative
    to the larger magnitude), else lower or higher."""
    scale = max(abs(matryoshka), abs(baseline))
    if abs(matryoshka - baseline) <= tolerance * scale:
        return "comparable"
    return "lower" if matryoshka < baseline else "higher"


def verdict(claim_id: str, matryoshka: float | None, baseline: float | None, where: str = "") -> str:
    """One line: the claim, the paper's values, ours (measured ``where``, e.g. "L0 40") and
    whether the direction is the same ("same", "reversed", or "not the paper's": comparable where
    the paper sees a difference or the other way round; "not measured" where a value is missing)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; known: {sorted(CLAIMS)}")
    claim = CLAIMS[claim_id]
    paper = f"paper ({claim.paper_at}): Matryoshka {claim.direction}"
    if claim.paper_matryoshka is not None and claim.paper_baseline is not None:
        paper += f" ({claim.paper_matryoshka:.3g} vs {claim.paper_baseline:.3g})"
    head = f"{claim.figure}, {claim.quantity}, Matryoshka vs {claim.baseline}: {paper}; here"
    head += f" ({where})" if where else ""
    if matryoshka is None or baseline is None:
        return f"{head}: not measured -> not measured"
    here = observed_direction(matryoshka, baseline, claim.tolerance)
    if here == claim.direction:
        outcome = "same"
    elif {here, claim.direction} == {"lower", "higher"}:
        outcome = "reversed"
    else:
        outcome = "not the paper's"
    return f"{head}: {here} ({matryoshka:.3f} vs {baseline:.3f}) -> {outcome}"


def verdict_from_rows(claim_id: str, rows, column: str, k: int) -> str:
    """:func:`verdict` on ``column`` of the Matryoshka and BatchTopK rows with this k (rows as
    ``SweepResults.rows`` gives them, of the main sweep's SAEs)."""
    found = {r["architecture"]: r.get(column) for r in rows if r["k"] == k and r.get("prefix_width") is None}
    return verdict(claim_id, found.get("matryoshka"), found.get("batchtopk"), where=f"L0 {k}")


def verdict_falling(claim: str, values: Sequence[float], where: str = "") -> str:
    """One line for a claim that ``values`` fall from each to the next (e.g. Fig 12: each
    Matryoshka group fires less often than the one before): "same" when every value is below
    the one before it, else "not the paper's"."""
    falling = all(later < earlier for earlier, later in zip(values, values[1:]))
    shown = " > ".join(f"{v:.4g}" for v in values) if falling else ", ".join(f"{v:.4g}" for v in values)
    here = f"here ({where})" if where else "here"
    outcome = "same" if falling else "not the paper's"
    return f"{claim}; {here}: {shown} -> {outcome}"
