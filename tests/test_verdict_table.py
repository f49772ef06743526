"""The README's verdict table reads back exactly what the verdict functions print."""

import json
import random

from msae.experiments import verdicts
from msae.experiments.verdict_table import markdown_table, notebook_verdicts, parse_verdict


def _notebook(tmp_path, name, printed: list[str]):
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["**Against the paper.** a -> same; here"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["print(...)"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": [line + "\n" for line in printed]}]},
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_round_trip_of_every_outcome(tmp_path):
    rng = random.Random()
    base = rng.uniform(0.2, 0.8)
    claim = verdicts.CLAIMS["fig6_absorption"]  # "lower"
    lines = [
        verdicts.verdict("fig6_absorption", base * 0.5, base, where="L0 40"),  # lower: same
        verdicts.verdict("fig6_absorption", base * 1.5, base),  # higher: reversed
        verdicts.verdict("fig6_absorption", base, base),  # comparable: not the paper's
        verdicts.verdict("fig6_absorption", None, base),  # not measured
        verdicts.verdict_falling("Fig 12, groups fire less often", [0.3, 0.1, 0.01], where="L0 40"),
        verdicts.verdict("fig6_absorption", base * 0.5, base) + "  [every letter]",
        "a line that is not a verdict -> same",
        "nor this one; here: -> samey",
    ]
    found = notebook_verdicts(_notebook(tmp_path, "07_fig06_absorption.ipynb", lines))
    assert [v.outcome for v in found] == ["same", "reversed", "not the paper's", "not measured", "same", "same"]
    assert all(v.notebook == "07_fig06_absorption.ipynb" for v in found)
    assert found[0].claim.startswith(claim.figure) and "L0 40" in found[0].here
    assert f"{base * 0.5:.3f} vs {base:.3f}" in found[0].here
    assert "0.3 > 0.1 > 0.01" in found[4].here
    assert found[5].here.endswith("[every letter]")


def test_markdown_table_has_one_row_per_verdict(tmp_path):
    line = verdicts.verdict("fig5_ce", 3.45, 3.44)  # within the 2% tolerance: comparable
    table = markdown_table([parse_verdict(line, "03_fig05_reconstruction.ipynb")] * 2)
    rows = table.splitlines()
    assert len(rows) == 4 and rows[2] == rows[3]
    assert "[03](notebooks/03_fig05_reconstruction.ipynb)" in rows[2] and rows[2].endswith("**same** |")


def test_a_qualitative_claim_round_trips():
    from msae.experiments.verdicts import verdict_qualitative

    line = verdict_qualitative("App F, latent trees: paper: parents above children", "12 of 40 attach (sim 0.71)")
    parsed = parse_verdict(line, "18_x.ipynb")
    assert parsed.outcome == "qualitative" and parsed.here == "12 of 40 attach (sim 0.71)"
    assert parsed.claim == "App F, latent trees: paper: parents above children"
