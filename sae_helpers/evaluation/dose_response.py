"""Results against training length: one run's snapshots evaluated side by side.

A run trained at constant learning rate keeps its SAE at a geometric series of steps
(``train_saes(..., snapshots=...)``); each snapshot is what a run of that length would have
given (:meth:`~sae_helpers.TrainConfig.truncated`). Evaluating them all shows which way a
number moves with training, and so how far a short run's number may be from a long run's,
without training again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..saes.base import SAE
from .metrics import evaluate

if TYPE_CHECKING:
    import pandas as pd

#: The columns :func:`snapshot_table` takes from :func:`evaluate` (and from ``splice_eval`` with a model).
EVALUATION_COLUMNS = ("l0", "fvu", "relative_reconstruction_bias", "dead_fraction", "dense_fraction")
SPLICE_COLUMNS = ("ce_sae", "loss_recovered", "delta_lm_loss")


def training_tokens(sae: SAE, step: int | None = None) -> int:
    """Activations an SAE saw in training: ``step`` (default: its last logged step) times its batch size."""
    config = sae.training_config or {}
    log = sae.training_log or []
    if step is None:
        step = int(log[-1]["step"]) if log else 0
    return int(step) * int(config.get("batch_size", 0))


def snapshot_table(
    runs: Mapping[str, Mapping[int, SAE]],
    eval_activations,
    *,
    model: Any = None,
    n_splice_tokens: int = 4096,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per (run, snapshot step): ``name``, ``step``, ``tokens`` (activations seen) and the
    held-out metrics of that snapshot (:data:`EVALUATION_COLUMNS`); with a ``model``, also the
    spliced language-model losses on ``n_splice_tokens`` held-out tokens (:data:`SPLICE_COLUMNS`,
    every snapshot on the same tokens, with ``ce_clean`` and ``ce_zero_ablation``).
    ``runs``: ``{name: {step: sae}}`` (:func:`~sae_helpers.training.load_snapshots`, with the
    final SAE at its last step)."""
    import pandas as pd

    rows, saes = [], []
    for name, by_step in runs.items():
        for step, sae in sorted(by_step.items()):
            measured = evaluate(sae, eval_activations)
            rows.append({"name": name, "step": int(step), "tokens": training_tokens(sae, step),
                         **{column: measured[column] for column in EVALUATION_COLUMNS}})
            saes.append(sae)
    if model is not None and saes:
        from .splice import splice_eval

        for row, spliced in zip(rows, splice_eval(model, saes, n_splice_tokens, progress=progress), strict=True):
            row.update({column: spliced[column] for column in (*SPLICE_COLUMNS, "ce_clean", "ce_zero_ablation")})
    return pd.DataFrame(rows)


def training_trend(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per run, ``column`` at its last two snapshots and the relative change between them
    (``change``: ``(last - previous) / |previous|``), with the tokens of each."""
    import pandas as pd

    out = []
    for name, group in table.sort_values("tokens", kind="stable").groupby("name", sort=False):
        if len(group) < 2:
            continue
        previous, last = group.iloc[-2], group.iloc[-1]
        base = abs(previous[column])
        out.append({"name": name, "previous_tokens": int(previous["tokens"]), "tokens": int(last["tokens"]),
                    "previous": previous[column], "last": last[column],
                    "change": (last[column] - previous[column]) / base if base else float("nan")})
    return pd.DataFrame(out)
