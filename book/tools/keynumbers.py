"""The key numbers of a grid's finished runs, side by side: one row per chapter, number and
setting of the other axes, one column per value of the summarised axis (``over``, e.g. the
seed), then n, mean, std (sample, ddof 1), min and max over that axis.

Numbers come from each executed notebook (:func:`sae_helpers.chapters.record.read_record`);
booleans count as 0/1, text values are listed but not summarised, missing values are left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["STATS", "collect", "summarise", "to_markdown", "write_tables"]

STATS = ("n", "mean", "std", "min", "max")


def collect(runs: Iterable[Any], over: str | None) -> pd.DataFrame:
    """One row per (run, key number): ``chapter``, the point's axes, ``number``, ``value``."""
    from sae_helpers.chapters.record import read_record

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


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers to 4 significant digits)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_tables(runs: Iterable[Any], grid: Any, directory: Path) -> tuple[Path, Path]:
    """Write ``key_numbers.csv`` and ``key_numbers.md`` for ``runs`` in ``directory`` (atomically)."""
    from sae_helpers._io import atomic_write

    runs = list(runs)
    seen = [run.point.labels[grid.over] for run in runs] if grid.over is not None else []
    table = summarise(collect(runs, grid.over), grid.over, seen)
    note = (f"Key numbers of grid `{grid.name}` ({grid.path.name}): {table['number'].nunique()} numbers; "
            + (f"n, mean, std (ddof 1), min, max over `{grid.over}`." if grid.over else "one run per setting."))
    markdown = f"{note}\n\n{to_markdown(table)}" if len(table) else f"{note}\n\nNo key numbers recorded.\n"
    csv = atomic_write(directory / "key_numbers.csv", lambda tmp: table.to_csv(tmp, index=False))
    md = atomic_write(directory / "key_numbers.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    return csv, md
