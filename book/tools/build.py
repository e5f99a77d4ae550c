"""Execute the book's chapters whose inputs changed (``make book``).

    python -m book.tools.build [--force] notebooks/NAME.ipynb ...

For each notebook: when its record (:mod:`book.tools.inputs`) names today's inputs hash and the
sha256 of the executed ``book/chapters/NAME.ipynb``, it is up to date and skipped. Otherwise the
record is removed, papermill executes the notebook (working directory ``notebooks/``, parameters
``book/params/NAME.yaml`` when it exists) into a temporary file beside the chapter, the file is
tidied for the page (:mod:`book.tools.clean_chapters`) and renamed over ``book/chapters/NAME.ipynb``
only once papermill succeeded, and the record is written last. A failed run leaves
``book/chapters/NAME.failed.ipynb`` and the previous chapter untouched; a killed one leaves the
previous chapter without a record, so it is executed again next time.

One build at a time: the build holds an exclusive lock on ``book/chapters/.lock`` (released
by the system when the process ends, however it ends); a second build stops at once and names the
process that holds it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from book.tools.inputs import CHAPTERS, current_chapter, inputs_hash, read_build_record, record_path
from sae_helpers._io import DirectoryBusy as BuildLocked
from sae_helpers._io import directory_lock, sha256_file

__all__ = ["BuildLocked", "build", "build_lock", "execute_chapter", "main"]


def build_lock(root: Path = Path(".")) -> AbstractContextManager[Path]:
    """Hold the exclusive build lock on ``root/book/chapters`` (fails at once, with :class:`BuildLocked`,
    when another build holds it)."""
    return directory_lock(root / CHAPTERS, "executing chapters (make book or make runs)",
                          "Wait for it to finish (or stop it): two builds at once would overwrite each other's "
                          "chapters.")


def _parameters(name: str, root: Path) -> dict:
    import yaml

    path = root / "book" / "params" / f"{name}.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}). Fix the parameter file") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a mapping of parameter names to values. Write one 'name: value' per line")
    return values


def execute_chapter(source: Path, root: Path = Path("."), kernel: str = "python3") -> Path:
    """Execute ``source`` with its book parameters into ``book/chapters/NAME.ipynb`` (atomically)
    and record it. Raises papermill's error after keeping the failed copy."""
    import papermill

    from book.tools.clean_chapters import clean_notebook
    from sae_helpers._io import atomic_write_json

    name = source.stem
    chapters = root / CHAPTERS
    out, failed = chapters / f"{name}.ipynb", chapters / f"{name}.failed.ipynb"
    inputs = inputs_hash(name, root)
    record_path(name, root).unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    chapters.mkdir(parents=True, exist_ok=True)
    partial = chapters / f".{name}.executing.ipynb"
    start = time.monotonic()
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=_parameters(name, root),
                                   kernel_name=kernel, cwd=str(root / "notebooks"), progress_bar=False)
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    clean_notebook(partial)  # the page hides both parameters cells; done before the hash is taken
    os.replace(partial, out)
    atomic_write_json(record_path(name, root), {
        "inputs": inputs, "notebook_sha256": sha256_file(out), "seconds": round(time.monotonic() - start, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return out


def build(notebooks: list[Path], root: Path = Path("."), force: bool = False, kernel: str = "python3",
          log: Callable[[str], None] = print) -> list[Path]:
    """Execute every notebook of ``notebooks`` whose chapter is not current (every one with ``force``),
    holding the build lock. Returns the executed chapters; stops at the first failure."""
    executed = []
    with build_lock(root):
        for source in notebooks:
            name = source.stem
            inputs = inputs_hash(name, root)
            out = root / CHAPTERS / f"{name}.ipynb"
            if force:
                why = "forced"
            elif read_build_record(name, root) is None:
                why = "no record of a previous successful run"
            elif not out.is_file():
                why = f"executed notebook {out} missing"
            elif current_chapter(name, root, inputs) is None:
                why = ("inputs changed" if read_build_record(name, root).get("inputs") != inputs
                       else f"{out} differs from the notebook papermill wrote (edited or saved since)")
            else:
                log(f"{name}: up to date, skipped")
                continue
            log(f"{name}: {why}, executing {source} -> {out}")
            try:
                executed.append(execute_chapter(source, root, kernel))
            except Exception:
                log(f"FAILED: {source} (executed copy with the error: {root / CHAPTERS / f'{name}.failed.ipynb'})")
                raise
    return executed


#: The first line of a placeholder page for a chapter not executed yet (so it can be told from a real page).
PLACEHOLDER = "<!-- placeholder written by book/tools/build.py: the chapter has not been executed -->"


def placeholders(root: Path = Path(".")) -> list[Path]:
    """Give every chapter (:func:`book.tools.chapters.chapter_names`) without an executed notebook a
    short page saying how to execute it (``book/chapters/NAME.md``), so the site builds (under -W)
    from any subset of chapters; remove the placeholder of every chapter that has been executed
    since. Returns the placeholders now in place."""
    from book.tools.chapters import chapter_names, title_and_summary

    written = []
    for name in chapter_names(root):
        executed, placeholder = root / CHAPTERS / f"{name}.ipynb", root / CHAPTERS / f"{name}.md"
        ours = placeholder.is_file() and placeholder.read_text(encoding="utf-8").startswith(PLACEHOLDER)
        if executed.is_file():
            if ours:
                placeholder.unlink()
            continue
        if placeholder.exists() and not ours:
            raise ValueError(f"{placeholder} exists and is not a placeholder of book/tools/build.py: move it away")
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        title, _ = title_and_summary(root / "notebooks" / f"{name}.ipynb")
        placeholder.write_text(f"{PLACEHOLDER}\n\n# {title}\n\n*Not executed in this build.* Execute it with "
                               f"`make book NOTEBOOKS=notebooks/{name}.ipynb` (its source: "
                               f"`notebooks/{name}.ipynb`).\n", encoding="utf-8")
        written.append(placeholder)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.tools.build", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks/NAME.ipynb ...")
    parser.add_argument("--placeholders", action="store_true",
                        help="only write a page for each chapter not executed yet (make html does this)")
    parser.add_argument("--force", action="store_true", help="execute every notebook, even when up to date")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3)")
    args = parser.parse_args(argv)
    if args.placeholders:
        for path in placeholders():
            print(f"{path}: placeholder (chapter not executed)")
        return 0
    missing = [str(path) for path in args.notebooks if not path.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        build(args.notebooks, force=args.force, kernel=args.kernel)
    except (BuildLocked, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # papermill's error names the cell that raised and its traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
