"""Tidy papermill's executed chapters for the book: hide both parameters cells.

papermill leaves the source's ``parameters`` cell (the quick defaults) and, after it, its own
``injected-parameters`` cell (the book's values): two contradicting sets of numbers. Each
chapter's setup cell already displays the table of parameters in effect, so both cells are
tagged ``remove-cell`` (Jupyter Book then leaves them out of the page). Idempotent; the
notebook is rewritten atomically, and only when something changed.

    python -m book.tools.clean_chapters book/chapters/NAME.ipynb [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sae_helpers._io import atomic_write

__all__ = ["HIDDEN_TAGS", "REMOVE", "clean_notebook", "main"]

#: Cells with any of these tags are removed from the page.
HIDDEN_TAGS = ("parameters", "injected-parameters")
REMOVE = "remove-cell"


def clean_notebook(path: Path) -> int:
    """Tag the parameters cells of ``path`` ``remove-cell``; the number of cells newly tagged."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook["cells"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a readable notebook ({error})") from error
    changed = 0
    for cell in cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(tag in tags for tag in HIDDEN_TAGS) and REMOVE not in tags:
            tags.append(REMOVE)
            changed += 1
    if changed:
        text = json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return changed


def main(argv: list[str] | None = None) -> int:
    """Clean every notebook named on the command line."""
    paths = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m book.tools.clean_chapters NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            n = clean_notebook(path)
        except ValueError as error:
            print(f"clean_chapters: {error}", file=sys.stderr)
            return 1
        print(f"{path}: {n} parameters cell(s) tagged {REMOVE}" if n else f"{path}: already clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
