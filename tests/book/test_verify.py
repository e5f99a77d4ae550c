"""book/tools/verify.py: strict nbval re-execution of an executed notebook."""

from __future__ import annotations

import json
import re
from pathlib import Path

import papermill
import pytest

from book.tools import verify
from tests.book.notebooks import write_notebook

CELLS = (
    "print(seed * 2)",                                                   # the injected seed must be used
    "print(object())",                                                   # a memory address
    "import datetime\nprint(datetime.datetime.now().isoformat())",      # a date and time
    "import time\nfrom tqdm import tqdm\nfor _ in tqdm(range(3)):\n    time.sleep(0.2)",  # a progress bar
    "import os\nprint(os.path.abspath('..'))",                           # the repository's path
    "from pathlib import Path\nif not Path('tiny.marker').exists():      # like a harvest: the first run works,\n"
    "    for _ in tqdm(range(3)):                                      # a later one reuses its result\n"
    "        time.sleep(0.1)\n    Path('tiny.marker').write_text('done')\nprint('ready')",
    "%config InlineBackend.figure_formats = ['svg']\nimport matplotlib.pyplot as plt\n"
    "plt.plot([0, seed, 1])\nplt.show()",                                # an SVG figure (random ids)
)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """A small notebook executed by papermill with seed 3 into <repo>/book/chapters/."""
    repo = tmp_path_factory.mktemp("repo")
    source = write_notebook(repo / "notebooks" / "tiny.ipynb", "seed = 0\n", *CELLS)
    out = repo / "book" / "chapters" / "tiny.ipynb"
    out.parent.mkdir(parents=True)
    papermill.execute_notebook(str(source), str(out), parameters={"seed": 3}, kernel_name="python3",
                               cwd=str(source.parent), progress_bar=False)
    return out


def _outputs_text(path: Path) -> str:
    return json.dumps([c.get("outputs") for c in json.loads(path.read_text())["cells"]])


def test_untouched_notebook_is_reproduced(executed):
    stored = _outputs_text(executed)
    assert "image/svg+xml" in stored and "0x" in stored and "it/s" in stored  # what the sanitizer must handle
    marker = next(c for c in json.loads(executed.read_text())["cells"] if "tiny.marker" in "".join(c["source"]))
    assert "it/s" in json.dumps(marker["outputs"])  # a bar stored; none when re-executed (the marker exists)
    result = verify.verify(executed, root=executed.parents[2], quiet=True)
    assert result.cells == 1 + len(CELLS) + 1  # the parameters cell, CELLS and papermill's injected cell
    assert result.differing == {} and result.mismatches == [] and result.ok


def test_planted_difference_is_reported_by_cell(executed, tmp_path):
    repo = executed.parents[2]
    nb = json.loads(executed.read_text())
    cell = next(c for c in nb["cells"] if "".join(c["source"]) == "print(seed * 2)")
    assert cell["outputs"][0]["text"] in ("6\n", ["6\n"])
    cell["outputs"][0]["text"] = "7\n"
    planted = tmp_path / "planted.ipynb"
    planted.write_text(json.dumps(nb))
    result = verify.verify(planted, root=repo, quiet=True)
    assert not result.ok and len(result.differing) == 1
    [(name, report)] = result.differing.items()
    assert re.fullmatch(r"Cell \d+", name) and "7" in report and "6" in report
    assert verify.describe(report) == "mismatch 'stdout'  (cell: print(seed * 2))"


@pytest.mark.parametrize("edit", ["nbval-skip", "nbval-ignore-output", "code and output"])
def test_an_executed_copy_that_is_not_its_source_notebook_fails(executed, tmp_path, edit):
    nb = json.loads(executed.read_text())
    cell = next(c for c in nb["cells"] if "".join(c["source"]) == "print(seed * 2)")
    if edit == "code and output":  # both changed together: nbval alone would pass it
        cell["source"], cell["outputs"][0]["text"] = "print(seed * 3)", "9\n"
    else:  # a changed number hidden from nbval by a tag
        cell["outputs"][0]["text"] = "7\n"
        cell.setdefault("metadata", {}).setdefault("tags", []).append(edit)
    edited = tmp_path / "tiny.ipynb"  # compared with <repo>/notebooks/tiny.ipynb
    edited.write_text(json.dumps(nb))
    result = verify.verify(edited, root=executed.parents[2], quiet=True)
    assert result.differing == {} and not result.ok
    [problem] = result.mismatches
    expected = "source differs" if edit == "code and output" else "tags"
    assert problem.startswith("cell ") and expected in problem


def test_source_mismatches_allows_only_the_builds_own_tags():
    source = {"cells": [{"cell_type": "code", "source": "a = 1", "metadata": {"tags": ["parameters"]}},
                        {"cell_type": "markdown", "source": "text", "metadata": {}}]}
    built = json.loads(json.dumps(source))
    built["cells"][0]["metadata"]["tags"].append("remove-cell")  # the build hides the parameters cell
    built["cells"].insert(1, {"cell_type": "code", "source": "a = 2", "metadata": {"tags": ["injected-parameters"]}})
    assert verify.source_mismatches(built, source) == []
    built["cells"][2]["metadata"]["tags"] = ["remove-cell"]  # hiding any other cell is a change
    assert verify.source_mismatches(built, source) == ["cell 1 (text): tags ['remove-cell'], the source's []"]
    built["cells"].pop()
    assert verify.source_mismatches(built, source) == ["1 cells, the source has 2"]


def test_without_the_sanitizer_the_varying_outputs_differ(executed, tmp_path, monkeypatch):
    empty = tmp_path / "empty.cfg"
    empty.write_text("")
    monkeypatch.setattr(verify, "SANITIZER", empty)
    result = verify.verify(executed, root=executed.parents[2], quiet=True)
    # the address, the date and the SVG ids (the path is the same here; progress bars are left out)
    assert len(result.differing) == 3


def test_progress_bars_are_left_out():
    from book.tools.nbval_progress import BAR
    text = ("UserWarning: kept\ntrain: 100%|##########| 200/200 [00:12<00:00, 16.3step/s, loss=0.1]\n"
            "harvest: 20.0k/20.0k [00:05<00:00, 3.91ktok/s]\n0it [00:00, ?it/s]\n"
            " 50%|#####     | 1/2 [01:02<01:02, 62.00s/it]\nkept [1, 2] too\n")
    assert BAR.sub("", text) == "UserWarning: kept\nkept [1, 2] too\n"


def test_stderr_is_left_out_and_stdout_compared():
    import nbformat

    from book.tools.nbval_progress import strip_progress
    outputs = [{"output_type": "stream", "name": "stderr", "text": "UserWarning: recorded once, at /some/venv\n"},
               {"output_type": "stream", "name": "stdout", "text": "0it [00:00, ?it/s]\nFVU 0.12\n"},
               {"output_type": "stream", "name": "stdout", "text": "100%|##| 2/2 [00:01<00:00, 2.0it/s]\n"},
               {"output_type": "execute_result", "data": {"text/plain": "3"}, "metadata": {}, "execution_count": 1}]
    kept = strip_progress([nbformat.from_dict(output) for output in outputs])
    assert [o.get("name") for o in kept] == ["stdout", None]
    assert kept[0]["text"] == "FVU 0.12\n"


def test_chapter_paths_and_parameters(tmp_path, executed):
    repo = executed.parents[2]
    assert verify.chapter_paths([], repo) == [executed]
    assert verify.chapter_paths(["tiny", "notebooks/tiny.ipynb"], repo) == [executed, executed]
    assert verify.chapter_paths([str(executed)], repo) == [executed]
    with pytest.raises(ValueError, match="make book NOTEBOOKS=notebooks/nope.ipynb.*EXECUTE=1"):
        verify.chapter_paths(["nope"], repo)
    with pytest.raises(ValueError, match="make verify EXECUTE=1 NOTEBOOKS=notebooks/NAME.ipynb"):
        verify.chapter_paths([], tmp_path)  # a fresh clone: nothing executed yet
    assert verify.injected_parameters(json.loads(executed.read_text())) == {"seed": 3}
    with pytest.raises(ValueError, match="not executed by papermill"):
        verify.injected_parameters({"metadata": {}})
