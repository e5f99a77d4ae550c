"""A chapter's inputs hash and the record of its execution.

``make book`` executes a chapter again unless its record (``book/chapters/NAME.build.json``, written
by :mod:`book.tools.build` after papermill succeeded) names both today's inputs hash and the sha256
of the executed notebook beside it. The inputs are everything that can change the chapter's numbers:
the source notebook ``notebooks/NAME.ipynb``, ``book/params/NAME.yaml`` (or its absence),
``requirements.txt``, ``pyproject.toml``, every file of the two packages ``sae_helpers/`` and
``book/sae_book/`` (the GPU profiles and embedded text as much as the code; paths included, so a
rename counts), a local text corpus the
parameter file names as ``dataset`` (every file's content), and the installed Python packages with
their versions: the transitive ones the requirements do not pin, and the embedded model's package
the Makefile pins (``make install`` runs again when the Makefile changes). The hash is the sha256 of
the text::

    notebook NAME <sha256 of the notebook>
    params <sha256 of the parameter file>      (or: params none)
    <sha256>  requirements.txt                 (sha256sum's lines, package files in byte order)
    <sha256>  pyproject.toml
    <sha256>  sae_helpers/__init__.py
    ...
    <sha256>  book/sae_book/__init__.py
    ...
    dataset <sha256>  <path>                   (one line per file of a local corpus)
    installed <name>==<version>                (one line per distribution, sorted)

The batch runner uses it too: a grid point with exactly the book's parameters takes the book's
executed chapter when its record is current (:func:`current_chapter`).

    python -m book.tools.inputs NAME     # print the current hash of notebooks/NAME.ipynb's inputs
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sae_helpers._io import sha256_file

__all__ = ["CHAPTERS", "current_chapter", "input_lines", "inputs_hash", "installed_packages", "read_build_record",
           "record_path"]

#: Where ``make book`` writes the executed chapters and their records.
CHAPTERS = Path("book/chapters")
_SHARED = ("requirements.txt", "pyproject.toml")
_SKIPPED_PARTS = {"__pycache__"}


def _files(directory: Path) -> list[Path]:
    """Every file under ``directory``, compiled bytecode left out, in byte order of the path."""
    found = [p for p in directory.rglob("*") if p.is_file() and p.suffix != ".pyc"
             and not _SKIPPED_PARTS & set(p.relative_to(directory).parts)]
    return sorted(found, key=lambda p: p.as_posix().encode())


def installed_packages() -> list[str]:
    """``name==version`` of every distribution installed for this interpreter, sorted."""
    names = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name:
            names[name.lower().replace("_", "-")] = dist.version
    return [f"{name}=={version}" for name, version in sorted(names.items())]


def _local_dataset(params: Path, root: Path) -> Path | None:
    """The local corpus the parameter file names as ``dataset`` (resolved from notebooks/, the
    chapters' working directory), or ``None`` for the embedded text or a Hugging Face dataset."""
    import yaml

    if not params.is_file():
        return None
    try:
        values = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{params}: not valid YAML ({error}). Fix the parameter file") from error
    dataset = values.get("dataset") if isinstance(values, dict) else None
    if not isinstance(dataset, str):
        return None
    path = (root / "notebooks" / Path(dataset).expanduser()).resolve()
    return path if path.exists() else None


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


#: The packages whose every file is an input: the library and the book's chapters as code.
PACKAGE_DIRS = ("sae_helpers", "book/sae_book")


def _package_files(root: Path) -> list[Path]:
    return [path for folder in PACKAGE_DIRS for path in _files(root / folder)]


def input_lines(name: str, root: Path = Path("."), packages: list[str] | None = None) -> list[str]:
    """The lines whose sha256 is :func:`inputs_hash` (``packages``: the installed ones by default)."""
    notebook = root / "notebooks" / f"{name}.ipynb"
    if not notebook.is_file():
        raise ValueError(f"{notebook}: no such notebook. Name a chapter of notebooks/ without .ipynb")
    params = root / "book" / "params" / f"{name}.yaml"
    shared = [root / path for path in _SHARED if (root / path).is_file()]
    lines = [f"notebook {name} {sha256_file(notebook)}",
             f"params {sha256_file(params)}" if params.is_file() else "params none",
             *(f"{sha256_file(path)}  {path.relative_to(root).as_posix()}" for path in [*shared,
                                                                                    *_package_files(root)])]
    dataset = _local_dataset(params, root)
    if dataset is not None:
        files = _files(dataset) if dataset.is_dir() else [dataset]
        lines += [f"dataset {sha256_file(path)}  {_shown(path, root)}" for path in files]
    lines += [f"installed {package}" for package in (installed_packages() if packages is None else packages)]
    return lines


def inputs_hash(name: str, root: Path = Path("."), packages: list[str] | None = None) -> str:
    """The current hash of the inputs of chapter ``name`` in the repository at ``root``."""
    return hashlib.sha256(("\n".join(input_lines(name, root, packages)) + "\n").encode()).hexdigest()


def record_path(name: str, root: Path = Path(".")) -> Path:
    """``book/chapters/NAME.build.json``: the record of the chapter's last successful execution."""
    return root / CHAPTERS / f"{name}.build.json"


def read_build_record(name: str, root: Path = Path(".")) -> dict[str, Any] | None:
    """The chapter's record ({"inputs": ..., "notebook_sha256": ..., ...}), or ``None`` when there is
    none or it is unreadable."""
    try:
        record = json.loads(record_path(name, root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def current_chapter(name: str, root: Path = Path("."), inputs: str | None = None) -> Path | None:
    """``book/chapters/NAME.ipynb`` when ``make book`` executed it from today's inputs and it is the
    very notebook papermill wrote (its sha256 is the recorded one: an autosave or a half-written
    copy is not), else ``None``. ``inputs``: today's hash, when already computed."""
    executed = root / CHAPTERS / f"{name}.ipynb"
    record = read_build_record(name, root)
    if record is None or not executed.is_file():
        return None
    if record.get("inputs") != (inputs if inputs is not None else inputs_hash(name, root)):
        return None
    return executed if record.get("notebook_sha256") == sha256_file(executed) else None


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
