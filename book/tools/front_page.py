"""The front page's computed table of chapters and their headlines, as MyST substitutions.

``{{ chapters_table }}`` (book/intro.md) is a table with one row per chapter
(:func:`book.tools.chapters.chapter_names`): its title and summary (the notebook's first heading
and the paragraph after it) and its headline, the sentence the executed notebook recorded with
``sae_book.record.headline`` (or a clear placeholder when the chapter has not been executed or
recorded none). Each headline is also ``{{ headline_NAME }}``.

Run ``python -m book.tools.front_page`` to print what the front page will show.
"""

from __future__ import annotations

import sys
from pathlib import Path

from book.tools.chapters import CHAPTERS_DIR, NOTEBOOKS_DIR, chapter_names, title_and_summary
from sae_book.record import read_record

__all__ = ["NOT_EXECUTED", "NO_HEADLINE", "chapters_table", "headlines", "substitution_name"]

NOT_EXECUTED = "*(not yet executed)*"
NO_HEADLINE = "*(executed; no headline recorded yet)*"


def substitution_name(chapter: str) -> str:
    """``01_training`` -> ``headline_01_training`` (a valid MyST/Jinja name)."""
    return "headline_" + "".join(c if c.isalnum() else "_" for c in chapter)


def headlines(root: Path) -> dict[str, str]:
    """``{substitution name: markdown}``: every chapter's headline, and the table of all of them."""
    out: dict[str, str] = {}
    for name in chapter_names(root):
        notebook = root / CHAPTERS_DIR / f"{name}.ipynb"
        if not notebook.is_file():
            text = NOT_EXECUTED
        else:
            text = read_record(notebook).headline or NO_HEADLINE
        out[substitution_name(name)] = " ".join(text.split())  # one line: it sits in a table cell
    out["chapters_table"] = chapters_table(root, out)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def chapters_table(root: Path, headline_texts: dict[str, str]) -> str:
    """The front page's markdown table: chapter (linked), what it does, headline result."""
    rows = ["| Chapter | What it does | Headline result |", "| :-- | :-- | :-- |"]
    for name in chapter_names(root):
        title, summary = title_and_summary(root / NOTEBOOKS_DIR / f"{name}.ipynb")
        link = f"{{doc}}`{_cell(title)} <{Path(CHAPTERS_DIR).name}/{name}>`"
        rows.append(f"| {link} | {_cell(summary)} | {_cell(headline_texts[substitution_name(name)])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print each chapter's headline as the front page will show it."""
    root = Path(argv[0] if argv else ".")
    for name, text in headlines(root).items():
        print(f"{name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
