"""The front page's computed headlines: one per executed chapter, as MyST substitutions.

Every chapter listed in ``_toc.yml`` under ``book/chapters/`` gets a substitution
``headline_NAME`` (``NAME`` the notebook's name, e.g. ``{{ headline_01_training }}`` in
book/intro.md): the headline the executed notebook recorded with
``sae_book.record.headline``, or a clear placeholder when the chapter has not been
executed or recorded none. An unknown name in intro.md is an error of the ``-W`` build.

Run ``python -m book.tools.front_page`` to print what the front page will show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from sae_book.record import read_record

__all__ = ["CHAPTERS_DIR", "NOT_EXECUTED", "NO_HEADLINE", "chapter_names", "headlines", "substitution_name"]

#: Where the executed chapters live, relative to the book's root (the folder of _toc.yml).
CHAPTERS_DIR = "book/chapters"
NOT_EXECUTED = "*(not yet executed)*"
NO_HEADLINE = "*(executed; no headline recorded yet)*"


def chapter_names(toc: Path) -> list[str]:
    """The names of the chapters in ``toc`` (a jb-book _toc.yml) that live under book/chapters/."""
    try:
        data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{toc}: cannot read the table of contents ({error})") from error
    names: list[str] = []

    def walk(entries: object) -> None:
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            file = str(entry.get("file", ""))
            if file.startswith(CHAPTERS_DIR + "/"):
                names.append(Path(file).stem)
            walk(entry.get("chapters"))
            walk(entry.get("sections"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters") if isinstance(part, dict) else None)

    walk(data.get("chapters") if isinstance(data, dict) else None)
    for part in (data.get("parts") or []) if isinstance(data, dict) else []:
        walk(part.get("chapters") if isinstance(part, dict) else None)
    return names


def substitution_name(chapter: str) -> str:
    """``01_training`` -> ``headline_01_training`` (a valid MyST/Jinja name)."""
    return "headline_" + "".join(c if c.isalnum() else "_" for c in chapter)


def headlines(root: Path) -> dict[str, str]:
    """``{substitution name: markdown}`` for every chapter in ``root``/_toc.yml."""
    out: dict[str, str] = {}
    for name in chapter_names(root / "_toc.yml"):
        notebook = root / CHAPTERS_DIR / f"{name}.ipynb"
        if not notebook.is_file():
            text = NOT_EXECUTED
        else:
            text = read_record(notebook).headline or NO_HEADLINE
        out[substitution_name(name)] = " ".join(text.split())  # one line: it sits in a table cell
    return out


def main(argv: list[str] | None = None) -> int:
    """Print each chapter's headline as the front page will show it."""
    root = Path(argv[0] if argv else ".")
    for name, text in headlines(root).items():
        print(f"{name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
