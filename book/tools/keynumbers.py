"""The key numbers of a grid's finished runs, side by side: one row per chapter, number and
setting of the other axes, one column per value of the summarised axis (``over``, e.g. the
seed), then n, mean, std (sample, ddof 1), min and max over that axis.

Numbers come from each executed notebook (:func:`sae_book.record.read_record`);
booleans count as 0/1, text values are listed but not summarised, missing values are left out.

When the grid names the nulls of some key numbers (``nulls:``, see :mod:`book.tools.grids`), a
second table gives each such number minus its null, run by run, with the same statistics, whether
the difference has the same sign at every point of ``over`` and ``|mean| / std``: an effect whose
spread is as large as the effect itself shows here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["STATS", "collect", "effects", "render", "summarise", "to_markdown", "write_tables"]

STATS = ("n", "mean", "std", "min", "max")


def collect(runs: Iterable[Any], over: str | None) -> pd.DataFrame:
    """One row per (run, key number): ``chapter``, the point's axes, ``number``, ``value``."""
    from sae_book.record import read_record

    rows, axes = [], {}
    for run in runs:
        labels = {k: v if isinstance(v, int | float | str | bool) else json.dumps(v)
                  for k, v in run.point.labels.items()}
        axes.update(dict.fromkeys(labels))
        for number, value in read_record(run.notebook).key_numbers.items():
            rows.append({"chapter": run.chapter, **labels, "number": number, "value": value})
    if over is not None:
        axes.setdefault(over, None)
    table = pd.DataFrame(rows, columns=["chapter", *axes, "number", "value"])
    return table


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def summarise(long: pd.DataFrame, over: str | None, over_values: Iterable[Any] = ()) -> pd.DataFrame:
    """The wide table (see the module docstring) from :func:`collect`'s rows; ``over_values``
    gives the columns' order (values only in ``long`` follow)."""
    axes = [c for c in long.columns if c not in ("chapter", "number", "value", over)]
    keys = ["chapter", *axes, "number"]
    over_values = list(dict.fromkeys([*over_values, *long[over]])) if over is not None else []
    rows = []
    for key, group in long.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        if over is not None:
            for value in over_values:
                found = group.loc[group[over] == value, "value"]
                row[f"{over} {value}"] = found.iloc[0] if len(found) else None
        numbers = [x for x in map(_numeric, group["value"]) if x is not None]
        series = pd.Series(numbers, dtype=float)
        row.update(n=len(numbers), mean=series.mean() if numbers else None,
                   std=series.std(ddof=1) if len(numbers) > 1 else None,
                   min=series.min() if numbers else None, max=series.max() if numbers else None)
        if over is None:
            row = {**row, "value": group["value"].iloc[0]}
        rows.append(row)
    columns = keys + ([f"{over} {v}" for v in over_values] if over is not None else ["value"]) + list(STATS)
    return pd.DataFrame(rows, columns=columns)


def effects(long: pd.DataFrame, nulls: dict[str, dict[str, float | str]], over: str | None,
            over_values: Iterable[Any] = ()) -> pd.DataFrame:
    """Each key number named in ``nulls`` minus its null, run by run, summarised as by
    :func:`summarise`, plus ``same sign`` (every run's difference on the same side of 0, from at
    least two runs) and ``|mean| / std``. Runs missing the number or its null are left out."""
    axes = [c for c in long.columns if c not in ("chapter", "number", "value")]
    rows = []
    for key, run in long.groupby(["chapter", *axes], sort=False, dropna=False):
        where = dict(zip(["chapter", *axes], key if isinstance(key, tuple) else (key,), strict=True))
        values = dict(zip(run["number"], run["value"], strict=True))
        for number, null in nulls.get(where["chapter"], {}).items():
            value = _numeric(values.get(number))
            base = _numeric(values.get(null)) if isinstance(null, str) else float(null)
            if value is not None and base is not None:
                name = f"{number} − {null if isinstance(null, str) else f'{null:g}'}"
                rows.append({**where, "number": name, "value": value - base})
    table = summarise(pd.DataFrame(rows, columns=list(long.columns)), over, over_values)
    differences = table[[c for c in table.columns if over is not None and c.startswith(f"{over} ")]]
    signs = differences.apply(lambda row: {(v > 0) - (v < 0) for v in row.dropna()}, axis=1)
    table["same sign"] = [len(s) == 1 and 0 not in s and n > 1 for s, n in zip(signs, table["n"], strict=True)]
    table["|mean| / std"] = [abs(m) / sd if sd else None for m, sd in zip(table["mean"], table["std"], strict=True)]
    return table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers to 4 significant digits)."""
    lines = ["| " + " | ".join(_cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _tables(runs: list[Any], grid: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The key numbers' table and the effects' table (empty without ``grid.nulls``)."""
    seen = [run.point.labels[grid.over] for run in runs] if grid.over is not None else []
    long = collect(runs, grid.over)
    return summarise(long, grid.over, seen), effects(long, grid.nulls, grid.over, seen)


def render(runs: Iterable[Any], grid: Any, stale: Iterable[Any] = ()) -> str:
    """Both tables of ``runs`` as markdown, each under a sentence saying what it holds (and which
    of the runs are ``stale``: finished from other inputs than today's)."""
    return _render(*_tables(list(runs), grid), grid, stale)


def _run_name(run: Any) -> str:
    return " ".join([run.chapter, *(f"{axis} {value}" for axis, value in run.point.labels.items())])


def _render(table: pd.DataFrame, effect: pd.DataFrame, grid: Any, stale: Iterable[Any] = ()) -> str:
    stats = f"n, mean, std (ddof 1), min, max over `{grid.over}`." if grid.over else "one run per setting."
    note = f"Key numbers of grid `{grid.name}` ({grid.path.name}): {table['number'].nunique()} numbers; {stats}"
    stale = [_run_name(run) for run in stale]
    if stale:
        note += (f" **Stale** (finished from other inputs than today's, kept with --keep-stale; not comparable "
                 f"with the others): {', '.join(stale)}.")
    parts = [note, to_markdown(table) if len(table) else "No key numbers recorded.\n"]
    if grid.nulls:
        parts.append(f"Effects: each key number minus its null (a value, or the same run's control number); {stats} "
                     "`same sign`: the difference is on the same side of 0 in every run; `|mean| / std`: the effect "
                     "in units of its spread.")
        parts.append(to_markdown(effect) if len(effect) else "No run recorded a number and its null.\n")
    return "\n\n".join(parts)


def write_tables(runs: Iterable[Any], grid: Any, directory: Path, stale: Iterable[Any] = ()) -> tuple[Path, ...]:
    """Write ``key_numbers.csv``, ``effects.csv`` (when the grid names nulls) and ``key_numbers.md``
    (both tables, naming the ``stale`` runs) for ``runs`` in ``directory``, each atomically;
    returns the paths written."""
    from sae_helpers._io import atomic_write

    table, effect = _tables(list(runs), grid)
    markdown = _render(table, effect, grid, stale)
    written = [atomic_write(directory / "key_numbers.csv", lambda tmp: table.to_csv(tmp, index=False))]
    if grid.nulls:
        written.append(atomic_write(directory / "effects.csv", lambda tmp: effect.to_csv(tmp, index=False)))
    written.append(atomic_write(directory / "key_numbers.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8")))
    return tuple(written)
