"""Evaluation: reconstruction and sparsity metrics, feature recovery."""

from .metrics import MetricAccumulator, evaluate, log10_density_histogram, max_cosine_similarity, mmcs

__all__ = ["MetricAccumulator", "evaluate", "log10_density_histogram", "max_cosine_similarity", "mmcs"]
