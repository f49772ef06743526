import json
import sysconfig

from msae.notebook_tidy import REPOSITORY, render_carriage_returns, tidy_notebook, tidy_outputs


def test_carriage_returns_keep_the_last_state_of_each_line():
    text = "start\n\rbar  0%\rbar 50%\rbar 100%\ndone\r\n"
    assert render_carriage_returns(text) == "start\nbar 100%\ndone\n"


def test_streams_merge_per_name_and_other_outputs_stay_in_place():
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": "\rtrain 1/3"},
        {"output_type": "stream", "name": "stderr", "text": ["\rtrain 2/3", "\rtrain 3/3\n"]},
        {"output_type": "stream", "name": "stdout", "text": "result 0.5\n"},
        {"output_type": "display_data", "data": {"text/plain": "<Figure>"}, "metadata": {}},
        {"output_type": "stream", "name": "stderr", "text": "\rsecond bar 9/9\n"},
    ]
    tidied = tidy_outputs(outputs)
    assert [o["output_type"] for o in tidied] == ["stream", "stream", "display_data", "stream"]
    assert tidied[0]["text"] == "train 3/3\n"
    assert tidied[1]["text"] == "result 0.5\n"
    assert tidied[3]["text"] == "second bar 9/9\n"


def test_tidy_notebook_rewrites_in_place(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# t"},
            {"cell_type": "code", "metadata": {}, "source": "x", "execution_count": 1,
             "outputs": [{"output_type": "stream", "name": "stderr", "text": f"\rstep {i}"} for i in range(50)]},
        ],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook))
    tidy_notebook(path)
    cells = json.loads(path.read_text())["cells"]
    assert cells[0] == notebook["cells"][0]
    assert cells[1]["outputs"] == [{"output_type": "stream", "name": "stderr", "text": "step 49"}]


def test_warnings_lose_the_machine_paths():
    """A warning's file path, under the installed packages or the repository, is rewritten
    relative to them; the rest of the text stays."""
    site = sysconfig.get_paths()["purelib"]
    text = (f"{site}/torch/utils/_contextlib.py:124: UserWarning: rows not unit norm\n"
            f"{REPOSITORY}/msae/evals/absorption.py:9: UserWarning: second\n/usr/share/dict/words stays\n")
    tidied = tidy_outputs([{"output_type": "stream", "name": "stderr", "text": text}])
    assert tidied[0]["text"] == ("site-packages/torch/utils/_contextlib.py:124: UserWarning: rows not unit norm\n"
                                 "msae/evals/absorption.py:9: UserWarning: second\n/usr/share/dict/words stays\n")
