import random

import pytest

from msae.experiments.report import format_table, training_summary


def test_format_table_aligns_and_rounds():
    text = format_table([{"name": "a", "x": 0.12345, "n": 3}, {"name": "long name", "x": 10.0, "n": 12}], ["name", "x", "n"])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "x", "n"]
    assert lines[1].split() == ["a", "0.123", "3"] and lines[2].split() == ["long", "name", "10.000", "12"]
    assert len({len(line) for line in lines}) == 1  # every line the same width


def test_format_table_shows_missing_values_as_not_available():
    text = format_table([{"name": "old", "x": None}, {"name": "new", "x": 0.5, "kl": 0.25}], ["name", "x", "kl"])
    assert [line.split() for line in text.splitlines()] == [["name", "x", "kl"], ["old", "n/a", "n/a"],
                                                            ["new", "0.500", "0.250"]]


def test_training_summary_finds_the_peak_the_trough_past_a_step_and_the_end(seed):
    rng = random.Random(seed)
    history = [{"step": 10 * (i + 1), "l1_coefficient": rng.uniform(0.1, 1), "l0": rng.uniform(5, 500),
                "variance_explained": rng.uniform(0.3, 0.9)} for i in range(rng.randrange(20, 60))]
    peak, early, trough = rng.sample(range(len(history) // 2, len(history) - 1), 1)[0], 1, rng.randrange(5, len(history) - 1)
    history[peak]["l1_coefficient"] = 1.5
    history[early]["variance_explained"] = 0.0  # before from_step: not the trough
    history[trough]["variance_explained"] = 0.1
    summary = training_summary(history, from_step=history[4]["step"])
    assert summary == {"peak coefficient": 1.5, "peak step": history[peak]["step"],
                       "lowest VE": 0.1, "lowest VE step": history[trough]["step"],
                       "final coefficient": history[-1]["l1_coefficient"], "final L0": history[-1]["l0"],
                       "final VE": history[-1]["variance_explained"]}
    assert training_summary(history)["lowest VE"] == 0.0
    with pytest.raises(ValueError, match="no record at or after step"):
        training_summary(history, from_step=10**6)
