"""The training configuration: one small, documented, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..saes.registry import get_sae_class

B_DEC_INITS = ("geometric_median", "mean", "zeros")
#: The fields that set an architecture's sparsity (exactly one applies to each).
SPARSITY_OPTIONS = ("l1_coefficient", "k", "l0_coefficient")
#: Fields omitted from :meth:`TrainConfig.to_dict` while ``None``.
OPTIONAL_FIELDS = (*SPARSITY_OPTIONS, "sae_options", "plateau_tolerance", "plateau_window", "eval_every")
#: How a run was executed rather than what it trains: recorded beside the fields in a saved training
#: config (``world_size``: the processes it ran on), ignored when the configuration is read back.
EXECUTION_FIELDS = ("world_size",)
#: Step-count fields: (name, smallest allowed value, what it means); ``None`` keeps the default
#: where the field allows it. A negative interval would resample every latent at every step,
#: a dead window of 0 would mark every latent dead.
STEP_COUNTS = (
    ("resample_every", 0, "steps between resamplings of dead latents; 0 disables, None: the default"),
    ("dead_after", 1, "steps without firing before a latent counts as dead; None: the default"),
    ("lr_warmup_steps", 0, "steps of learning-rate warm-up; 0: none, None: the default"),
    ("l1_warmup_steps", 0, "steps of sparsity-coefficient warm-up; 0: none, None: the default"),
    ("resample_lr_warmup_steps", 0, "steps of learning-rate warm-up after a resampling; 0: none, None: the default"),
    ("eval_every", 1, "steps between held-out evaluations; None: the default"),
)
#: The window of :attr:`TrainConfig.plateau_window` when it is left at ``None``: the last quarter of the run so far.
DEFAULT_PLATEAU_WINDOW = 0.25
#: Rows of held-out activations a run evaluates on (a sample of the evaluation activations).
HELDOUT_ROWS = 4096
#: Gao et al.: a latent is dead for the aux-k loss after 10M tokens without firing.
AUX_K_DEAD_TOKENS = 10_000_000


def _check_number(name: str, value: Any) -> None:
    """Refuse a setting that should be a finite number (or None) but is not, e.g. ``lr="3e-4"``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r} ({type(value).__name__}); pass e.g. "
                         f"{name}=float(...).")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train one SAE. Defaults follow the Gated SAE paper where it states them.

    Attributes
    ----------
    arch : registered architecture name: ``"relu"``, ``"gated"`` (set ``l1_coefficient``),
        ``"topk"``, ``"batchtopk"`` (set ``k``) or ``"jumprelu"`` (set ``l0_coefficient``).
    width : number of latents (``d_sae``).
    steps : optimiser steps.
    l1_coefficient : weight of the L1 sparsity term (lambda) of ``relu`` and ``gated``.
    k : active latents per token of ``topk`` (``batchtopk``: on average over a batch).
    l0_coefficient : weight of the L0 term of ``jumprelu``.
    sae_options : further keyword arguments of the architecture's constructor, e.g.
        ``{"aux_k": 256, "aux_k_coefficient": 1/32}`` (topk, batchtopk),
        ``{"threshold_rate": 0.01}`` (batchtopk), ``{"bandwidth": 0.1,
        "init_threshold": 0.5}`` (jumprelu).
    batch_size : activations per step (paper: 4,096).
    lr : Adam learning rate (paper: 3e-4 for Gated SAEs).
    adam_beta1 : Adam's first-moment decay (paper: 0).
    adam_beta2 : Adam's second-moment decay; ``None`` sizes its memory to the run:
        ``1 - 1/min(1000, max(10, steps // 25))``, i.e. the paper's 0.999 from 25,000 steps
        on and a memory of a 25th of the run below (0.9896 for 2,400 steps). With 0.999 on
        a run of a few thousand steps, the second moment still remembers the large
        gradients of the first steps at the end, and latents whose gradients later shrink
        (or spike) take tiny steps: on SmolLM2 a fifth of a BatchTopK SAE's decoder rows
        stayed at their random start after 2,400 steps, against 0.2% with 0.99 (Methods).
    lr_warmup_steps : linear learning-rate warm-up from 0; ``None`` means
        ``min(1000, steps // 20)``.
    lr_decay_start : fraction of ``steps`` after which the learning rate decays
        linearly to 0 at the end; ``None`` keeps it constant.
    l1_warmup_steps : linear warm-up of the sparsity coefficient (L1 or L0) from 0;
        ``None`` means ``steps // 20``.
    b_dec_init : ``"geometric_median"``, ``"mean"`` or ``"zeros"``, from a sample.
    init_sample_size : rows used to initialise ``b_dec`` and the activation scale.
    normalize_activations : scale inputs so that E||x||^2 = d during training (the
        scale is folded back into the returned SAE, which takes raw activations).
    resample_every : resample dead latents every this many steps (Anthropic style;
        never after ``lr_decay_start``); ``None`` means ``steps // 4`` for ``relu`` and
        ``gated`` and 0 (off) for the others; 0 disables.
    resample_lr_warmup_steps : after a resampling the learning rate drops to 0.1x
        and warms back up linearly over this many steps; ``None`` means a tenth of the
        resampling interval, at most 1,000 (so a run that resamples every quarter spends
        a tenth of it, not half, at a reduced rate).
    resample_pool_size : inputs (sampled afresh from the training data at each
        resampling) among which dead latents find badly reconstructed ones; Anthropic's
        recipe draws from a pool far larger than one batch.
    dead_after : a latent that has not fired for this many steps counts as dead
        (logged, resampled at the next resampling, fed to TopK's aux-k loss); ``None``
        means ``resample_every``, or for architectures with an aux-k loss the steps
        of 10M tokens (Gao et al.) but at most ``steps // 10``, else ``steps // 4``.
    eval_every : steps between evaluations on held-out activations (when the trainer is
        given them: ``train_saes(eval_activations=...)``); each adds ``heldout_fvu`` and
        ``heldout_l0`` to the training log, and the last step is always evaluated. ``None`` means
        every ``4 * ceil(HELDOUT_ROWS / batch_size)`` steps (32 for batches of 512): an evaluation
        of the 4,096 held-out rows, forward only, then costs under a tenth of the training, and the
        interval does not depend on ``steps`` (a run stopped at a plateau is evaluated alike).
    plateau_tolerance : train until a plateau: stop once the held-out FVU and L0 each
        changed by at most this fraction over the last ``plateau_window`` of the steps so
        far, a window held at constant learning rate (:func:`~.plateau.plateau_check`),
        and at most 5% of the latents keep their decoder row near its random start
        (:data:`~sae_helpers.saes.initial.NEAR_INITIAL_LIMIT`); ``steps`` is then a cap.
        Needs ``lr_decay_start=None`` and held-out activations.
        ``None``: train exactly ``steps``.
    plateau_window : the fraction of the steps so far over which a plateau is measured;
        ``None`` means 0.25 (the last quarter).
    seed : seeds initialisation, data order and resampling.
    dtype : parameter dtype (``"float32"``; ``"bfloat16"`` on GPUs that support it).
    """

    arch: str
    width: int
    steps: int
    l1_coefficient: float | None = None
    k: int | None = None
    l0_coefficient: float | None = None
    sae_options: dict[str, Any] | None = None
    batch_size: int = 4096
    lr: float = 3e-4
    adam_beta1: float = 0.0
    adam_beta2: float | None = None
    lr_warmup_steps: int | None = None
    lr_decay_start: float | None = 0.8
    l1_warmup_steps: int | None = None
    b_dec_init: str = "geometric_median"
    init_sample_size: int = 16384
    normalize_activations: bool = True
    resample_every: int | None = None
    resample_lr_warmup_steps: int | None = None
    resample_pool_size: int = 65536
    dead_after: int | None = None
    eval_every: int | None = None
    plateau_tolerance: float | None = None
    plateau_window: float | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        cls = get_sae_class(self.arch)
        for name in ("width", "steps", "batch_size", "init_sample_size", "resample_pool_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("lr", "l1_coefficient", "l0_coefficient", "adam_beta1", "adam_beta2", "lr_decay_start",
                     "plateau_tolerance", "plateau_window"):
            _check_number(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer (e.g. seed=0), got {self.seed!r} "
                             f"({type(self.seed).__name__}).")
        self._check_sparsity_options(cls)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}.")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) (a decay rate, e.g. 0.999; adam_beta2=None sizes it "
                                 f"to the run), got {value!r}.")
        for name, least, meaning in STEP_COUNTS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least} ({meaning}), got {value!r}.")
        if self.lr_decay_start is not None and not 0 <= self.lr_decay_start <= 1:
            raise ValueError(f"lr_decay_start must be a fraction in [0, 1] or None, got {self.lr_decay_start!r}.")
        self._check_plateau()

    def _check_plateau(self) -> None:
        """A plateau is measured at constant learning rate, over a window that is a fraction of the run."""
        if self.plateau_window is not None and not 0 < self.plateau_window <= 1:
            raise ValueError(f"plateau_window must be a fraction in (0, 1] or None, got {self.plateau_window!r}.")
        if self.plateau_tolerance is None:
            return
        if not self.plateau_tolerance > 0:
            raise ValueError(f"plateau_tolerance must be > 0 (a relative change, e.g. 0.01), got "
                             f"{self.plateau_tolerance!r}.")
        if self.lr_decay_start is not None:
            raise ValueError("plateau_tolerance trains until a plateau at constant learning rate: set "
                             f"lr_decay_start=None (got {self.lr_decay_start!r}; a decaying rate flattens any curve).")

    def _check_sparsity_options(self, cls) -> None:
        """Each architecture takes exactly its own sparsity setting."""
        wanted = cls.sparsity_option or ("k" if "k" in cls.hyperparameters else None)
        for option in SPARSITY_OPTIONS:
            value = getattr(self, option)
            if option == wanted and value is None:
                raise ValueError(f"Architecture {self.arch!r} needs {option}=...; it sets its sparsity.")
            if option != wanted and value is not None:
                hint = f"use {wanted}=... instead" if wanted else "it has no sparsity setting"
                raise ValueError(f"Architecture {self.arch!r} does not use {option} ({hint}).")
        if self.l1_coefficient is not None and not self.l1_coefficient >= 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}.")
        if self.l0_coefficient is not None and not self.l0_coefficient >= 0:
            raise ValueError(f"l0_coefficient must be >= 0, got {self.l0_coefficient!r}.")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int)
                                   or not 1 <= self.k <= self.width):
            raise ValueError(f"k must be an integer between 1 and width={self.width}, got {self.k!r}.")
        if self.sae_options is not None and not isinstance(self.sae_options, dict):
            raise ValueError(f"sae_options must be a dict of constructor arguments, got {self.sae_options!r}.")
        self._check_sae_options(cls.training_options)

    def _check_sae_options(self, allowed: dict[str, type]) -> None:
        """``sae_options`` holds only the architecture's :attr:`~sae_helpers.SAE.training_options`, each of its type."""
        known = ", ".join(f"{name} ({kind.__name__})" for name, kind in allowed.items()) or "none"
        for name, value in (self.sae_options or {}).items():
            if name not in allowed:
                raise ValueError(f"sae_options: {name!r} is not an option of architecture {self.arch!r}; its options: "
                                 f"{known}.")
            kind = allowed[name]
            fits = value is None or (not isinstance(value, bool) and isinstance(value, int if kind is int else
                                                                                 numbers.Real))
            if not fits:
                raise ValueError(f"sae_options: {name} of architecture {self.arch!r} must be {kind.__name__}, got "
                                 f"{value!r} ({type(value).__name__}).")

    @property
    def sparsity_coefficient(self) -> float | None:
        """The weight of the ``sparsity`` loss term (L1 or L0), ``None`` for TopK-style SAEs."""
        option = get_sae_class(self.arch).sparsity_option
        return None if option is None else getattr(self, option)

    def sae_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the SAE beyond ``d_in`` and ``d_sae``."""
        kwargs = {"k": self.k} if self.k is not None else {}
        return {**kwargs, **(self.sae_options or {})}

    # Resolved defaults ----------------------------------------------------------
    @property
    def beta2(self) -> float:
        """Adam's second-moment decay: ``adam_beta2``, or by default a memory of 1/25 of the run
        (at most the paper's 1,000 steps, at least 10)."""
        if self.adam_beta2 is not None:
            return self.adam_beta2
        return 1.0 - 1.0 / min(1000, max(10, self.steps // 25))

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
    def resample_warmup_steps(self) -> int:
        """Steps of learning-rate warm-up after a resampling."""
        if self.resample_lr_warmup_steps is not None:
            return self.resample_lr_warmup_steps
        return min(1000, self.resample_interval // 10)

    @property
    def evaluation_interval(self) -> int:
        """Steps between held-out evaluations."""
        if self.eval_every is not None:
            return self.eval_every
        return 4 * math.ceil(HELDOUT_ROWS / self.batch_size)

    @property
    def window(self) -> float:
        """The plateau window, as a fraction of the steps so far."""
        return self.plateau_window if self.plateau_window is not None else DEFAULT_PLATEAU_WINDOW

    def resolved(self) -> TrainConfig:
        """The same training with every default that depends on ``steps`` written out.

        ``resolved().replace(steps=s)`` (:meth:`truncated`) trains, step for step, what this
        configuration trains in its first ``s`` steps, when the learning rate is constant
        (``lr_decay_start=None``): that is why a snapshot equals a shorter run.
        """
        return dataclasses.replace(
            self, adam_beta2=self.beta2, lr_warmup_steps=self.warmup_steps, l1_warmup_steps=self.sparsity_warmup_steps,
            resample_every=self.resample_interval, dead_after=self.dead_window,
            resample_lr_warmup_steps=self.resample_warmup_steps, eval_every=self.evaluation_interval)

    def truncated(self, steps: int) -> TrainConfig:
        """The configuration of a run that stops after ``steps`` with this one's schedule (see
        :meth:`resolved`), without a plateau rule. Needs a constant learning rate."""
        if self.lr_decay_start is not None:
            raise ValueError("A shorter run equals the start of this one only at constant learning rate: the decay "
                             f"starts at a fraction of steps (lr_decay_start={self.lr_decay_start!r}); use "
                             "lr_decay_start=None.")
        return dataclasses.replace(self.resolved(), steps=steps, plateau_tolerance=None, plateau_window=None)

    @property
    def resample_interval(self) -> int:
        """Steps between resamplings; 0 when resampling is off."""
        if self.resample_every is None:
            return max(1, self.steps // 4) if get_sae_class(self.arch).resamples_by_default else 0
        return self.resample_every

    @property
    def dead_window(self) -> int:
        if self.dead_after is not None:
            return self.dead_after
        if self.resample_interval:
            return self.resample_interval
        if get_sae_class(self.arch).uses_dead_mask:
            return max(1, min(math.ceil(AUX_K_DEAD_TOKENS / self.batch_size), self.steps // 10))
        return max(1, self.steps // 4)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; the optional ones left at ``None`` are omitted (so adding
        an option does not change the fingerprints of existing configurations)."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if not (k in OPTIONAL_FIELDS and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The configuration from :meth:`to_dict`'s form (a saved training config's
        :data:`EXECUTION_FIELDS` are ignored)."""
        data = {k: v for k, v in data.items() if k not in EXECUTION_FIELDS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown training option(s) {unknown}; known: {sorted(names)}.")
        return cls(**data)

    def fingerprint(self) -> str:
        """A short hash of every field (checkpoints refuse a different configuration)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
