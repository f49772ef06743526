from msae.experiments.report import format_table


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
