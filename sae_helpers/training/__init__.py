"""Training: configuration, schedules, initialisation, resampling, checkpoints, loop."""

from .config import TrainConfig
from .init import activation_scale, geometric_median
from .sweep import SweepResult, family_configs, train_saes
from .trainer import TrainingRun, decoder_drift, train_sae

__all__ = [
    "SweepResult",
    "TrainConfig",
    "TrainingRun",
    "activation_scale",
    "decoder_drift",
    "family_configs",
    "geometric_median",
    "train_sae",
    "train_saes",
]
