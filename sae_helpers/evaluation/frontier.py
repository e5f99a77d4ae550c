"""Sparsity-fidelity frontiers: which runs are Pareto-optimal, and what L0 one
architecture needs to match another's fidelity."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def pareto_frontier(results: pd.DataFrame, x: str = "l0", y: str = "loss_recovered", group: str = "arch",
                    higher_is_better: bool = True) -> pd.DataFrame:
    """The runs of each ``group`` not beaten by another run of the same group with both
    lower (or equal) ``x`` and better ``y``; sorted by ``x`` within each group."""
    import pandas as pd

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
    import pandas as pd

    frontier = pareto_frontier(results, x, y, group)
    ref = frontier[frontier[group] == reference]
    oth = frontier[frontier[group] == other]
    rows = []
    for _, row in ref.iterrows():
        needed = l0_to_reach(oth, row[y], x, y) if len(oth) and row[y] >= oth[y].min() else math.nan
        rows.append({f"{x}_{reference}": row[x], y: row[y], f"{x}_{other}": needed,
                     f"{x}_ratio": needed / row[x] if row[x] else math.nan})
    return pd.DataFrame(rows)


def _frontier_l0s(l0: np.ndarray, y: np.ndarray, targets: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """:func:`l0_at_fidelity` for several targets, on arrays (the bootstrap's inner loop)."""
    score = y if higher_is_better else -y
    order = np.lexsort((-score, l0))  # by L0, the better score first among equal L0s
    xs, ys = l0[order], score[order]
    keep = ys > np.maximum.accumulate(np.concatenate([[-np.inf], ys[:-1]]))
    xs, ys = xs[keep], ys[keep]  # the frontier: each point better than every point of lower L0
    goals = targets if higher_is_better else -targets
    out = np.full(len(goals), np.nan)
    if len(xs) == 0:
        return out
    inside = (goals >= ys[0]) & (goals <= ys[-1])
    # log L0 is linear in the score between neighbouring frontier points (np.interp needs rising ys: they are).
    out[inside] = np.exp(np.interp(goals[inside], ys, np.log(xs)))
    return out


def l0_at_fidelity(runs: pd.DataFrame, target: float, x: str = "l0", y: str = "fvu",
                   higher_is_better: bool = False) -> float:
    """The ``x`` (L0) at which the Pareto frontier of ``runs`` (one architecture) reaches ``y = target``,
    interpolated linearly in ``log x`` between neighbouring frontier points; NaN outside the frontier's
    range of ``y`` (no extrapolation). For a ``y`` where lower is better (FVU, delta LM loss) the
    frontier is the lower envelope."""
    return float(_frontier_l0s(runs[x].to_numpy(float), runs[y].to_numpy(float), np.array([float(target)]),
                               higher_is_better)[0])


def fidelity_targets(results: pd.DataFrame, y: str, reference: str, other: str, group: str = "arch",
                     quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[float]:
    """Fidelities at which two architectures can be compared: the ``quantiles`` of the interval of
    ``y`` both cover (the overlap of their ranges); empty when they do not overlap."""
    ranges = [results.loc[results[group] == arch, y].agg(["min", "max"]) for arch in (reference, other)]
    low, high = max(r["min"] for r in ranges), min(r["max"] for r in ranges)
    if not high > low:
        return []
    return [float(low + q * (high - low)) for q in quantiles]


def l0_ratio_at_fidelity(results: pd.DataFrame, targets: list[float], *, y: str = "fvu",
                         higher_is_better: bool = False, reference: str = "relu", other: str = "gated",
                         group: str = "arch", cluster: str | None = "seed", n_boot: int = 2000,
                         confidence: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """``other``'s L0 over ``reference``'s at each fidelity ``y = target`` (each read off its own
    Pareto frontier, :func:`l0_at_fidelity`), with a bootstrap interval.

    The bootstrap resamples the runs with replacement, within each architecture and, when
    ``results`` has a ``cluster`` column with several values (seeds), first the clusters and then
    the runs of each: the interval covers both the spread of the sweep's points and the seed to
    seed spread. Returns one row per target: ``target``, ``ratio`` (on all runs), ``low`` and
    ``high`` (the central ``confidence`` interval of the resampled ratios), ``resolved`` (the share
    of resamples in which both frontiers reach the target) and the two L0s."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    pair = results[results[group].isin([reference, other])]
    clusters = (sorted(pair[cluster].unique()) if cluster is not None and cluster in pair.columns
                and pair[cluster].nunique() > 1 else [None])

    goals = np.asarray(targets, dtype=float)
    # Per cluster and architecture, the runs' (L0, y) as arrays.
    cells = {(c, arch): (runs["l0"].to_numpy(float), runs[y].to_numpy(float))
             for c in range(len(clusters))
             for arch, runs in (pair if clusters[c] is None else pair[pair[cluster] == clusters[c]]).groupby(group)}

    def ratios(chosen: list[int], resample: bool) -> np.ndarray:
        l0s = {}
        for arch in (reference, other):
            parts = [cells[(c, arch)] for c in chosen if (c, arch) in cells]
            if resample:
                parts = [(l0[idx], v[idx]) for l0, v in parts for idx in [rng.integers(0, len(l0), len(l0))]]
            if not parts:
                return np.full(len(goals), np.nan)
            l0s[arch] = _frontier_l0s(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                      goals, higher_is_better)
        return l0s[other] / l0s[reference]

    point = ratios(list(range(len(clusters))), resample=False)
    boot = (np.array([ratios(list(rng.choice(len(clusters), len(clusters))), resample=True) for _ in range(n_boot)])
            if targets else np.zeros((n_boot, 0)))
    tail = (1 - confidence) / 2
    rows = []
    for i, target in enumerate(targets):
        finite = boot[:, i][np.isfinite(boot[:, i])]
        low, high = (np.quantile(finite, [tail, 1 - tail]) if len(finite) else (math.nan, math.nan))
        rows.append({"target": target, "ratio": point[i], "low": float(low), "high": float(high),
                     "resolved": len(finite) / n_boot,
                     f"l0_{reference}": l0_at_fidelity(pair[pair[group] == reference], target, y=y,
                                                       higher_is_better=higher_is_better),
                     f"l0_{other}": l0_at_fidelity(pair[pair[group] == other], target, y=y,
                                                   higher_is_better=higher_is_better)})
    return pd.DataFrame(rows)
