"""When has training stopped improving? A plateau criterion on held-out curves.

A run evaluates its SAE on a fixed set of held-out activations every few steps (the
training log's ``heldout_fvu`` and ``heldout_l0``). Over a window, the last ``window``
fraction of the steps so far, each metric's *relative change* is the rise of its Theil-Sen
line (the median of the slopes between every pair of its points) from the window's start to
its end, divided by the metric's mean in the window:

    change = median_{i<j} (y_j - y_i) / (t_j - t_i) * (t_end - t_start) / mean(values)

The slope uses every point, so evaluation noise averages out instead of deciding the verdict
through two end points, and, unlike a least-squares slope, one outlying evaluation barely
moves it: a single training step that throws the held-out FVU up for one evaluation would
otherwise tilt the line of a curve still falling and fake a plateau. FVU is a share of the
variance, so its mean is floored at 1% (:data:`RELATIVE_FLOORS`): an SAE that reconstructs
almost perfectly, whose FVU halves from 0.0002 to 0.0001, has not changed by 50% in any sense
that matters.

The run has plateaued when every metric's ``|change|`` is at most ``tolerance`` and the window
lies where the learning rate and the sparsity coefficient are constant (after the warm-ups and
the last resampling's recovery): a decaying learning rate flattens any curve, so a plateau
measured under it means nothing.

A window that is a fraction of the run, not a fixed number of steps, asks the right
question of curves that fall like a power of the step: a loss ``~ t^-a`` changes by about
``a * ln(1 / (1 - window))`` over the last ``window`` of the run however long it is, so the
criterion stops a run once its exponent is small, not merely once steps are cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

#: The held-out metrics a plateau is judged on.
PLATEAU_METRICS = ("heldout_fvu", "heldout_l0")
#: Fewest evaluations in a window for a verdict.
MIN_POINTS = 5
#: The smallest denominator of a metric's relative change (FVU: 1% of the variance).
RELATIVE_FLOORS = {"heldout_fvu": 0.01}


class PlateauCheck(NamedTuple):
    """A plateau verdict: ``plateaued``, each metric's relative ``changes`` over the window
    ``[start, end]`` (steps), the number of evaluations in it, and ``reason`` when not plateaued."""

    plateaued: bool
    changes: dict[str, float]
    start: float
    end: float
    points: int
    reason: str


def relative_change(steps: Sequence[float], values: Sequence[float], floor: float = 0.0) -> float:
    """The Theil-Sen line's rise over ``steps``' span, divided by the mean of ``values`` (at least
    ``floor``); NaN for fewer than two distinct steps or a zero denominator."""
    t = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    scale = max(abs(y.mean()), floor) if y.size else 0.0
    if t.size < 2 or np.ptp(t) == 0 or scale == 0:
        return math.nan
    return float(theil_sen_slope(t, y) * np.ptp(t) / scale)


def theil_sen_slope(t: np.ndarray, y: np.ndarray) -> float:
    """The median of the slopes ``(y_j - y_i) / (t_j - t_i)`` over all pairs of points at
    distinct steps: a line's slope that outlying points cannot carry away unless they are over 29% of them."""
    i, j = np.triu_indices(t.size, k=1)
    distinct = t[i] != t[j]
    return float(np.median((y[j] - y[i])[distinct] / (t[j] - t[i])[distinct]))


def metric_points(log: Sequence[Mapping[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the log records holding a finite ``metric``, in step order."""
    points = sorted(
        (float(r["step"]), float(r[metric])) for r in log
        if isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool)
        and math.isfinite(r[metric]) and "step" in r
    )
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points, strict=True)
    return np.asarray(steps), np.asarray(values)


def plateau_check(
    log: Sequence[Mapping[str, Any]],
    *,
    tolerance: float,
    window: float = 0.25,
    constant_from: float = 0,
    metrics: Sequence[str] = PLATEAU_METRICS,
    min_points: int = MIN_POINTS,
) -> PlateauCheck:
    """Whether a training log has plateaued (see the module docstring).

    ``log``: training-log records (``step`` and the ``metrics``); the window ends at the last
    record holding them and spans ``window`` of that step. ``constant_from``: the first step at
    constant learning rate (:func:`~.schedules.constant_from`); a window starting earlier gives
    no plateau. ``min_points``: fewest evaluations in the window.
    """
    if not tolerance > 0 or not 0 < window <= 1:
        raise ValueError(f"Need tolerance > 0 and 0 < window <= 1, got {tolerance!r}, {window!r}.")
    series = {m: metric_points(log, m) for m in metrics}
    ends = [steps[-1] for steps, _ in series.values() if steps.size]
    if len(ends) < len(metrics):
        missing = [m for m, (steps, _) in series.items() if not steps.size]
        return PlateauCheck(False, {}, math.nan, math.nan, 0, f"no evaluations of {missing}")
    end = min(ends)
    start = (1.0 - window) * end
    changes, counts = {}, []
    for metric, (steps, values) in series.items():
        inside = (steps >= start - 1e-9 * max(end, 1.0)) & (steps <= end)
        counts.append(int(inside.sum()))
        changes[metric] = relative_change(steps[inside], values[inside], RELATIVE_FLOORS.get(metric, 0.0))
    points = min(counts)
    if start < constant_from:
        reason = (f"the window starts at step {start:.0f}, before the learning rate is constant "
                  f"(step {constant_from:.0f})")
    elif points < min_points:
        reason = f"{points} evaluation(s) in the window, fewer than {min_points}"
    else:
        moving = {m: c for m, c in changes.items() if not abs(c) <= tolerance}
        reason = ", ".join(f"{m} changed {c:+.2%}" for m, c in moving.items())
    return PlateauCheck(not reason, changes, start, end, points, reason)


def geometric_steps(first: int, last: int, factor: int = 2) -> list[int]:
    """``first, factor * first, ...`` up to ``last`` (inclusive), and ``last`` itself: the steps at
    which a run keeps snapshots, so one run gives its results at several training lengths."""
    if first < 1 or last < 1 or factor < 2:
        raise ValueError(f"Need first >= 1, last >= 1 and factor >= 2, got {first}, {last}, {factor}.")
    steps, step = [], first
    while step < last:
        steps.append(step)
        step *= factor
    return [*steps, last]


def resample_steps(log: Sequence[Mapping[str, Any]], interval: int) -> list[int]:
    """The steps at which a run resampled dead latents, read off its log: a resampling happens at a
    multiple of ``interval``, and the first record after it shows ``n_resampled`` grown."""
    steps, previous_step, previous_count = [], 0, 0
    for record in log:
        count = record.get("n_resampled", previous_count)
        if interval and count > previous_count:
            step = (int(record["step"]) - 1) // interval * interval
            if step >= previous_step:
                steps.append(step)
        previous_step, previous_count = int(record.get("step", previous_step)), count
    return steps


def run_plateau(cfg: Any, log: Sequence[Mapping[str, Any]], tolerance: float | None = None) -> PlateauCheck:
    """The plateau of a finished run (its :class:`~.config.TrainConfig` and training log), measured
    at constant learning rate: over the last ``cfg.window`` of the steps before any decay, after the
    warm-ups and the last resampling's recovery. ``tolerance``: ``cfg.plateau_tolerance``, else
    :data:`DEFAULT_TOLERANCE`."""
    from .schedules import constant_from

    tolerance = tolerance if tolerance is not None else (cfg.plateau_tolerance or DEFAULT_TOLERANCE)
    constant = [r for r in log if r.get("step", 0) <= cfg.decay_start_step]
    resampled = resample_steps(constant, cfg.resample_interval)
    return plateau_check(constant, tolerance=tolerance, window=cfg.window,
                         constant_from=constant_from(cfg, resampled[-1] if resampled else None))


#: The relative change over the window below which a run counts as plateaued, unless its
#: configuration sets ``plateau_tolerance``.
DEFAULT_TOLERANCE = 0.02
