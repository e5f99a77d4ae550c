"""A chapter's inputs hash: what ``make book`` records in ``book/chapters/NAME.inputs.sha256``
after papermill executed the chapter, and compares to decide whether to execute it again.

The inputs are the source notebook ``notebooks/NAME.ipynb``, ``book/params/NAME.yaml`` (or its
absence), ``requirements.txt``, ``pyproject.toml`` and every ``sae_helpers/**/*.py`` (their paths
included, so a rename counts). The hash is the sha256 of the text::

    notebook NAME <sha256 of the notebook>
    params <sha256 of the parameter file>      (or: params none)
    <sha256>  requirements.txt                 (sha256sum's lines, package files in byte order)
    <sha256>  pyproject.toml
    <sha256>  sae_helpers/__init__.py
    ...

The batch runner uses it too: a grid point with exactly the book's parameters takes the book's
executed chapter when its recorded hash is the current one (:func:`current_chapter`).

    python -m book.tools.inputs NAME     # print the current hash of notebooks/NAME.ipynb's inputs
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

__all__ = ["CHAPTERS", "current_chapter", "inputs_hash"]

#: Where ``make book`` writes the executed chapters and their recorded hashes.
CHAPTERS = Path("book/chapters")
_SHARED = ("requirements.txt", "pyproject.toml")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs_hash(name: str, root: Path = Path(".")) -> str:
    """The current hash of the inputs of chapter ``name`` in the repository at ``root``."""
    notebook = root / "notebooks" / f"{name}.ipynb"
    if not notebook.is_file():
        raise ValueError(f"{notebook}: no such notebook. Name a chapter of notebooks/ without .ipynb")
    params = root / "book" / "params" / f"{name}.yaml"
    package = sorted((p.relative_to(root).as_posix() for p in (root / "sae_helpers").rglob("*.py") if p.is_file()),
                     key=lambda path: path.encode())
    lines = [f"notebook {name} {_sha256(notebook)}",
             f"params {_sha256(params)}" if params.is_file() else "params none",
             *(f"{_sha256(root / path)}  {path}" for path in [*_SHARED, *package])]
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def current_chapter(name: str, root: Path = Path(".")) -> Path | None:
    """``book/chapters/NAME.ipynb`` when ``make book`` executed it from today's inputs, else ``None``."""
    executed, record = root / CHAPTERS / f"{name}.ipynb", root / CHAPTERS / f"{name}.inputs.sha256"
    if not (executed.is_file() and record.is_file()):
        return None
    return executed if record.read_text(encoding="utf-8").strip() == inputs_hash(name, root) else None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m book.tools.inputs NAME", file=sys.stderr)
        return 2
    try:
        print(inputs_hash(argv[0]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
