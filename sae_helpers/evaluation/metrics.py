"""Reconstruction and sparsity metrics (definitions in the book's methods page).

All sums are accumulated in float64 over batches, so any number of tokens can be
evaluated in bounded memory and the result does not depend on the batch size
beyond float64 rounding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.sources import as_source
from ..saes.base import SAE


class MetricAccumulator:
    """Running sums from which every metric of :func:`evaluate` follows."""

    def __init__(self, d_sae: int) -> None:
        self.n = 0
        self.d = 0
        self.sum_sq_error = 0.0
        self.sum_sq_x = 0.0
        self.sum_x: Tensor | None = None
        self.sum_sq_x_hat = 0.0
        self.sum_x_hat_dot_x = 0.0
        self.sum_l0 = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, latents: Tensor) -> None:
        x64, x_hat64 = x.double(), x_hat.double()
        active = latents != 0
        self.n += x.shape[0]
        self.d = x.shape[1]
        self.sum_sq_error += float((x64 - x_hat64).pow(2).sum())
        self.sum_sq_x += float(x64.pow(2).sum())
        sx = x64.sum(0).cpu()
        self.sum_x = sx if self.sum_x is None else self.sum_x + sx
        self.sum_sq_x_hat += float(x_hat64.pow(2).sum())
        self.sum_x_hat_dot_x += float((x_hat64 * x64).sum())
        self.sum_l0 += float(active.sum())
        self.fire_counts += active.sum(0).double().cpu()

    def result(self, dense_threshold: float = 0.1) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("No activations were evaluated (the source was empty).")
        assert self.sum_x is not None
        total_variance = self.sum_sq_x - float(self.sum_x.pow(2).sum()) / self.n
        density = self.fire_counts / self.n
        fvu = self.sum_sq_error / total_variance if total_variance > 0 else math.nan
        return {
            "n_tokens": self.n,
            "l0": self.sum_l0 / self.n,
            "mse": self.sum_sq_error / (self.n * self.d),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "relative_reconstruction_bias": (
                self.sum_sq_x_hat / self.sum_x_hat_dot_x if self.sum_x_hat_dot_x != 0 else math.nan
            ),
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "dense_fraction": float((density > dense_threshold).double().mean()),
            "feature_density": density.numpy(),
        }


@torch.no_grad()
def evaluate(
    sae: SAE,
    activations,
    *,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
    return_density: bool = False,
) -> dict[str, Any]:
    """Evaluate ``sae`` on every row of ``activations`` (in order).

    Returns a dict with ``l0`` (mean active latents per token), ``mse`` (mean squared
    error per element), ``fvu`` (``E||x - x_hat||^2 / E||x - E[x]||^2``),
    ``explained_variance`` (``1 - fvu``), ``relative_reconstruction_bias`` (gamma =
    ``E||x_hat||^2 / E[x_hat . x]``; 1 means no shrinkage, below 1 shrinkage),
    ``dead_fraction`` (latents that never fired), ``dense_fraction`` (latents firing
    on more than ``dense_threshold`` of tokens) and ``n_tokens``. With
    ``return_density=True`` it adds ``feature_density``, a numpy array of per-latent
    firing frequencies.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"evaluate: batch_size must be a positive integer (rows per batch, e.g. 4096), got "
                         f"{batch_size!r}.")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral)
                                   or max_tokens <= 0):
        raise ValueError(f"evaluate: max_tokens must be a positive integer or None (all rows), got {max_tokens!r}.")
    source = as_source(activations)
    if source.d != sae.d_in:
        raise ValueError(
            f"SAE/activation width mismatch: the SAE expects d_in={sae.d_in}, the activations "
            f"({source.description}) have width {source.d}. Evaluate on activations from the "
            "site the SAE was trained on."
        )
    acc = MetricAccumulator(sae.d_sae)
    seen = 0
    was_training = sae.training
    sae.eval()
    try:
        for batch in source.in_order(batch_size):
            if max_tokens is not None and seen >= max_tokens:
                break
            if max_tokens is not None:
                batch = batch[: max_tokens - seen]
            x = batch.to(device=sae.device, dtype=sae.dtype)
            latents = sae.encode(x)
            acc.update(x, sae.decode(latents), latents)
            seen += x.shape[0]
    finally:
        sae.train(was_training)
    result = acc.result(dense_threshold)
    if not return_density:
        result.pop("feature_density")
    return result


def log10_density_histogram(
    density: np.ndarray | Tensor, bins: int = 50, floor: float = 1e-7
) -> tuple[np.ndarray, np.ndarray, int]:
    """Histogram of ``log10`` firing densities of the latents that fired.

    Returns ``(counts, bin_edges, n_dead)``; dead latents (density 0) are counted
    separately because their logarithm is ``-inf``.
    """
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    counts, edges = np.histogram(np.log10(np.maximum(alive, floor)), bins=bins)
    return counts, edges, int((density == 0).sum())


def cosine_blocks(reference: Tensor, learned: Tensor, block: int = 4096) -> Iterator[tuple[int, Tensor]]:
    """Cosine similarities of the rows of ``reference`` with every row of ``learned``, in blocks.

    Yields ``(start, cos)`` with ``cos [rows, len(learned)]`` (float64, on ``reference``'s
    device) for ``block`` reference rows at a time, so the full matrix is never held:
    memory is about ``block * len(learned)`` float64 values plus normalised copies of both.
    """
    if block < 1:
        raise ValueError(f"block must be a positive number of rows, got {block}.")
    ref = reference.detach().double()  # detached: no autograd graph (no_grad would leak out of a generator)
    ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dic = learned.detach().double().to(ref.device)
    dic = dic / dic.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for start in range(0, ref.shape[0], block):
        yield start, ref[start : start + block] @ dic.T


@torch.no_grad()
def max_cosine_similarity(reference: Tensor, learned: Tensor, block: int = 4096) -> Tensor:
    """For every row of ``reference``, its max cosine similarity to any row of ``learned``.

    Computed in blocks of ``block`` reference rows (:func:`cosine_blocks`), so memory
    stays bounded.
    """
    out = torch.empty(reference.shape[0], dtype=torch.float64)
    for start, cos in cosine_blocks(reference, learned, block):
        out[start : start + cos.shape[0]] = cos.max(dim=1).values.cpu()
    return out


def mmcs(true_features: Tensor, decoder: Tensor) -> float:
    """Mean max cosine similarity: the mean over true features of the best cosine
    with any learned decoder row (1.0 means every feature was recovered exactly)."""
    return float(max_cosine_similarity(true_features, decoder).mean())
