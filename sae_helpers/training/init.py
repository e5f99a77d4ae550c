"""A run's starting point: the module that trains a configuration, and from a data sample the decoder
bias and the activation scale."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._dtypes import resolve_dtype
from ..saes.base import SAE
from ..saes.registry import get_sae_class
from .config import TrainConfig


@torch.no_grad()
def geometric_median(x: Tensor, iterations: int = 100, tol: float = 1e-7) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x``
    (Weiszfeld's algorithm, in float64). Robust to the outlier tokens of LM activations."""
    points = x.double()
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-12)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        shift = (new - median).norm()
        median = new
        if shift <= tol * max(1.0, float(median.norm())):
            break
    return median.to(x.dtype)


@torch.no_grad()
def activation_scale(x: Tensor) -> float:
    """The factor ``s`` with ``E||s x||^2 = d`` on the sample ``x``."""
    mean_sq_norm = float(x.double().pow(2).sum(1).mean())
    if not mean_sq_norm > 0:
        raise ValueError("Cannot normalise activations whose norms are all zero.")
    return math.sqrt(x.shape[1] / mean_sq_norm)


def initial_b_dec(x: Tensor, method: str) -> Tensor:
    """``b_dec`` from a sample: ``"geometric_median"``, ``"mean"`` or ``"zeros"``."""
    if method == "geometric_median":
        return geometric_median(x)
    if method == "mean":
        return x.double().mean(0).to(x.dtype)
    if method == "zeros":
        return torch.zeros(x.shape[1], dtype=x.dtype)
    raise ValueError(f"Unknown b_dec_init {method!r}.")


def build_training_sae(
    cfg: TrainConfig, d_in: int, device: torch.device, metadata: dict[str, Any] | None = None
) -> SAE:
    """The module that trains ``cfg``'s architecture (weights zero; call ``init_weights``)."""
    cls = get_sae_class(cfg.arch)
    try:
        return cls.for_training(
            d_in, cfg.width, dtype=resolve_dtype(cfg.dtype), device=device, metadata=metadata, **cfg.sae_kwargs()
        )
    except TypeError as err:
        raise ValueError(f"Bad sae_options {cfg.sae_options!r} for architecture {cfg.arch!r}: {err}") from err
