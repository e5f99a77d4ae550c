"""Training health: is an SAE trained, or does it still carry its random start?

The symptoms of an undertrained or broken SAE, per SAE:

* ``near_initial_fraction``: the fraction of latents whose decoder row keeps a cosine above
  ``near_initial_cosine`` (0.9) to its own initial row (:func:`~sae_helpers.saes.initial.decoder_drift`, which redraws
  the initial rows from the training seed). Such latents have barely moved: their
  directions describe the initialisation, not the data.
* ``dead_fraction``: latents that never fire on held-out activations; ``dense_fraction``:
  latents that fire on more than 10% of them (both exactly as :func:`evaluate` defines them).
* ``plateaued``: the held-out FVU and L0 each changed by at most the tolerance (the run's
  ``plateau_tolerance``, else 2%) over the last quarter of the steps taken at constant
  learning rate (:func:`~sae_helpers.training.plateau.run_plateau`), with those changes as
  ``heldout_fvu_change`` and ``heldout_l0_change`` and the ``steps`` taken. A decaying rate
  flattens any curve, so the window ends where a decay begins.
* ``loss_plateau`` and ``fvu_plateau``: the relative change of the training loss and of the
  training FVU over the last tenth of the run (:func:`loss_plateau`), reported only.

An SAE *passes* when every check in :data:`HEALTH_LIMITS` holds (at most 5% of latents near
their initial row, at most 5% dead) and it plateaued. The dense fraction is reported, not
judged: how dense a latent may be depends on the chapter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..evaluation.metrics import evaluate
from ..saes.base import SAE
from ..saes.initial import NEAR_INITIAL_COSINE, NEAR_INITIAL_LIMIT, initial_decoder, near_initial_fraction
from .config import TrainConfig
from .plateau import run_plateau

if TYPE_CHECKING:
    import pandas as pd

#: The checks behind ``passes``: each value must be at most its limit.
HEALTH_LIMITS: dict[str, float] = {"near_initial_fraction": NEAR_INITIAL_LIMIT, "dead_fraction": 0.05}
#: Why an SAE without a training record (published, or saved without its training config) fails.
NOT_TRAINED_HERE = "no training record (near-initial latents and plateau cannot be checked)"
#: The dense-latent threshold (firing frequency) of :func:`evaluate`, quoted for chapters.
DENSE_THRESHOLD = 0.1


def loss_plateau(
    log: Sequence[Mapping[str, Any]], metric: str = "loss", last_fraction: float = 0.1, smoothing: float = 0.2
) -> float:
    """The relative change of a training-log metric over the last ``last_fraction`` of the run.

    ``log`` is a training log (``sae.training_log``: one dict per logging step, with
    ``"step"`` and the metrics). With ``S`` the last logged step, the last tenth holds the
    ``n`` records with ``step >= (1 - last_fraction) * S``. Single records are noisy (each
    is one batch), so both ends are means over ``m = ceil(smoothing * n)`` records (the
    first and the last 20% of the last tenth; at most ``n // 2``, so they never overlap):

    * ``start`` = mean of ``metric`` over the first ``m`` records of the last tenth,
    * ``end`` = mean over its last ``m`` records,

    and the result is ``(end - start) / |start|``: 0 for a flat curve, ``-0.01`` when the
    metric still fell by 1% over the last tenth. For the trainer's log (200 evenly spaced
    records) that is 21 records, ends of 5. Records without a finite ``metric`` are ignored.
    NaN when fewer than 2 records fall in the last tenth (a log with one record per step
    needs ``S >= 10``), or ``start`` is 0.
    """
    if not 0 < last_fraction <= 1 or not 0 < smoothing <= 0.5:
        raise ValueError(f"Need 0 < last_fraction <= 1 and 0 < smoothing <= 0.5, got {last_fraction}, {smoothing}.")
    points = []
    for i, record in enumerate(log):
        value = record.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points.append((float(record.get("step", i + 1)), float(value)))
    if not points:
        return math.nan
    points.sort(key=lambda point: point[0])
    last = points[-1][0]
    s0 = (1.0 - last_fraction) * last - 1e-9 * max(abs(last), 1.0)  # a record exactly at the edge is inside
    window = [value for step, value in points if step >= s0]
    m = min(math.ceil(smoothing * len(window)), len(window) // 2)
    if m < 1:
        return math.nan
    start = sum(window[:m]) / m
    end = sum(window[-m:]) / m
    return (end - start) / abs(start) if start != 0 else math.nan


def plateau_health(sae: SAE) -> dict[str, Any]:
    """Steps taken and the plateau at constant learning rate (:func:`~sae_helpers.training.plateau.run_plateau`):
    ``steps``, ``steps_cap``, ``heldout_fvu_change`` and ``heldout_l0_change`` (relative change over
    the window), ``plateaued`` and ``plateau_reason`` (why not)."""
    log = sae.training_log or []
    steps = int(log[-1]["step"]) if log else 0
    config = sae.training_config
    if not config:
        return {"steps": steps, "steps_cap": math.nan, "heldout_fvu_change": math.nan, "heldout_l0_change": math.nan,
                "plateaued": False, "plateau_reason": "no training_config"}
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    check = run_plateau(cfg, log)
    reason = check.reason
    if reason.startswith("no evaluations"):
        reason = "no held-out curve: train with eval_activations"
    return {"steps": steps, "steps_cap": cfg.steps,
            "heldout_fvu_change": check.changes.get("heldout_fvu", math.nan),
            "heldout_l0_change": check.changes.get("heldout_l0", math.nan),
            "plateaued": check.plateaued, "plateau_reason": reason}


def _near_initial_fraction(sae: SAE, near_initial_cosine: float) -> float:
    if not sae.training_config:
        return math.nan
    return near_initial_fraction(sae.W_dec, initial_decoder(sae), near_initial_cosine)


def training_health(
    sae: SAE,
    eval_activations=None,
    *,
    near_initial_cosine: float = NEAR_INITIAL_COSINE,
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The training-health checks of one SAE (see the module docstring).

    Parameters
    ----------
    sae : an SAE from :func:`train_sae` / :func:`train_saes` (or loaded from a run directory):
        it needs ``training_config`` for ``near_initial_fraction`` and ``training_log`` for the
        plateaus.
    eval_activations : held-out activations for ``dead_fraction`` / ``dense_fraction``
        (one :func:`evaluate` pass).
    near_initial_cosine : the cosine above which a decoder row counts as near its initial row.
    evaluation : a precomputed ``evaluate(sae, eval_activations)`` result; used instead of a
        second pass (its dense fraction uses the threshold it was computed with, 0.1 by default).

    Returns a dict: ``near_initial_fraction``, ``dead_fraction``, ``dense_fraction``,
    ``loss_plateau``, ``fvu_plateau``, ``passes`` (every :data:`HEALTH_LIMITS` check holds) and
    ``failing`` (e.g. ``"near_initial_fraction=0.31 > 0.05"``, ``""`` when it passes) and
    ``trained_here`` (the SAE carries its ``training_config``). A check that cannot be made (no
    ``training_config``; neither ``eval_activations`` nor ``evaluation``) is NaN and counts as
    failing; an SAE without a training record (a published one) fails as :data:`NOT_TRAINED_HERE`.
    """
    if evaluation is None and eval_activations is not None:
        evaluation = evaluate(sae, eval_activations)
    log = sae.training_log or []
    health: dict[str, Any] = {
        **plateau_health(sae),
        "near_initial_fraction": _near_initial_fraction(sae, near_initial_cosine),
        "dead_fraction": math.nan if evaluation is None else float(evaluation["dead_fraction"]),
        "dense_fraction": math.nan if evaluation is None else float(evaluation["dense_fraction"]),
        "loss_plateau": loss_plateau(log, "loss"),
        "fvu_plateau": loss_plateau(log, "fvu"),
    }
    health["trained_here"] = bool(sae.training_config)
    failing = [] if health["trained_here"] else [NOT_TRAINED_HERE]
    for name, limit in HEALTH_LIMITS.items():
        value = health[name]
        if math.isnan(value) and not health["trained_here"] and name == "near_initial_fraction":
            continue
        if math.isnan(value):
            why = "no training_config" if name == "near_initial_fraction" else "no eval_activations"
            failing.append(f"{name}=nan ({why})")
        elif value > limit:
            failing.append(f"{name}={value:.3g} > {limit:g}")
    if health["trained_here"] and not health["plateaued"]:
        failing.append(f"not plateaued ({health['plateau_reason']})")
    health["passes"] = not failing
    health["failing"] = "; ".join(failing)
    return health


def health_table(
    saes: Mapping[str, SAE],
    eval_activations=None,
    evaluations: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    near_initial_cosine: float = NEAR_INITIAL_COSINE,
) -> pd.DataFrame:
    """:func:`training_health` of every SAE, one row each, indexed by the names of ``saes``.

    ``evaluations`` (optional, by the same names) holds precomputed :func:`evaluate` results,
    so SAEs already evaluated are not evaluated again.
    """
    import pandas as pd

    evaluations = evaluations or {}
    rows = {
        name: training_health(sae, eval_activations, near_initial_cosine=near_initial_cosine,
                              evaluation=evaluations.get(name))
        for name, sae in saes.items()
    }
    columns = ["steps", "steps_cap", "near_initial_fraction", "dead_fraction", "dense_fraction", "loss_plateau",
               "fvu_plateau", "heldout_fvu_change", "heldout_l0_change", "plateaued", "passes", "failing",
               "trained_here"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns) if rows else pd.DataFrame(columns=columns)
    table.index.name = "sae"
    return table


#: The reader's column names of :func:`health_display`, in order.
DISPLAY_COLUMNS = {"steps": "steps", "near_initial_fraction": "near-initial %", "dead_fraction": "dead %",
                   "dense_fraction": "dense %",
                   "heldout_fvu_change": "held-out FVU change, last quarter at constant lr (%)",
                   "heldout_l0_change": "held-out L0 change (%)", "plateaued": "plateaued", "passes": "passes"}
_YES_NO = ("plateaued", "passes")
_RUN_HASH = re.compile(r"-[0-9a-f]{8}$")


def health_display(table: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """A :func:`health_table` as a page shows it: fractions and plateaus in percent, short column
    names (:data:`DISPLAY_COLUMNS`), and SAE names without their run hash (``relu-w1296-l1_1``, not
    ``relu-w1296-l1_1-4daa78db``). Why an SAE fails is in :func:`health_summary`."""
    shown = table[list(DISPLAY_COLUMNS)].copy()
    numeric = [column for column in DISPLAY_COLUMNS if column not in (*_YES_NO, "steps")]
    shown[numeric] = (shown[numeric].astype(float) * 100).round(decimals)
    trained = table["trained_here"] if "trained_here" in table.columns else [True] * len(table)
    shown["steps"] = [f"{int(s):,}" if here else "-" for s, here in zip(shown["steps"], trained, strict=True)]
    for column in _YES_NO:  # "-": not judged, the SAE carries no training record
        shown[column] = [("yes" if value else "no") if here else "-"
                         for value, here in zip(shown[column], trained, strict=True)]
    shown.index = [_RUN_HASH.sub("", str(name)) for name in shown.index]
    shown.index.name = table.index.name
    return shown.rename(columns=DISPLAY_COLUMNS)


def health_summary(table: pd.DataFrame) -> str:
    """One Markdown paragraph, computed from a :func:`health_table`: how many SAEs pass the
    :data:`HEALTH_LIMITS` checks, which fail and why, and the range of the loss plateaus."""
    if table.empty:
        return "No SAEs were trained."
    limits = ", ".join(f"{name.removesuffix('_fraction').replace('_', '-')} latents at most {limit:.0%}"
                       for name, limit in HEALTH_LIMITS.items())
    if "trained_here" in table.columns and not table["trained_here"].all():
        elsewhere = table[~table["trained_here"].astype(bool)]
        text = (f"**{len(elsewhere)} of {len(table)} SAEs carry no training record** (published SAEs): whether "
                f"their latents left their random start and whether they plateaued cannot be checked here. Their "
                f"dead latents on these held-out activations: {elsewhere['dead_fraction'].min():.1%}-"
                f"{elsewhere['dead_fraction'].max():.1%}; dense: {elsewhere['dense_fraction'].min():.1%}-"
                f"{elsewhere['dense_fraction'].max():.1%}.")
        rest = table[table["trained_here"].astype(bool)]
        return text if rest.empty else f"{text} {health_summary(rest)}"
    failing = table[~table["passes"].astype(bool)]
    n = len(table)
    if failing.empty:
        text = f"**All {n} SAEs pass the health checks** ({limits})."
    else:
        reasons = "; ".join(f"`{name}`: {why}" for name, why in failing["failing"].items())
        text = (f"**{n - len(failing)} of {n} SAEs pass the health checks** ({limits}). "
                f"Failing: {reasons}. Read the numbers of the failing SAEs as those of partly trained SAEs.")
    text += (f" Near-initial latents range over {table['near_initial_fraction'].min():.1%}-"
             f"{table['near_initial_fraction'].max():.1%}, dead latents over {table['dead_fraction'].min():.1%}-"
             f"{table['dead_fraction'].max():.1%}.")
    fvu, l0 = table["heldout_fvu_change"].dropna(), table["heldout_l0_change"].dropna()
    if len(fvu) and len(l0):
        text += (f" Over the last quarter of the steps at constant learning rate, held-out FVU changed by "
                 f"{fvu.min():+.1%} to {fvu.max():+.1%} and L0 by {l0.min():+.1%} to {l0.max():+.1%}; "
                 f"{int(table['plateaued'].sum())} of {n} SAEs plateaued.")
    return text
