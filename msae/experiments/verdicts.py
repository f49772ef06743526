"""Each figure's claim in the paper, and whether a run shows it: the last cell of every figure
notebook prints one line per claim, so a reader learns from the notebook itself whether the
paper's result holds at the profile that ran.

A claim compares Matryoshka (or one of its ablation arms, or itself at the largest width) with a
baseline (BatchTopK, TopK, the vanilla SAE of the toy model, the standard Matryoshka SAE, or itself
at the smallest width) on one number. Its direction is "lower", "higher" or "comparable"; or "not
higher" / "not lower" where the paper says "stable or better" or "similar or slightly worse".
Comparable means within ``tolerance`` of each other, relative to the larger magnitude. The
tolerances were fixed with the claims, before looking at any result of ours, and no setting is
tuned to meet them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["lower", "higher", "comparable", "not higher", "not lower"]
Observed = Literal["lower", "higher", "comparable"]


@dataclass(frozen=True)
class Claim:
    """One claim of the paper about Matryoshka (or a variant of it) against a baseline.

    Attributes:
        figure: where the paper shows it, e.g. "Fig 6".
        quantity: what is compared, e.g. "first-letter absorption".
        direction: the subject's value against the baseline's: "lower", "higher", "comparable",
            "not higher" or "not lower".
        paper_at: where the paper compares it, e.g. "L0 40" (printed beside its values).
        paper_matryoshka: the paper's value for the subject, where it gives one.
        paper_baseline: the paper's value for the baseline, where it gives one.
        baseline: the baseline's name, e.g. "BatchTopK".
        tolerance: how close, relative to the larger magnitude, counts as comparable.
        subject: the name of what the claim is about, e.g. "Matryoshka" or an ablation arm.
        architectures: the ``architecture`` of the subject's and the baseline's rows, for
            :func:`verdict_from_rows` (``SweepResults.rows``: a registry name or an ablation arm).
    """

    figure: str
    quantity: str
    direction: Direction
    paper_at: str = "L0 40"
    paper_matryoshka: float | None = None
    paper_baseline: float | None = None
    baseline: str = "BatchTopK"
    tolerance: float = 0.02
    subject: str = "Matryoshka"
    architectures: tuple[str, str] = ("matryoshka", "batchtopk")


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

# Fig 5 against TopK as well (SPEC section 4: slightly worse variance explained, comparable CE).
CLAIMS |= {
    "fig5_variance_explained_topk": Claim("Fig 5", "variance explained (slightly worse)", "lower", paper_at="every L0",
                                          baseline="TopK", architectures=("matryoshka", "topk")),
    "fig5_ce_topk": Claim("Fig 5", "cross-entropy with the SAE spliced in", "comparable", paper_at="every L0",
                          baseline="TopK", architectures=("matryoshka", "topk")),
}

# Fig 10 (SPEC section 4): "Matryoshka stable or better with width", averaged over L0 40/80/160.
# Compared here: Matryoshka at the largest width against itself at the smallest.
_FIG10 = dict(paper_at="4k to 65k latents, mean over L0 40/80/160", subject="Matryoshka at the largest width",
              baseline="Matryoshka at the smallest width")
CLAIMS |= {
    "fig10_variance_explained": Claim("Fig 10", "variance explained (stable or better)", "not lower", **_FIG10),
    "fig10_loss_recovered": Claim("Fig 10", "loss recovered (stable or better)", "not lower", **_FIG10),
    "fig10_absorption": Claim("Fig 10", "first-letter absorption (stable or better)", "not higher", **_FIG10),
}

# Figs 16-19 (SPEC section 6, App. G; the paper at 65k latents and 200M tokens, random prefixes at
# 16k): each arm against the standard Matryoshka SAE (five fixed groups, uniform weights), except
# where the paper names BatchTopK. "Worse CE" is a higher cross-entropy with the SAE spliced in.
_MATRYOSHKA = "Matryoshka (5 fixed groups, uniform weights)"
_ARMS = {"size_weighted": "size-weighted loss", "stop_gradient": "stop-gradient", "3groups": "3 groups",
         "10groups": "10 groups", "random5": "5 random prefixes"}


def _ablation(figure: str, arm: str, quantity: str, direction: Direction, paper_at: str = "65k latents, every L0",
              baseline: str = "matryoshka") -> Claim:
    return Claim(figure, quantity, direction, paper_at=paper_at, subject=_ARMS[arm],
                 baseline=_MATRYOSHKA if baseline == "matryoshka" else "BatchTopK",
                 architectures=(f"matryoshka_{arm}", baseline))


_CE, _ABSORPTION = "cross-entropy with the SAE spliced in", "first-letter absorption"
CLAIMS |= {
    "fig16_weighted_ce": _ablation("Fig 16", "size_weighted", f"{_CE} (near BatchTopK's)", "comparable",
                                   baseline="batchtopk"),
    "fig16_weighted_absorption": _ablation("Fig 16", "size_weighted", _ABSORPTION, "higher"),
    "fig17_stop_gradient_absorption": _ablation("Fig 17", "stop_gradient", _ABSORPTION, "lower",
                                                paper_at="65k latents, low L0"),
    "fig17_stop_gradient_ce": _ablation("Fig 17", "stop_gradient", _CE, "higher"),
    "fig18_3groups_ce": _ablation("Fig 18", "3groups", _CE, "lower"),
    "fig18_3groups_absorption": _ablation("Fig 18", "3groups", _ABSORPTION, "higher"),
    "fig18_10groups_absorption": _ablation("Fig 18", "10groups", f"{_ABSORPTION} (slightly better)", "lower"),
    "fig18_10groups_ce": _ablation("Fig 18", "10groups", _CE, "higher"),
    "fig19_random_variance_explained": _ablation("Fig 19", "random5", "variance explained (similar or slightly worse)",
                                                 "not higher", paper_at="16k latents, every L0"),
    "fig19_random_absorption": _ablation("Fig 19", "random5", f"{_ABSORPTION} (similar or slightly worse)",
                                         "not lower", paper_at="16k latents, every L0"),
}


def observed_direction(matryoshka: float, baseline: float, tolerance: float) -> Observed:
    """Matryoshka's value against the baseline's: comparable within ``tolerance`` (relative
    to the larger magnitude), else lower or higher."""
    scale = max(abs(matryoshka), abs(baseline))
    if abs(matryoshka - baseline) <= tolerance * scale:
        return "comparable"
    return "lower" if matryoshka < baseline else "higher"


def known_claim(claim_id: str) -> Claim:
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; known: {sorted(CLAIMS)}")
    return CLAIMS[claim_id]


def outcome(claimed: Direction, observed: Observed) -> str:
    """"same" where ``observed`` is what the paper claims; "reversed" where it is the opposite
    (lower for higher, or higher for "not higher"); else "not the paper's" (comparable where the
    paper sees a difference, or a difference where it sees none)."""
    if observed == claimed or (claimed.startswith("not ") and observed != claimed[4:]):
        return "same"
    if {observed, claimed} == {"lower", "higher"} or claimed.startswith("not "):
        return "reversed"
    return "not the paper's"


def verdict(claim_id: str, matryoshka: float | None, baseline: float | None, where: str = "") -> str:
    """One line: the claim, the paper's values, ours (measured ``where``, e.g. "L0 40") and
    whether the direction is the same (:func:`outcome`; "not measured" where a value is missing).
    ``matryoshka`` is the value of the claim's subject."""
    claim = known_claim(claim_id)
    paper = f"paper ({claim.paper_at}): {claim.subject} {claim.direction}"
    if claim.paper_matryoshka is not None and claim.paper_baseline is not None:
        paper += f" ({claim.paper_matryoshka:.3g} vs {claim.paper_baseline:.3g})"
    head = f"{claim.figure}, {claim.quantity}, {claim.subject} vs {claim.baseline}: {paper}; here"
    head += f" ({where})" if where else ""
    if matryoshka is None or baseline is None:
        return f"{head}: not measured -> not measured"
    here = observed_direction(matryoshka, baseline, claim.tolerance)
    return f"{head}: {here} ({matryoshka:.3f} vs {baseline:.3f}) -> {outcome(claim.direction, here)}"


def verdict_from_rows(claim_id: str, rows, column: str, k: int | Sequence[int]) -> str:
    """:func:`verdict` on ``column`` of the rows of the claim's two architectures
    (``Claim.architectures``; by default the main sweep's Matryoshka and BatchTopK SAEs) with this
    k, or averaged over several k (rows of one width, as ``SweepResults.rows_at_sweep_width`` or
    ``SweepResults.rows`` of the main sweep give them; prefix-matched SAEs are left out). A value
    missing at any of the k counts as not measured."""
    k_values = [k] if isinstance(k, int) else list(k)
    found = {(r["architecture"], r["k"]): r.get(column) for r in rows if r.get("prefix_width") is None}

    def mean(architecture: str) -> float | None:
        values = [found.get((architecture, each)) for each in k_values]
        return None if any(v is None for v in values) else sum(values) / len(values)

    subject, baseline = known_claim(claim_id).architectures
    where = f"L0 {k_values[0]}" if len(k_values) == 1 else f"mean over L0 {'/'.join(map(str, k_values))}"
    return verdict(claim_id, mean(subject), mean(baseline), where=where)


def verdict_across_widths(claim_id: str, by_width: Sequence[tuple[int, float]], where: str = "") -> str:
    """:func:`verdict` on the value at the largest width against the value at the smallest, from
    ``[(width, value), ...]`` by increasing width (``msae.plots.studies.width_means`` gives these);
    not measured with fewer than two widths."""
    if len(by_width) < 2:
        return verdict(claim_id, None, None, where)
    (smallest, first), (largest, last) = by_width[0], by_width[-1]
    return verdict(claim_id, last, first, f"{smallest:,} to {largest:,} latents" + (f", {where}" if where else ""))


def verdict_falling(claim: str, values: Sequence[float], where: str = "") -> str:
    """One line for a claim that ``values`` fall from each to the next (e.g. Fig 12: each
    Matryoshka group fires less often than the one before): "same" when every value is below
    the one before it, else "not the paper's"."""
    falling = all(later < earlier for earlier, later in zip(values, values[1:]))
    shown = " > ".join(f"{v:.4g}" for v in values) if falling else ", ".join(f"{v:.4g}" for v in values)
    here = f"here ({where})" if where else "here"
    outcome = "same" if falling else "not the paper's"
    return f"{claim}; {here}: {shown} -> {outcome}"


def verdict_qualitative(claim: str, here: str) -> str:
    """One line for a claim the paper shows but does not count (App. F's trees): our numbers
    beside it, with no direction to compare ("qualitative")."""
    return f"{claim}; here: {here} -> qualitative"
