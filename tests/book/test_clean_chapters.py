import json
from pathlib import Path

import nbformat
import pytest

from book.tools.clean_chapters import REMOVE, clean_notebook, main


def _executed(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("seed = 1", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("setup()", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_code_cell("plot()"),
    ]
    nbformat.write(nb, path)
    return path


def _tags(path: Path) -> list[list[str]]:
    return [c.get("metadata", {}).get("tags", []) for c in json.loads(path.read_text())["cells"]]


def test_tags_both_parameters_cells_and_nothing_else(tmp_path: Path) -> None:
    path = _executed(tmp_path / "ch.ipynb")
    assert clean_notebook(path) == 2
    assert _tags(path) == [[], ["parameters", REMOVE], ["injected-parameters", REMOVE], ["hide-input"], []]
    nbformat.validate(nbformat.read(path, as_version=4))
    assert [p.name for p in tmp_path.iterdir()] == ["ch.ipynb"]  # no temp file left


def test_idempotent(tmp_path: Path) -> None:
    path = _executed(tmp_path / "ch.ipynb")
    clean_notebook(path)
    before = path.read_bytes()
    assert clean_notebook(path) == 0
    assert path.read_bytes() == before


def test_unreadable_notebook_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.ipynb"):
        clean_notebook(path)
    assert main([str(path)]) == 1
    assert main([]) == 2
