"""Batch re-execution: run chapters over a grid of parameter sets (``book/grids/NAME.yaml``).

    python -m book.tools.runs book/grids/NAME.yaml [--force]      # or: make runs GRID=...

Each run goes to ``data/runs/batch/<grid>/<chapter>/<run-id>/``:

* ``parameters.yaml``   the parameters given to papermill (base file, ``set`` and the grid point);
* ``environment.json``  :func:`sae_helpers.environment_report` of those parameters;
* ``<chapter>.ipynb``   the executed notebook (``<chapter>.failed.ipynb`` with the error if it failed);
* ``record.json``       its headline and key numbers (:func:`sae_book.record.read_record`);
* ``finished.json``     written last, atomically, only after papermill succeeded, with the chapter's
  inputs hash (:mod:`book.tools.inputs`) at the time: a rerun skips the run while that hash is
  today's, and executes it again when the package, notebook, parameters or environment changed
  (``--keep-stale`` keeps such runs; the tables and the seed page then name them stale).

A failed or interrupted run has no ``finished.json`` and is executed again on the next call.
Then :mod:`book.tools.keynumbers` gathers the key numbers of the finished runs into
``data/runs/batch/<grid>/key_numbers.{csv,md}``.

Data: a chapter that takes ``data_root`` gets one per grid point,
``data/runs/batch/<grid>/data_root/<point>/``, shared by the grid's chapters at that point (03 and
04 share their BatchTopK family), whose ``cache`` is a link to the book's activation caches (the
harvest does not depend on the swept parameters, so runs share it). Trained SAEs and result
tables stay per point: the chapters' ``results/`` files are not named by seed, and a grid must
not overwrite the book's own ``data/runs`` and ``data/results`` with other numbers. The one
exception is a point of a ``base: book`` grid that gives a chapter exactly the book's parameters
(the seed grid's seed 0): that run is the book's own, so it uses the book's data root and reuses
the SAEs ``make book`` trained (it rewrites the book's result files with the same numbers). When
``make book`` executed that chapter from today's inputs (its recorded inputs hash is current, see
:mod:`book.tools.inputs`), the run is not executed again: the book's executed chapter is copied in
(:func:`adopt`; ``finished.json`` says ``adopted_from``). ``--force`` executes it anyway.

Runs are executed one at a time, under the same lock as ``make book`` (:func:`book.tools.build.build_lock`):
a book point writes the book's own data.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from book.tools import keynumbers
from book.tools.grids import Grid, Point, load_grid, params_hash, points, run_id
from book.tools.inputs import current_chapter, inputs_hash, read_build_record

__all__ = ["REPO", "Run", "adopt", "book_execution", "execute", "main", "plan", "prepare", "run_grid"]

#: The repository root (this file is book/tools/runs.py).
REPO = Path(__file__).resolve().parents[2]
MARKER = "finished.json"


@dataclass(frozen=True)
class Run:
    """One chapter at one grid point."""

    chapter: str
    source: Path
    point: Point
    params: dict[str, Any]
    directory: Path
    shared_cache: Path | None = None
    """The cache the run's own data root links to (made by :func:`prepare`); ``None``: no own root."""
    book_point: bool = False
    """Whether the run gives its chapter exactly the book's parameters (see :func:`book_execution`)."""

    @property
    def notebook(self) -> Path:
        return self.directory / f"{self.chapter}.ipynb"

    @property
    def failed_notebook(self) -> Path:
        return self.directory / f"{self.chapter}.failed.ipynb"

    @property
    def finished(self) -> bool:
        return (self.directory / MARKER).is_file()

    def marker(self) -> dict[str, Any]:
        """What ``finished.json`` says ({} when the run has not finished or the file is unreadable)."""
        try:
            facts = json.loads((self.directory / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

    def stale(self, root: Path) -> bool:
        """Whether the run finished from other inputs than today's (its chapter's inputs hash)."""
        return self.marker().get("inputs") != inputs_hash(self.chapter, root)

    def source_sha256(self) -> str:
        """The sha256 of the source notebook as it is now."""
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def batch_dir(grid: Grid, root: Path = REPO) -> Path:
    """``data/runs/batch/<grid>``: every run of the grid and its key-number tables."""
    return root / "data" / "runs" / "batch" / grid.name


def plan(grid: Grid, root: Path = REPO) -> list[Run]:
    """Every run of ``grid``: for each chapter, each grid point (checks the chapters and parameters).
    Reads only: a run's data root is made by :func:`prepare`, just before it is executed."""
    import papermill

    declared = {}
    for chapter in grid.chapters:
        source = root / "notebooks" / f"{chapter}.ipynb"
        if not source.is_file():
            raise ValueError(f"{grid.path}: chapters: no notebook {source}. Name notebooks/NAME.ipynb without .ipynb")
        declared[chapter] = papermill.inspect_notebook(str(source))
    named = set(grid.fixed) | {name for entries in grid.axes.values() for entry in entries for name in entry}
    unknown = sorted(name for name in named if not any(name in d for d in declared.values()))
    if unknown:
        raise ValueError(f"{grid.path}: set/grid: {unknown} is not a parameter of {list(grid.chapters)}. "
                         "Use names from the notebooks' parameters cells")
    runs = []
    for chapter in grid.chapters:
        base = _base_params(grid, chapter, root)
        for point in points(grid):
            params = {**base, **{k: v for k, v in point.overrides.items() if k in declared[chapter]}}
            directory = batch_dir(grid, root) / chapter / run_id(point, params)
            if not directory.resolve().is_relative_to(batch_dir(grid, root).resolve()):
                raise ValueError(f"{grid.path}: chapters: {chapter!r} would write outside {batch_dir(grid, root)}. "
                                 "Name notebooks/NAME.ipynb as NAME")
            shared_cache = None
            book_point = grid.base == "book" and _is_book_point(point, base, declared[chapter])
            if "data_root" in declared[chapter] and "data_root" not in params:
                default = _default(declared[chapter]["data_root"], "../data")
                if book_point:
                    params["data_root"] = default
                else:
                    params["data_root"] = os.path.relpath(_point_data_root(grid, point, root), root / "notebooks")
                    shared_cache = (root / "notebooks" / default / "cache").resolve()
            runs.append(Run(chapter, root / "notebooks" / f"{chapter}.ipynb", point, params, directory, shared_cache,
                            book_point))
    return runs


def _base_params(grid: Grid, chapter: str, root: Path) -> dict[str, Any]:
    path = root / "book" / "params" / f"{chapter}.yaml"
    if grid.base == "quick" or not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a mapping of parameters")
    return loaded


def _default(parameter: dict[str, Any], fallback: Any) -> Any:
    try:
        return ast.literal_eval(parameter["default"])
    except (KeyError, ValueError, SyntaxError):
        return fallback


_UNSET = object()


def _is_book_point(point: Point, book: dict[str, Any], declared: dict[str, Any]) -> bool:
    """Whether the point gives the chapter exactly the book's parameters (``book/params`` and the
    notebook's defaults): then its run is the book's own and uses the book's data root, where
    ``make book`` already trained its SAEs (results files rewritten with the same numbers)."""
    for name, value in point.overrides.items():
        if name in declared and book.get(name, _default(declared[name], _UNSET)) != value:
            return False
    return True


def _point_data_root(grid: Grid, point: Point, root: Path) -> Path:
    """The point's own data root."""
    return batch_dir(grid, root) / "data_root" / f"{point.label}-{params_hash(point.overrides)}"


def prepare(run: Run) -> None:
    """Make the run's own data root (if it has one), its ``cache`` a link to the shared cache."""
    if run.shared_cache is None:
        return
    directory = (run.source.parent / run.params["data_root"]).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    cache, target = directory / "cache", run.shared_cache
    target.mkdir(parents=True, exist_ok=True)
    link = os.path.relpath(target, directory)
    if cache.is_symlink() and os.readlink(cache) != link and cache.resolve() != target:
        raise ValueError(f"{cache} links to {os.readlink(cache)}, not to the shared cache {target}: remove the link")
    if not cache.is_symlink():
        if cache.exists():
            raise ValueError(f"{cache} exists and is not a link to the shared cache {target}: move it away")
        cache.symlink_to(link, target_is_directory=True)


def execute(run: Run, kernel: str = "python3") -> bool:
    """Execute one run with papermill (working directory notebooks/); True if it succeeded."""
    import papermill

    inputs = inputs_hash(run.chapter, run.source.parents[1])
    _start(run)
    start = time.monotonic()
    try:
        papermill.execute_notebook(str(run.source), str(run.notebook), parameters=run.params, kernel_name=kernel,
                                   cwd=str(run.source.parent), progress_bar=False)
    except Exception:
        if run.notebook.exists():
            os.replace(run.notebook, run.failed_notebook)
        raise
    _finish(run, inputs=inputs, seconds=round(time.monotonic() - start, 1))
    return True


def _start(run: Run) -> None:
    """The run's folder with its parameters and environment, without an old executed copy."""
    from sae_helpers import environment_report
    from sae_helpers._io import atomic_write, atomic_write_json

    run.directory.mkdir(parents=True, exist_ok=True)
    for stale in (run.notebook, run.failed_notebook):
        stale.unlink(missing_ok=True)
    text = yaml.safe_dump(run.params, sort_keys=False)
    atomic_write(run.directory / "parameters.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write_json(run.directory / "environment.json", environment_report(run.params))


def _finish(run: Run, **facts: Any) -> None:
    """Record what the executed notebook recorded, then the marker that the run finished (last)."""
    from sae_book.record import read_record
    from sae_helpers._io import atomic_write_json

    atomic_write_json(run.directory / "record.json", read_record(run.notebook)._asdict())
    atomic_write_json(run.directory / MARKER, {
        "chapter": run.chapter, "point": run.point.labels, "seconds": None, **facts,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_sha256": run.source_sha256()})


def book_execution(run: Run, root: Path = REPO) -> Path | None:
    """The book's executed chapter (``book/chapters/NAME.ipynb``) when it is this run: the run gives
    the chapter exactly the book's parameters, ``make book`` executed it from today's inputs
    (:func:`book.tools.inputs.current_chapter`) and papermill's record of its parameters agrees."""
    import papermill

    if not run.book_point or (executed := current_chapter(run.chapter, root)) is None:
        return None
    try:
        recorded = json.loads(executed.read_text(encoding="utf-8"))["metadata"]["papermill"]["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    declared = papermill.inspect_notebook(str(run.source))
    names = set(recorded) | set(run.params)
    book, wanted = ({n: p[n] if n in p else _default(declared.get(n, {}), _UNSET) for n in names}
                    for p in (recorded, run.params))
    return executed if book == wanted else None


def adopt(run: Run, executed: Path) -> None:
    """Make ``executed`` (:func:`book_execution`) the run's notebook instead of executing it again."""
    from sae_helpers._io import atomic_write

    _start(run)
    atomic_write(run.notebook, lambda tmp: shutil.copyfile(executed, tmp))
    root = run.source.parents[1]
    _finish(run, inputs=(read_build_record(run.chapter, root) or {}).get("inputs"),
            adopted_from=f"{executed.relative_to(root).as_posix()}: make book's execution "
                         "of these parameters from today's inputs (book/tools/inputs.py), copied")


def run_grid(path: str | Path, *, root: Path = REPO, force: bool = False, keep_stale: bool = False,
             kernel: str = "python3", log: Callable[[str], None] = print) -> tuple[list[Run], list[Run]]:
    """Execute every unfinished or stale run of the grid at ``path`` (every run with ``force``; a
    stale one is kept with ``keep_stale``), then write its key-number tables. Returns ``(runs,
    failed)``; a failure does not stop the others."""
    from book.tools.build import build_lock

    grid = load_grid(path)
    runs = plan(grid, root)
    with build_lock(root):
        failed = _execute_runs(runs, root, force, keep_stale, kernel, log)
    finished = [r for r in runs if r.finished]
    stale = [r for r in finished if r.stale(root)]
    written = keynumbers.write_tables(finished, grid, batch_dir(grid, root), stale=stale)
    log(f"key numbers of {len(finished)} finished runs ({len(stale)} stale): "
        + ", ".join(str(path.relative_to(root)) for path in written))
    return runs, failed


def _execute_runs(runs: list[Run], root: Path, force: bool, keep_stale: bool, kernel: str,
                  log: Callable[[str], None]) -> list[Run]:
    failed = []
    for i, run in enumerate(runs, 1):
        where = run.directory.relative_to(root)
        if run.finished and not force:
            if not run.stale(root):
                log(f"[{i}/{len(runs)}] {where}: finished, skipped")
                continue
            if keep_stale:
                log(f"[{i}/{len(runs)}] {where}: finished from other inputs than today's, kept (--keep-stale)")
                continue
            log(f"[{i}/{len(runs)}] {where}: finished from other inputs than today's, executing again")
        (run.directory / MARKER).unlink(missing_ok=True)
        if not force and (executed := book_execution(run, root)) is not None:
            adopt(run, executed)
            log(f"[{i}/{len(runs)}] {where}: the book's own run, {executed.relative_to(root)} (current), copied")
            continue
        log(f"[{i}/{len(runs)}] {where}: executing {run.chapter} with {run.point.labels}")
        try:
            prepare(run)
            execute(run, kernel)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - reported, the other runs go on
            failed.append(run)
            first = str(error).strip().splitlines()[:1] or [type(error).__name__]
            log(f"FAILED {where}: {first[0]} (executed copy: {run.failed_notebook.name})")
    return failed


def main(argv: list[str] | None = None) -> int:
    from book.tools.build import BuildLocked

    parser = argparse.ArgumentParser(prog="python -m book.tools.runs", description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="a grid file, e.g. book/grids/seeds.yaml")
    parser.add_argument("--force", action="store_true", help="re-execute finished runs too")
    parser.add_argument("--keep-stale", action="store_true",
                        help="keep runs finished from other inputs than today's (marked stale in the tables)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3)")
    args = parser.parse_args(argv)
    try:
        _, failed = run_grid(args.grid, force=args.force, keep_stale=args.keep_stale, kernel=args.kernel)
    except (ValueError, BuildLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(str(r.directory) for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
