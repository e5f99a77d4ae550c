"""Sparsity-fidelity frontiers: which runs are Pareto-optimal, and what L0 one
architecture needs to match another's fidelity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def pareto_frontier(results: pd.DataFrame, x: str = "l0", y: str = "loss_recovered", group: str = "arch",
                    higher_is_better: bool = True) -> pd.DataFrame:
    """The runs of each ``group`` not beaten by another run of the same group with both
    lower (or equal) ``x`` and better ``y``; sorted by ``x`` within each group."""
    frames = []
    for _, runs in results.groupby(group, sort=False):
        runs = runs.sort_values([x, y], ascending=[True, not higher_is_better])
        best = -math.inf
        keep = []
        for _, row in runs.iterrows():
            value = row[y] if higher_is_better else -row[y]
            keep.append(value > best)
            best = max(best, value)
        frames.append(runs[keep])
    return pd.concat(frames) if frames else results.iloc[:0]


def l0_to_reach(frontier: pd.DataFrame, target: float, x: str = "l0", y: str = "loss_recovered") -> float:
    """The smallest ``x`` at which a frontier (sorted by ``x``, ``y`` increasing) reaches
    ``y >= target``, interpolating linearly in ``log x`` between frontier points; NaN when
    the frontier never reaches ``target``."""
    xs, ys = frontier[x].to_numpy(float), frontier[y].to_numpy(float)
    if len(xs) == 0 or ys.max() < target:
        return math.nan
    if ys[0] >= target:
        return float(xs[0])
    i = int(np.argmax(ys >= target))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = (target - y0) / (y1 - y0)
    return float(np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0))))


def compare_at_equal_fidelity(results: pd.DataFrame, reference: str = "relu", other: str = "gated",
                              x: str = "l0", y: str = "loss_recovered", group: str = "arch") -> pd.DataFrame:
    """For every frontier run of ``reference``: the ``x`` that ``other``'s frontier needs
    for the same ``y``, and the ratio ``other / reference`` (below 1: ``other`` is sparser
    at equal fidelity). Rows where ``other`` cannot be interpolated (outside its range)
    get NaN."""
    frontier = pareto_frontier(results, x, y, group)
    ref = frontier[frontier[group] == reference]
    oth = frontier[frontier[group] == other]
    rows = []
    for _, row in ref.iterrows():
        needed = l0_to_reach(oth, row[y], x, y) if len(oth) and row[y] >= oth[y].min() else math.nan
        rows.append({f"{x}_{reference}": row[x], y: row[y], f"{x}_{other}": needed,
                     f"{x}_ratio": needed / row[x] if row[x] else math.nan})
    return pd.DataFrame(rows)
