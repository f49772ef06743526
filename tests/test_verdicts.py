"""The verdict lines the figure notebooks end with."""

import random

import pytest

from msae.experiments.verdicts import (
    CLAIMS,
    observed_direction,
    verdict,
    verdict_across_widths,
    verdict_falling,
    verdict_from_rows,
)

# The outcome of each observed direction under each claimed one, written out.
EXPECTED_OUTCOME = {
    "lower": {"lower": "same", "higher": "reversed", "comparable": "not the paper's"},
    "higher": {"lower": "reversed", "higher": "same", "comparable": "not the paper's"},
    "comparable": {"lower": "not the paper's", "higher": "not the paper's", "comparable": "same"},
    "not higher": {"lower": "same", "higher": "reversed", "comparable": "same"},
    "not lower": {"lower": "reversed", "higher": "same", "comparable": "same"},
}


def test_direction_uses_a_relative_tolerance(seed):
    rng = random.Random(seed)
    for _ in range(500):
        base = rng.uniform(0.01, 10) * rng.choice([1, -1])
        tolerance = rng.uniform(0.001, 0.2)
        inside = base * (1 + rng.uniform(-0.99, 0.99) * tolerance) if base > 0 else base
        assert observed_direction(inside, base, tolerance) == "comparable"
        below, above = base - 2 * tolerance * abs(base) - 1e-9, base + 2 * tolerance * abs(base) + 1e-9
        assert observed_direction(below, base, tolerance) == "lower"
        assert observed_direction(above, base, tolerance) == "higher"


@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_every_claim_has_each_outcome(claim_id, seed):
    claim = CLAIMS[claim_id]
    base = random.Random(seed).uniform(0.1, 5)
    far_lower, far_higher, close = base * 0.5, base * 1.5, base * (1 + claim.tolerance / 4)
    by_direction = {"lower": far_lower, "higher": far_higher, "comparable": close}
    for observed, value in by_direction.items():
        line = verdict(claim_id, value, base)
        assert line.startswith(f"{claim.figure}, {claim.quantity}, {claim.subject} vs {claim.baseline}")
        assert f"here (L0 7): {observed} ({value:.3f} vs {base:.3f})" in verdict(claim_id, value, base, "L0 7")
        assert f"here: {observed} ({value:.3f} vs {base:.3f})" in line
        assert line.endswith(f"-> {EXPECTED_OUTCOME[claim.direction][observed]}")
    assert verdict(claim_id, None, base).endswith("not measured")


def test_paper_values_are_printed_and_unknown_claims_refused():
    assert "paper (L0 40): Matryoshka lower (0.05 vs 0.49)" in verdict("fig6_absorption", 0.3, 0.05)
    assert verdict("fig6_absorption", 0.347, 0.054).endswith("-> reversed")


def test_verdict_from_rows_picks_the_main_pair_at_k():
    rows = [{"architecture": a, "k": k, "prefix_width": None, "absorption": v}
            for a, k, v in [("matryoshka", 40, 0.1), ("batchtopk", 40, 0.4), ("matryoshka", 20, 0.9), ("batchtopk", 20, 0.1)]]
    rows.append({"architecture": "batchtopk", "k": 40, "prefix_width": 16, "absorption": 0.0})  # prefix-matched: not it
    assert verdict_from_rows("fig6_absorption", rows, "absorption", 40).endswith("here (L0 40): lower (0.100 vs 0.400) -> same")
    assert verdict_from_rows("fig6_absorption", rows, "absorption", 20).endswith("-> reversed")
    assert verdict_from_rows("fig6_absorption", rows, "absorption", 80).endswith("not measured")
    with pytest.raises(ValueError, match="unknown claim 'fig99'"):
        verdict("fig99", 1.0, 1.0)


def test_verdict_from_rows_uses_the_claims_architectures_and_averages_over_k():
    rows = [{"architecture": a, "k": k, "prefix_width": None, "ce_sae": v}
            for a, k, v in [("matryoshka", 20, 3.0), ("matryoshka", 40, 2.0), ("topk", 20, 3.0), ("topk", 40, 3.0),
                            ("batchtopk", 20, 1.0), ("batchtopk", 40, 1.0),
                            ("matryoshka_3groups", 20, 1.0), ("matryoshka_3groups", 40, 2.0)]]
    assert verdict_from_rows("fig5_ce_topk", rows, "ce_sae", 40).endswith(
        "here (L0 40): lower (2.000 vs 3.000) -> not the paper's")
    assert verdict_from_rows("fig5_ce_topk", rows, "ce_sae", [20, 40]).endswith(
        "here (mean over L0 20/40): lower (2.500 vs 3.000) -> not the paper's")
    line = verdict_from_rows("fig18_3groups_ce", rows, "ce_sae", [20, 40])
    assert line.startswith("Fig 18, cross-entropy with the SAE spliced in, 3 groups vs Matryoshka")
    assert line.endswith("lower (1.500 vs 2.500) -> same")
    assert verdict_from_rows("fig18_3groups_ce", rows, "ce_sae", [20, 80]).endswith("not measured")


def test_verdict_across_widths_compares_the_largest_width_with_the_smallest():
    line = verdict_across_widths("fig10_absorption", [(576, 0.30), (1152, 0.50), (2304, 0.31)], "mean over L0 40")
    assert "here (576 to 2,304 latents, mean over L0 40): higher (0.310 vs 0.300) -> reversed" in line
    assert verdict_across_widths("fig10_absorption", [(576, 0.3), (2304, 0.1)]).endswith("lower (0.100 vs 0.300) -> same")
    assert verdict_across_widths("fig10_variance_explained", [(576, 0.8)]).endswith("not measured")


def test_falling_values(seed):
    rng = random.Random(seed)
    values = sorted((rng.uniform(0, 1) for _ in range(5)), reverse=True)
    assert verdict_falling("Fig 12, early groups fire more", values, "L0 40").endswith("-> same")
    assert " > ".join(f"{v:.4g}" for v in values) in verdict_falling("claim", values)
    swapped = values[:2][::-1] + values[2:]
    assert verdict_falling("claim", swapped).endswith("-> not the paper's")
