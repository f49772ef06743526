"""The README's results table: every verdict line the executed notebooks printed, in one place.

Each figure notebook ends with a cell that prints one line per claim of the paper
(:mod:`msae.experiments.verdicts`). This module reads those lines back from the notebooks as
executed (their stored outputs; nothing is re-run) and writes them as a markdown table, so the
README quotes the notebooks rather than numbers typed by hand::

    python -m msae.experiments.verdict_table notebooks/*.ipynb
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUTCOMES = ("same", "reversed", "not the paper's", "not measured", "qualitative")


@dataclass(frozen=True)
class VerdictLine:
    """One printed verdict.

    Attributes:
        notebook: the notebook's file name, e.g. "07_fig06_absorption.ipynb".
        claim: the paper's side: figure, quantity, baseline and the paper's direction and values.
        here: ours: where it was measured, our direction and values, and any note.
        outcome: one of OUTCOMES.
    """

    notebook: str
    claim: str
    here: str
    outcome: str


def parse_verdict(line: str, notebook: str = "") -> VerdictLine | None:
    """A line as :func:`msae.experiments.verdicts.verdict` or ``verdict_falling`` prints it
    ("<claim>; here[ (where)]: <ours> -> <outcome>[ <note>]"), or None for any other line."""
    if " -> " not in line or "; here" not in line:
        return None
    body, tail = line.rsplit(" -> ", 1)
    outcome = next((o for o in OUTCOMES if tail == o or tail.startswith(o + " ")), None)
    if outcome is None:
        return None
    note = tail[len(outcome):].strip()  # e.g. "[judge-free concept F1]" after the outcome
    claim, here = body.split("; here", 1)
    here = here.lstrip(" :").strip() + (f" {note}" if note else "")
    return VerdictLine(notebook, claim.strip(), here, outcome)


def notebook_verdicts(path: str | Path) -> list[VerdictLine]:
    """The verdict lines in the stored outputs of one executed notebook, in order."""
    path = Path(path)
    cells = json.loads(path.read_text())["cells"]
    found = []
    for cell in cells:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = output.get("text", "")
            for line in ("".join(text) if isinstance(text, list) else text).splitlines():
                parsed = parse_verdict(line, path.name)
                if parsed is not None:
                    found.append(parsed)
    return found


def markdown_table(verdicts: list[VerdictLine], link_prefix: str = "notebooks/") -> str:
    """The verdicts as a markdown table, one row each, linked to their notebook."""
    rows = ["| notebook | the paper | here | direction |", "|---|---|---|---|"]
    for v in verdicts:
        number = v.notebook.split("_", 1)[0]
        cells = [f"[{number}]({link_prefix}{v.notebook})", v.claim, v.here, f"**{v.outcome}**"]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python -m msae.experiments.verdict_table notebooks/*.ipynb", file=sys.stderr)
        return 2
    verdicts = [v for path in sorted(paths) for v in notebook_verdicts(path)]
    print(markdown_table(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
