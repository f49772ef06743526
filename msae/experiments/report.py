"""Plain-text tables of key numbers, for notebooks to print (and nbval to compare)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """Fixed-width text: one header line, then one line per row; floats rounded to ``digits``,
    missing values and None shown as "n/a"."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    table = [[str(c) for c in columns]] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths)))
        for line in table
    )


def training_summary(history: Sequence[dict[str, float]], coefficient: str = "l1_coefficient",
                     from_step: int = 0) -> dict[str, float]:
    """Where a penalty-steered run went (``history`` as training logs it): the largest penalty
    ``coefficient`` and its step, the lowest variance explained at or after ``from_step`` (past
    the learning-rate warm-up, say) and its step, and the last record's coefficient, L0 and
    variance explained."""
    later = [record for record in history if record["step"] >= from_step]
    if not later:
        raise ValueError(f"the history has no record at or after step {from_step}")
    peak = max(history, key=lambda record: record[coefficient])
    trough = min(later, key=lambda record: record["variance_explained"])
    last = history[-1]
    return {"peak coefficient": peak[coefficient], "peak step": peak["step"],
            "lowest VE": trough["variance_explained"], "lowest VE step": trough["step"],
            "final coefficient": last[coefficient], "final L0": last["l0"], "final VE": last["variance_explained"]}
