"""book/tools/grids.py: grid files, their points and run ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from book.tools.grids import load_grid, points, run_id


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_cartesian_product_in_file_order(tmp_path):
    grid = load_grid(_grid(tmp_path, "chapters: [a, b]\nbase: quick\nset: {steps: 5}\ngrid:\n  seed: [0, 1]\n"
                                      "  l1: [1.0, 2.0, 3.0]\n"))
    assert grid.name == "g" and grid.chapters == ("a", "b") and grid.base == "quick" and grid.over == "seed"
    found = points(grid)
    assert len(found) == 6
    assert found[0].overrides == {"steps": 5, "seed": 0, "l1": 1.0}
    assert found[-1].overrides == {"steps": 5, "seed": 1, "l1": 3.0}
    assert [p.label for p in found[:2]] == ["seed-0_l1-1.0", "seed-0_l1-2.0"]


def test_linked_axis_sets_parameters_together(tmp_path):
    grid = load_grid(_grid(tmp_path, "chapters: a\ngrid:\n  seed:\n    - {seed: 0, control_seed: 1}\n"
                                      "    - {seed: 5, control_seed: 6}\n"))
    assert grid.base == "book"
    assert [p.overrides for p in points(grid)] == [{"seed": 0, "control_seed": 1}, {"seed": 5, "control_seed": 6}]
    assert [p.labels for p in points(grid)] == [{"seed": 0}, {"seed": 5}]


def test_run_id_is_stable_and_follows_every_parameter(tmp_path):
    grid = load_grid(_grid(tmp_path, "chapters: a\ngrid:\n  seed: [0, 1]\n"))
    p0, p1 = points(grid)
    assert run_id(p0, {"seed": 0, "steps": 5}) == run_id(p0, {"steps": 5, "seed": 0})
    assert run_id(p0, {"seed": 0, "steps": 5}) != run_id(p0, {"seed": 0, "steps": 6})
    assert run_id(p0, {"seed": 0}).startswith("seed-0-") and run_id(p1, {"seed": 1}).startswith("seed-1-")


@pytest.mark.parametrize(("text", "field"), [
    ("chapters: a\nbase: fast\n", "base"),
    ("chapters: []\n", "chapters"),
    ("chapters: a\ngrid: {seed: []}\n", "grid.seed"),
    ("chapters: a\ngrid: {seed: [1, 1]}\n", "grid.seed"),
    ("chapters: a\ngrid: {seed: [1, {seed: 2}]}\n", "grid.seed"),
    ("chapters: a\ngrid: {seed: [1]}\nover: l1\n", "over"),
    ("chapters: a\nseeds: [1]\n", "seeds"),
    ("- a\n", "top level"),
    ("chapters: a\nnulls: [1]\n", "nulls"),
    ("chapters: a\nnulls: {b: {x: 1}}\n", "nulls.b"),
    ("chapters: a\nnulls: {a: {}}\n", "nulls.a"),
    ("chapters: a\nnulls: {a: {x: true}}\n", "nulls.a.x"),
    ("chapters: a\nnulls: {a: {x: x}}\n", "nulls.a.x"),
    ("chapters: a\nnulls: {a: {x: [1]}}\n", "nulls.a.x"),
    # values a notebook cannot tell apart, parameters set in two places, names that are paths
    ("chapters: a\ngrid: {seed: [1, 1.0, true]}\n", "grid.seed"),
    ("chapters: a\ngrid: {v: [{seed: 1, l1: 2}, {l1: 2.0, seed: true}]}\n", "grid.v"),
    ("chapters: a\ngrid:\n  seed: [0, 1]\n  variant: [{seed: 5, l1: 1}, {l1: 2}]\n", "grid.variant"),
    ("chapters: a\nset: {seed: 3}\ngrid: {seed: [0, 1]}\n", "grid.seed"),
    ("chapters: [../../..]\n", "chapters"),
    ("chapters: [a/b]\n", "chapters"),
    ("chapters: [..]\n", "chapters"),
])
def test_errors_name_the_file_and_field(tmp_path, text, field):
    path = _grid(tmp_path, text)
    with pytest.raises(ValueError, match=f"{path}: {field}"):
        load_grid(path)


def test_nulls_are_values_or_other_numbers(tmp_path):
    grid = load_grid(_grid(tmp_path, "chapters: [a, b]\nnulls:\n  a: {ratio: 1, 'x: one': 'x: control'}\n"))
    assert grid.nulls == {"a": {"ratio": 1.0, "x: one": "x: control"}}
    assert load_grid(_grid(tmp_path, "chapters: a\n")).nulls == {}


def test_the_book_grids_load():
    root = Path(__file__).resolve().parents[2] / "book" / "grids"
    for path in sorted(root.glob("*.yaml")):
        grid = load_grid(path)
        assert points(grid), path
    seeds = load_grid(root / "seeds.yaml")
    assert seeds.chapters == ("02_shrinkage", "03_completeness", "04_atomicity") and seeds.base == "book"
    assert [p.overrides["seed"] for p in points(seeds)] == [0, 1, 2]
