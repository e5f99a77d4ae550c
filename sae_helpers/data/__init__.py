"""Data: activation sources for training and evaluation, and synthetic data sets."""

from .sources import ActivationSource, FileSource, IterableSource, TensorSource, as_source, load_activation_file
from .synthetic import SyntheticFeatures, SyntheticSample, appendix_f_toy, zipf_firing_probs

__all__ = [
    "ActivationSource",
    "FileSource",
    "IterableSource",
    "TensorSource",
    "as_source",
    "load_activation_file",
    "SyntheticFeatures",
    "SyntheticSample",
    "appendix_f_toy",
    "zipf_firing_probs",
]
