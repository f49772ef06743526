"""Collapse progress-bar output in executed notebooks, as Jupyter would display it.

papermill stores every progress-bar refresh (``"\\r" + bar``) as its own stream output, so a
25-minute training cell leaves hundreds of lines in the ``.ipynb``. Jupyter shows only the
last state of each line; this module rewrites the stored outputs to exactly that, so the
committed notebooks read on GitHub as they did on screen.

    python -m msae.notebook_tidy notebooks/02_lm_sweep.ipynb [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render_carriage_returns(text: str) -> str:
    """What a terminal shows for ``text``: on each line, only what follows its last ``\\r``."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def tidy_outputs(outputs: list[dict]) -> list[dict]:
    """Merge consecutive stream outputs of the same name and render their carriage returns."""
    tidied: list[dict] = []
    for output in outputs:
        if output.get("output_type") != "stream":
            tidied.append(output)
            continue
        text = output["text"] if isinstance(output["text"], str) else "".join(output["text"])
        previous = tidied[-1] if tidied else None
        if previous is not None and previous.get("output_type") == "stream" and previous["name"] == output["name"]:
            previous["text"] += text
        else:
            tidied.append({**output, "text": text})
    for output in tidied:
        if output.get("output_type") == "stream":
            output["text"] = render_carriage_returns(output["text"])
    return [o for o in tidied if o.get("output_type") != "stream" or o["text"]]


def tidy_notebook(path: str | Path) -> None:
    """Rewrite the notebook at ``path`` in place with its progress output collapsed."""
    path = Path(path)
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = tidy_outputs(cell.get("outputs", []))
    # nbformat's own layout (indent 1, trailing newline), so diffs stay small.
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        tidy_notebook(name)
