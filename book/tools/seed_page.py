"""The seed-spread page's tables: book/seed_spread.md shows them as the MyST substitution
``{{ seed_spread }}``, filled at build time by :mod:`book.tools.sphinx_site`.

They are the key-number and effect tables (:func:`book.tools.keynumbers.render`) of the runs of
``book/grids/seeds.yaml`` that have finished under ``data/runs/batch/seeds/`` (``make runs
GRID=book/grids/seeds.yaml``, hours on 2 cores, so not part of ``make book``), under a line
saying how many runs there are, when they finished, which ran another version of their
notebook than the one in ``notebooks/`` now, and which are stale (finished from other inputs
than today's: package, notebook, parameters or environment). Without finished runs the page says how to make
them. Reading never writes anything.

Run ``python -m book.tools.seed_page`` to print what the page will show.
"""

from __future__ import annotations

import sys
from pathlib import Path

from book.tools import keynumbers
from book.tools.grids import load_grid
from book.tools.runs import Run, plan

__all__ = ["SEED_GRID", "seed_spread"]

#: The grid whose runs the page shows, relative to the book's root.
SEED_GRID = "book/grids/seeds.yaml"


def seed_spread(root: Path) -> str:
    """The page's markdown for the book at ``root``: provenance and tables, or how to make them."""
    grid = load_grid(root / SEED_GRID)
    runs = plan(grid, root)
    finished = [run for run in runs if run.finished]
    command = f"`make runs GRID={SEED_GRID}`"
    if not finished:
        return (f"*(Not yet measured in this build: {command} executes the grid's {len(runs)} runs, "
                "then `make html` shows them here.)*")
    markers = [(run, run.marker()) for run in finished]
    sources = {run.chapter: run.source_sha256() for run in finished}
    dates = sorted(str(m.get("finished_at", "?")).replace("T", " ").removesuffix("Z")[:16] for _, m in markers)
    lines = [f"{len(finished)} of {len(runs)} runs finished, between {dates[0]} and {dates[-1]} (UTC)."]
    missing = [_name(run) for run in runs if not run.finished]
    if missing:
        lines.append(f"Not yet run: {', '.join(missing)} ({command} runs them).")
    other = [_name(run) for run, m in markers if m.get("source_sha256") != sources[run.chapter]]
    if other:
        lines.append(f"Executed from another version of its notebook than `notebooks/` holds now: {', '.join(other)}.")
    stale = [run for run in finished if run.stale(root)]
    adopted = [_name(run) for run, m in markers if m.get("adopted_from")]
    if adopted:
        lines.append(f"Copied from the book's own execution with the same parameters: {', '.join(adopted)}.")
    return " ".join(lines) + "\n\n" + keynumbers.render(finished, grid, stale)


def _name(run: Run) -> str:
    """``02_shrinkage seed 1``."""
    return " ".join([run.chapter, *(f"{axis} {value}" for axis, value in run.point.labels.items())])


def main(argv: list[str] | None = None) -> int:
    """Print the page's tables for the book at ``argv[0]`` (default: the working directory)."""
    print(seed_spread(Path(argv[0] if argv else ".")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
