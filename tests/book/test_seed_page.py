"""book/tools/seed_page.py: the seed-spread page's tables from the seed grid's finished runs."""

from __future__ import annotations

import json
from pathlib import Path

from book.tools import runs, seed_page
from tests.book.notebooks import write_notebook

GRID = "chapters: [tiny]\nbase: book\ngrid:\n  seed: [1, 2, 3]\nnulls:\n  tiny: {value: 0}\n"


def _book(root: Path) -> Path:
    write_notebook(root / "notebooks" / "tiny.ipynb", "seed = 0\n",
                   "from sae_book import record\nrecord.key_numbers({'value': seed - 1.5})\n")
    (root / "book" / "grids").mkdir(parents=True)
    (root / seed_page.SEED_GRID).write_text(GRID)
    return root


def test_without_runs_the_page_says_how_to_make_them_and_writes_nothing(tmp_path: Path) -> None:
    root = _book(tmp_path)
    text = seed_page.seed_spread(root)
    assert "Not yet measured" in text and "make runs GRID=book/grids/seeds.yaml" in text and "3 runs" in text
    assert not (root / "data").exists()


def test_the_page_shows_finished_runs_what_is_missing_and_stale_sources(tmp_path: Path) -> None:
    root = _book(tmp_path)
    planned = runs.plan(runs.load_grid(root / seed_page.SEED_GRID), root)
    for run in planned[:2]:
        runs.execute(run)
    text = seed_page.seed_spread(root)
    assert text.startswith("2 of 3 runs finished, between ") and "Not yet run: tiny seed 3" in text
    assert "| tiny | value | -0.5 | 0.5 | 2 | 0 |" in text  # the key numbers' table
    assert "| tiny | value − 0 | -0.5 | 0.5 | 2 | 0 | 0.7071 | -0.5 | 0.5 | False | 0 |" in text  # the effects'
    assert "another version" not in text and "Copied from" not in text
    # a run from an older notebook, and one copied from the book, are named as such
    marker = planned[0].directory / runs.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "source_sha256": "0" * 64,
                                  "adopted_from": "book/chapters/tiny.ipynb"}))
    text = seed_page.seed_spread(root)
    assert "another version of its notebook than `notebooks/` holds now: tiny seed 1." in text
    assert "Copied from the book's own execution with the same parameters: tiny seed 1." in text
