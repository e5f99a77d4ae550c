"""Training: configuration (:mod:`.config`), schedules, initialisation (:mod:`.init`), resampling,
one run's state (:mod:`.run`), one pass over the data for many runs (:mod:`.loop`), their lifecycle
with checkpoints and snapshots (:mod:`.lifecycle`), the entry points (:mod:`.train`), the plateau
(:mod:`.plateau`) and whether an SAE is trained (:mod:`.health`)."""

from ..saes.initial import NEAR_INITIAL_LIMIT, decoder_drift
from .config import TrainConfig
from .health import (
    HEALTH_LIMITS,
    NEAR_INITIAL_COSINE,
    health_display,
    health_summary,
    health_table,
    loss_plateau,
    training_health,
)
from .init import activation_scale, geometric_median
from .lifecycle import load_snapshots
from .plateau import PlateauCheck, geometric_steps, plateau_check
from .run import TrainingRun
from .train import SweepResult, family_configs, run_snapshots, train_sae, train_saes

__all__ = [
    "HEALTH_LIMITS",
    "NEAR_INITIAL_COSINE",
    "NEAR_INITIAL_LIMIT",
    "PlateauCheck",
    "SweepResult",
    "TrainConfig",
    "TrainingRun",
    "activation_scale",
    "decoder_drift",
    "family_configs",
    "geometric_median",
    "geometric_steps",
    "health_display",
    "health_summary",
    "health_table",
    "load_snapshots",
    "loss_plateau",
    "plateau_check",
    "run_snapshots",
    "train_sae",
    "train_saes",
    "training_health",
]
