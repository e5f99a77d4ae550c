"""The meta-SAE's configuration: the paper's settings, this package's defaults, and the resulting
:class:`~sae_helpers.TrainConfig`."""

from __future__ import annotations

import math
from typing import Any

from ..training.config import TrainConfig

#: Added to ``seed`` to seed the meta-SAE's training (see :func:`meta_config`).
SEED_OFFSET = 1_000_000


#: The paper's meta-SAE settings (Bussmann et al. 2025): 2,000 epochs over 49,152 rows in
#: batches of 4,096 are 24,000 optimiser steps.
PAPER = {"base_width": 49_152, "width": 2_304, "k": 4, "lr": 1e-4, "batch_size": 4_096, "epochs": 2_000,
         "steps": 24_000, "fve": 0.5547}


#: This package's default learning rate (the paper's is 1e-4; see :func:`train_meta_sae`).
DEFAULT_LR = 1e-3


#: This package's default minimum number of optimiser steps (see :func:`train_meta_sae`).
MIN_STEPS = 2_000


def default_width(n_rows: int) -> int:
    """The default number of meta-latents for ``n_rows`` base latents: the paper's ratio,
    2,304 / 49,152 = 3/64 (about ``n_rows / 21``), rounded, at least 1 (216 for 4,608)."""
    return max(1, round(n_rows * PAPER["width"] / PAPER["base_width"]))


def meta_steps(n_rows: int, epochs: int = 2_000, batch_size: int = 4_096, min_steps: int = MIN_STEPS) -> int:
    """Optimiser steps of a meta-SAE run: ``max(ceil(epochs * n_rows / batch), min_steps)``,
    with the batch cut to ``n_rows`` (24,000 for the paper's base; 2,250 for 4,608 rows)."""
    batch_size = min(int(batch_size), n_rows)
    return max(math.ceil(epochs * n_rows / batch_size), int(min_steps))


def meta_config(
    n_rows: int,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    min_steps: int = MIN_STEPS,
    **options: Any,
) -> TrainConfig:
    """The :class:`~sae_helpers.TrainConfig` with which :func:`train_meta_sae` trains a meta-SAE
    on ``n_rows`` decoder rows (arguments as there).

    Its ``seed`` is ``SEED_OFFSET + seed``: the trainer draws the initial decoder row by row
    from its seed, so two SAEs of the same input width and seed start with the same first
    rows. A meta-SAE seeded like its base SAE would start with its meta-latents *equal* to
    the base SAE's first initial rows (and to those of every other SAE of that seed), which
    after a short base training are still close to the trained rows.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 1:
        raise ValueError(f"min_steps must be a positive integer, got {min_steps!r}.")
    batch_size = min(int(batch_size), n_rows)
    steps = meta_steps(n_rows, epochs, batch_size, min_steps)
    sae_options = {"threshold_rate": threshold_rate(steps), **(options.pop("sae_options", None) or {})}
    settings = {"normalize_activations": False, "adam_beta1": 0.9, "dead_after": math.ceil(n_rows / batch_size),
                **options}
    return TrainConfig(arch="batchtopk", width=width if width is not None else default_width(n_rows), k=k,
                       steps=steps, batch_size=batch_size, lr=lr, seed=SEED_OFFSET + seed, sae_options=sae_options,
                       **settings)


def threshold_rate(steps: int) -> float:
    """The rate of the BatchTopK threshold's moving average for a run of ``steps``:
    ``10 / steps`` clipped to [0.01, 0.1], so that the average spans about the last tenth
    of the run (inside the final learning-rate decay). Long runs keep the default 0.01
    (the paper's 24,000 steps do); with it, the threshold of a run of about a hundred steps
    has not settled by its end, and the inference L0 misses ``k``."""
    return min(0.1, max(0.01, 10 / steps))
