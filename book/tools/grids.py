"""A batch grid: chapters run over the cartesian product of parameter values.

A grid is a YAML file, ``book/grids/NAME.yaml``::

    chapters: [02_shrinkage, 03_completeness]   # notebooks/NAME.ipynb
    base: book        # book: book/params/NAME.yaml (the notebook's defaults where there is none);
                      # quick: the notebook's own (quick) defaults
    set: {steps: 500} # optional: fixed overrides for every run
    grid:             # the axes; the runs are their cartesian product
      seed: [0, 1, 2]
      l1: [1.0, 2.0]
      pair:           # an axis of linked settings: each entry sets several parameters together
        - {seed: 0, control_seed: 1}
        - {seed: 1, control_seed: 2}
    over: seed        # optional: the axis the table summarises (default: the axis named seed)
    nulls:            # optional: what key numbers are compared with, for the table of effects
      02_shrinkage:   # (each value minus its null, at every point, and the spread of that)
        l0_ratio: 1                           # a fixed value
      03_completeness:
        "novel: 1152 -> 2304": "novel: control"   # or another key number of the same run

A scalar axis ``name: [v1, v2]`` sets the parameter ``name``. Each run's id is built from the
values of its axes (readable) and a hash of every parameter it is given (stable: the same
parameters always give the same id, other parameters another id).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["BASES", "Grid", "Point", "load_grid", "params_hash", "points", "run_id"]

#: Where a grid's base parameters come from.
BASES = ("book", "quick")
_KEYS = {"chapters", "base", "set", "grid", "over", "nulls"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Grid:
    """A parsed grid file."""

    name: str
    path: Path
    chapters: tuple[str, ...]
    base: str
    fixed: dict[str, Any]
    axes: dict[str, list[dict[str, Any]]]
    over: str | None
    nulls: dict[str, dict[str, float | str]] = field(default_factory=dict)
    """``{chapter: {key number: its null}}``: a fixed value or the name of another key number."""


@dataclass(frozen=True)
class Point:
    """One point of the grid: each axis's label value and the parameters the point sets."""

    labels: dict[str, Any]
    overrides: dict[str, Any]

    @property
    def label(self) -> str:
        """A readable, path-safe label, e.g. ``seed-1_l1-2.0``."""
        return "_".join(f"{_slug(axis)}-{_slug(value)}" for axis, value in self.labels.items()) or "base"


def _fail(path: Path, field: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{path}: {field}: {problem}. {fix}")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (errors name the file, the field and the fix)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the grid file ({error})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise _fail(path, "top level", "is not a mapping", "Write `chapters:`, `base:` and `grid:` keys")
    unknown = set(raw) - _KEYS
    if unknown:
        raise _fail(path, ", ".join(sorted(unknown)), "unknown key", f"Use only {sorted(_KEYS)}")
    chapters = raw.get("chapters")
    if isinstance(chapters, str):
        chapters = [chapters]
    if not chapters or not all(isinstance(c, str) and c for c in chapters):
        raise _fail(path, "chapters", f"got {chapters!r}", "List notebook names, e.g. [00_known_features]")
    for chapter in chapters:
        if not _NAME.fullmatch(chapter) or chapter in (".", ".."):
            raise _fail(path, "chapters", f"{chapter!r} is not a notebook name (runs are written under "
                        "data/runs/batch/<grid>/<chapter>/)", "Name notebooks/NAME.ipynb as NAME, without a path")
    base = raw.get("base", "book")
    if base not in BASES:
        raise _fail(path, "base", f"got {base!r}", f"Use one of {BASES}")
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise _fail(path, "set", f"got {fixed!r}", "Give a mapping {parameter: value}")
    axes = _axes(path, raw.get("grid") or {})
    _one_setter_per_parameter(path, fixed, axes)
    over = raw.get("over", "seed" if "seed" in axes else None)
    if over is not None and over not in axes:
        raise _fail(path, "over", f"{over!r} is not an axis of grid", f"Use one of {sorted(axes)} or leave it out")
    return Grid(path.stem, path, tuple(chapters), base, dict(fixed), axes, over,
                _nulls(path, raw.get("nulls") or {}, chapters))


def _nulls(path: Path, nulls: Any, chapters: list[str]) -> dict[str, dict[str, float | str]]:
    if not isinstance(nulls, dict):
        raise _fail(path, "nulls", f"got {nulls!r}", "Give a mapping {chapter: {key number: null}}")
    for chapter, numbers in nulls.items():
        if chapter not in chapters:
            raise _fail(path, f"nulls.{chapter}", "is not one of the grid's chapters", f"Use one of {chapters}")
        if not isinstance(numbers, dict) or not numbers:
            raise _fail(path, f"nulls.{chapter}", f"got {numbers!r}", "Give a mapping {key number: null}")
        for number, null in numbers.items():
            if isinstance(null, bool) or not isinstance(null, int | float | str) or null == number:
                raise _fail(path, f"nulls.{chapter}.{number}", f"got {null!r}",
                            "Give a number, or the name of another key number of the same chapter")
    return {chapter: {str(k): (float(v) if not isinstance(v, str) else v) for k, v in numbers.items()}
            for chapter, numbers in nulls.items()}


def _axes(path: Path, grid: Any) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(grid, dict):
        raise _fail(path, "grid", f"got {grid!r}", "Give a mapping {axis: [values]}")
    axes: dict[str, list[dict[str, Any]]] = {}
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"grid.{axis}", f"got {values!r}", "Give a non-empty list of values")
        if all(isinstance(v, dict) for v in values):
            if not all(v for v in values):
                raise _fail(path, f"grid.{axis}", "an entry is empty", "Each entry sets at least one parameter")
            axes[axis] = [dict(v) for v in values]
        elif any(isinstance(v, dict) for v in values):
            raise _fail(path, f"grid.{axis}", "mixes values and mappings", "Use only values or only mappings")
        else:
            axes[axis] = [{axis: v} for v in values]
        entries = axes[axis]
        for i, j in itertools.combinations(range(len(entries)), 2):
            if _same(entries[i], entries[j]):
                raise _fail(path, f"grid.{axis}", f"entries {values[i]!r} and {values[j]!r} set the same values "
                            "(1, 1.0 and true are equal for a notebook)", "List each value once")
    return axes


def _same(a: Any, b: Any) -> bool:
    """Whether two entries give a notebook the same values (Python equality: 1 == 1.0 == True)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values YAML cannot compare are different
        return False


def _one_setter_per_parameter(path: Path, fixed: dict[str, Any], axes: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse a parameter set by two axes, or by ``set`` and an axis: the later one would silently win
    and the runs' labels would name values that never ran."""
    setters: dict[str, str] = {name: "set" for name in fixed}
    for axis, entries in axes.items():
        for name in dict.fromkeys(name for entry in entries for name in entry):
            if name in setters:
                raise _fail(path, f"grid.{axis}", f"sets {name!r}, which {setters[name]} also sets (the runs would "
                            "be labelled with values that never ran)", f"Set {name!r} in one place only")
            setters[name] = f"grid.{axis}"


def points(grid: Grid) -> list[Point]:
    """Every point of the grid (the cartesian product of its axes), in file order."""
    result = []
    for combo in itertools.product(*grid.axes.values()):
        labels, overrides = {}, dict(grid.fixed)
        for (axis, entries), entry in zip(grid.axes.items(), combo, strict=True):
            labels[axis] = entry.get(axis, entries.index(entry))
            overrides.update(entry)
        result.append(Point(labels, overrides))
    return result


def params_hash(params: dict[str, Any]) -> str:
    """A short hash of a parameter set (key order does not matter)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_id(point: Point, params: dict[str, Any]) -> str:
    """A run's folder name: its point's label and the hash of the parameters it is given."""
    return f"{point.label}-{params_hash(params)}"


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.,=+-]+", "", text.replace(" ", ""))[:40] or "x"
