"""Training: configuration, schedules, initialisation, resampling, checkpoints, loop."""

from .config import TrainConfig
from .init import activation_scale, geometric_median
from .plateau import PlateauCheck, geometric_steps, plateau_check
from .sweep import SweepResult, family_configs, run_snapshots, train_saes
from .trainer import TrainingRun, decoder_drift, load_snapshots, train_sae

__all__ = [
    "PlateauCheck",
    "SweepResult",
    "TrainConfig",
    "TrainingRun",
    "activation_scale",
    "decoder_drift",
    "family_configs",
    "geometric_median",
    "geometric_steps",
    "load_snapshots",
    "plateau_check",
    "run_snapshots",
    "train_sae",
    "train_saes",
]
