"""The book's chapters: one per notebook in ``notebooks/``, in name order.

The table of contents (a glob over ``book/chapters/``), the front page's table, the pages of
chapters not executed yet and the site check all read this list, so a new chapter is its
notebook (with its module in ``book/sae_book/``, its tests, its book parameters and its GPU
profile); nothing else lists it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["CHAPTERS_DIR", "NOTEBOOKS_DIR", "chapter_names", "title_and_summary"]

#: Where the executed chapters live and where their sources live, relative to the repository root.
CHAPTERS_DIR = "book/chapters"
NOTEBOOKS_DIR = "notebooks"


def chapter_names(root: Path = Path(".")) -> list[str]:
    """The chapters' names (``00_known_features``, ...): the notebooks of ``root/notebooks``, sorted."""
    folder = root / NOTEBOOKS_DIR
    return sorted(path.stem for path in folder.glob("*.ipynb") if not path.name.startswith("."))


def title_and_summary(notebook: Path) -> tuple[str, str]:
    """A notebook's title (its first ``# `` heading) and summary (the first sentence after it, on one line)."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{notebook}: not a readable notebook ({error})") from error
    for cell in cells:
        text = "".join(cell.get("source", "")) if cell.get("cell_type") == "markdown" else ""
        if text.startswith("# "):
            heading, _, rest = text.partition("\n")
            paragraph = " ".join(rest.strip().split("\n\n")[0].split())
            return heading[2:].strip(), re.split(r"(?<=[.?!])\s+(?=[A-Z*])", paragraph, maxsplit=1)[0]
    raise ValueError(f"{notebook}: no '# Title' heading in a markdown cell. Start the chapter with one")
