"""Learning-rate and sparsity-coefficient schedules: pure functions of the step."""

from __future__ import annotations

from .config import TrainConfig


def lr_multiplier(cfg: TrainConfig, step: int, last_resample_step: int | None = None) -> float:
    """Learning-rate factor at ``step`` (0-based): warm-up, optional linear decay,
    and the 0.1x drop-and-recover after a resampling at ``last_resample_step``."""
    factor = 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        factor = (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_start_step:
        remaining = cfg.steps - cfg.decay_start_step
        factor *= max(0.0, (cfg.steps - step) / remaining) if remaining else 0.0
    warmup = cfg.resample_warmup_steps
    if last_resample_step is not None and warmup:
        since = step - last_resample_step
        if 0 <= since < warmup:
            factor *= 0.1 + 0.9 * since / warmup
    return factor


def constant_from(cfg: TrainConfig, last_resample_step: int | None = None) -> int:
    """The first step from which the learning rate and the sparsity coefficient stay constant
    (until the next resampling or the decay): after both warm-ups and the last resampling's."""
    start = max(cfg.warmup_steps, cfg.sparsity_warmup_steps)
    if last_resample_step is not None:
        start = max(start, last_resample_step + cfg.resample_warmup_steps)
    return start


def sparsity_multiplier(cfg: TrainConfig, step: int) -> float:
    """Sparsity-coefficient factor at ``step``: linear warm-up from 0 to 1."""
    if cfg.sparsity_warmup_steps and step < cfg.sparsity_warmup_steps:
        return (step + 1) / cfg.sparsity_warmup_steps
    return 1.0
