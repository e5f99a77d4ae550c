"""Small notebooks for the book tools' tests (written with nbformat)."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, parameters: str, *cells: str, title: str | None = None) -> Path:
    """A notebook with a ``parameters``-tagged cell and the given code cells (after a ``# title``
    markdown cell, when given)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    if title is not None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat it does."))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def titled_notebook(path: Path, title: str, summary: str = "What it does.") -> Path:
    """A notebook whose first markdown cell is ``# title`` and a one-sentence summary."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{summary} More detail.")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
