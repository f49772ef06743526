"""Collapse progress-bar output in executed notebooks, as Jupyter would display it.

papermill stores every progress-bar refresh (``"\\r" + bar``) as its own stream output, so a
25-minute training cell leaves hundreds of lines in the ``.ipynb``. Jupyter shows only the
last state of each line; this module rewrites the stored outputs to exactly that, so the
committed notebooks read on GitHub as they did on screen. It also rewrites the absolute paths
that warnings print (``/home/me/msae/.venv/.../site-packages/torch/...``) relative to the
installed packages or the repository, so a committed notebook names no one's machine.

    python -m msae.notebook_tidy notebooks/02_lm_sweep.ipynb [...]
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def render_carriage_returns(text: str) -> str:
    """What a terminal shows for ``text``: on each line, only what follows its last ``\\r``."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def machine_path_prefixes() -> list[tuple[str, str]]:
    """(absolute folder + "/", what replaces it), longest first: the installed packages' folders
    become ``site-packages/``, the repository's root goes (paths become relative to it)."""
    prefixes = {str(REPOSITORY) + "/": ""}
    for key in ("purelib", "platlib"):
        prefixes[sysconfig.get_paths()[key] + "/"] = "site-packages/"
    return sorted(prefixes.items(), key=lambda item: -len(item[0]))


def strip_machine_paths(text: str, prefixes: list[tuple[str, str]]) -> str:
    """``text`` with each prefix of ``prefixes`` (longest first) replaced."""
    for prefix, replacement in prefixes:
        text = text.replace(prefix, replacement)
    return text


def tidy_outputs(outputs: list[dict], prefixes: list[tuple[str, str]] | None = None) -> list[dict]:
    """Merge consecutive stream outputs of the same name, render their carriage returns and
    rewrite machine paths in them (``prefixes``; default: :func:`machine_path_prefixes`)."""
    prefixes = machine_path_prefixes() if prefixes is None else prefixes
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
            output["text"] = strip_machine_paths(render_carriage_returns(output["text"]), prefixes)
    return [o for o in tidied if o.get("output_type") != "stream" or o["text"]]


def tidy_notebook(path: str | Path) -> None:
    """Rewrite the notebook at ``path`` in place with its progress output collapsed."""
    path = Path(path)
    notebook = json.loads(path.read_text())
    prefixes = machine_path_prefixes()
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = tidy_outputs(cell.get("outputs", []), prefixes)
    # nbformat's own layout (indent 1, trailing newline), so diffs stay small.
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        tidy_notebook(name)
