"""The training configuration: one small, documented, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..saes.registry import get_sae_class

B_DEC_INITS = ("geometric_median", "mean", "zeros")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE. Defaults follow the Gated SAE paper where it states them.

    Attributes
    ----------
    arch : registered architecture name (``"relu"`` or ``"gated"``).
    width : number of latents (``d_sae``).
    l1_coefficient : weight of the sparsity term (lambda).
    steps : optimiser steps.
    batch_size : activations per step (paper: 4,096).
    lr : Adam learning rate (paper: 3e-4 for Gated SAEs).
    adam_beta1, adam_beta2 : Adam betas (paper: 0 and 0.999).
    lr_warmup_steps : linear learning-rate warm-up from 0; ``None`` means
        ``min(1000, steps // 20)``.
    lr_decay_start : fraction of ``steps`` after which the learning rate decays
        linearly to 0 at the end; ``None`` keeps it constant.
    l1_warmup_steps : linear warm-up of the sparsity coefficient from 0; ``None``
        means ``steps // 20``.
    b_dec_init : ``"geometric_median"``, ``"mean"`` or ``"zeros"``, from a sample.
    init_sample_size : rows used to initialise ``b_dec`` and the activation scale.
    normalize_activations : scale inputs so that E||x||^2 = d during training (the
        scale is folded back into the returned SAE, which takes raw activations).
    resample_every : resample dead latents every this many steps (Anthropic style;
        never after ``lr_decay_start``); ``None`` means ``steps // 4``, 0 disables.
    resample_lr_warmup_steps : after a resampling the learning rate drops to 0.1x
        and warms back up linearly over this many steps.
    dead_after : a latent that has not fired for this many steps counts as dead
        (logged, and resampled at the next resampling); ``None`` means
        ``resample_every`` (or ``steps // 4`` when resampling is off).
    seed : seeds initialisation, data order and resampling.
    dtype : parameter dtype (``"float32"``; ``"bfloat16"`` on GPUs that support it).
    """

    arch: str
    width: int
    l1_coefficient: float
    steps: int
    batch_size: int = 4096
    lr: float = 3e-4
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    lr_warmup_steps: int | None = None
    lr_decay_start: float | None = 0.8
    l1_warmup_steps: int | None = None
    b_dec_init: str = "geometric_median"
    init_sample_size: int = 16384
    normalize_activations: bool = True
    resample_every: int | None = None
    resample_lr_warmup_steps: int = 1000
    dead_after: int | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        cls = get_sae_class(self.arch)
        if not cls.trainable:
            raise ValueError(
                f"Architecture {self.arch!r} cannot be trained by sae_helpers yet; train a "
                "'gated' SAE and convert it with .to_jumprelu()."
            )
        for name in ("width", "steps", "batch_size", "init_sample_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.l1_coefficient >= 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}.")
        if self.lr_decay_start is not None and not 0 <= self.lr_decay_start <= 1:
            raise ValueError(f"lr_decay_start must be a fraction in [0, 1] or None, got {self.lr_decay_start!r}.")

    # Resolved defaults ----------------------------------------------------------
    @property
    def warmup_steps(self) -> int:
        return self.lr_warmup_steps if self.lr_warmup_steps is not None else min(1000, self.steps // 20)

    @property
    def sparsity_warmup_steps(self) -> int:
        return self.l1_warmup_steps if self.l1_warmup_steps is not None else self.steps // 20

    @property
    def decay_start_step(self) -> int:
        return self.steps if self.lr_decay_start is None else int(self.lr_decay_start * self.steps)

    @property
    def resample_interval(self) -> int:
        """Steps between resamplings; 0 when resampling is off."""
        if self.resample_every is None:
            return max(1, self.steps // 4)
        return self.resample_every

    @property
    def dead_window(self) -> int:
        if self.dead_after is not None:
            return self.dead_after
        return self.resample_interval or max(1, self.steps // 4)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown training option(s) {unknown}; known: {sorted(names)}.")
        return cls(**data)

    def fingerprint(self) -> str:
        """A short hash of every field (checkpoints refuse a different configuration)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
