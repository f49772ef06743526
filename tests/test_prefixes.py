import pytest
import torch

from msae.saes.prefixes import (
    PAPER_GROUP_FRACTIONS,
    group_sizes_from_fractions,
    group_weights,
    pareto_prefix_probabilities,
    prefix_ends,
    sample_prefix_ends,
    validate_group_sizes,
)


def test_paper_fractions_give_the_papers_prefixes():
    sizes = group_sizes_from_fractions(65536, PAPER_GROUP_FRACTIONS)
    assert prefix_ends(sizes) == [2048, 6144, 14336, 30720, 65536]


@pytest.mark.parametrize("d_sae", [4096, 4608, 16384, 1000, 37])
def test_fraction_sizes_always_sum_to_width(d_sae):
    sizes = group_sizes_from_fractions(d_sae, PAPER_GROUP_FRACTIONS)
    assert sum(sizes) == d_sae and all(s > 0 for s in sizes)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ([10, 20, 30], "sum to 60, but the dictionary has d_sae=64"),
        ([10, 0, 54], "positive integers"),
        ([10, -6, 60], "positive integers"),
        ([10.0, 54], "positive integers"),
        ([], "must not be empty"),
    ],
)
def test_bad_group_sizes_say_what_is_wrong(sizes, message):
    with pytest.raises(ValueError, match=message):
        validate_group_sizes(sizes, 64)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        group_sizes_from_fractions(64, [0.5, 0.4])
    with pytest.raises(ValueError, match="positive"):
        group_sizes_from_fractions(64, [1.5, -0.5])
    with pytest.raises(ValueError, match="positive integers"):  # a group rounds down to nothing
        group_sizes_from_fractions(8, [0.01, 0.99])


def test_group_weights():
    assert group_weights("uniform", [1, 3, 4]) == [1 / 3] * 3
    assert group_weights("size", [1, 3, 4]) == [1 / 8, 3 / 8, 4 / 8]
    assert group_weights([1, 2, 3], [1, 3, 4]) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="3 groups"):
        group_weights([1, 2], [1, 3, 4])
    with pytest.raises(ValueError, match="unknown group weighting"):
        group_weights("equal", [1, 3, 4])


def test_pareto_probabilities_follow_the_power_law():
    d_sae, a = 50, 0.5
    probs = pareto_prefix_probabilities(d_sae, a)
    m = torch.arange(1, d_sae, dtype=torch.float64)
    expected = m.pow(a) - (m - 1).pow(a)
    assert torch.allclose(probs, expected / expected.sum())
    assert torch.all(probs[1:] < probs[:-1])  # shorter prefixes are likelier


def test_sampled_prefixes_are_distinct_increasing_and_end_at_width(gen):
    for _ in range(200):
        ends = sample_prefix_ends(20, 10, gen)
        assert len(ends) == 10 and ends[-1] == 20
        assert all(b > a for a, b in zip(ends, ends[1:])) and ends[0] >= 1


def test_sampled_prefix_lengths_match_the_distribution(gen):
    # With one sampled prefix besides the full width, its length follows the pmf exactly.
    d_sae, n = 12, 40_000
    counts = torch.zeros(d_sae - 1)
    for _ in range(n):
        counts[sample_prefix_ends(d_sae, 2, gen)[0] - 1] += 1
    expected = pareto_prefix_probabilities(d_sae).float() * n
    # each count is binomial; 5 standard deviations leaves a negligible false-alarm rate
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt())
