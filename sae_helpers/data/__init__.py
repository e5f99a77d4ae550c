"""Data: activation sources for training and evaluation, synthetic data sets, and held-out token windows
(:func:`eval_windows`) with the model name SAEs record (:func:`model_name_of`)."""

from .sources import ActivationSource, FileSource, IterableSource, TensorSource, as_source, load_activation_file
from .synthetic import SyntheticFeatures, SyntheticSample, appendix_f_toy, zipf_firing_probs
from .windows import eval_windows, model_name_of

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
    "eval_windows",
    "model_name_of",
]
