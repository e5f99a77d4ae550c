"""Synthetic activations with known ground truth.

Each sample is a sparse, non-negative combination of known unit feature directions
in ``R^d`` (more features than dimensions: superposition), plus optional noise and
a constant offset. Because the true features and coefficients are known, feature
recovery (MMCS) and shrinkage can be measured exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

MAGNITUDES = ("uniform", "exponential", "lognormal", "constant")


class SyntheticSample(NamedTuple):
    """``x [n, d]`` and the true coefficients ``[n, n_features]`` that made it."""

    x: Tensor
    coefficients: Tensor


@dataclass(frozen=True)
class SyntheticFeatures:
    """A generator of sparse superposed features.

    Parameters
    ----------
    d : activation width.
    n_features : number of true feature directions (unit vectors, random).
    firing_prob : probability that a feature is active in a sample; one number or one
        per feature (see :func:`zipf_firing_probs` for graded rates).
    magnitude : distribution of an active feature's coefficient: ``"uniform"`` on
        ``[magnitude_low, magnitude_high]``, ``"exponential"`` with mean
        ``magnitude_high``, ``"lognormal"`` (median ``magnitude_high``, sigma 0.5),
        or ``"constant"`` (``magnitude_high``).
    noise : standard deviation of isotropic Gaussian noise added to every sample.
    offset : norm of a constant vector added to every sample (exercises ``b_dec``).
    seed : seed of the feature directions and the offset.
    """

    d: int = 32
    n_features: int = 64
    firing_prob: float | tuple[float, ...] = 0.05
    magnitude: str = "uniform"
    magnitude_low: float = 0.5
    magnitude_high: float = 1.5
    noise: float = 0.0
    offset: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d <= 0 or self.n_features <= 0:
            raise ValueError(f"d and n_features must be positive, got d={self.d}, n_features={self.n_features}.")
        if self.magnitude not in MAGNITUDES:
            raise ValueError(f"Unknown magnitude distribution {self.magnitude!r}; use one of {MAGNITUDES}.")
        probs = self.probabilities
        if probs.shape != (self.n_features,) or bool(((probs < 0) | (probs > 1)).any()):
            raise ValueError("firing_prob must be one probability or one per feature, each in [0, 1].")

    @cached_property
    def probabilities(self) -> Tensor:
        """Per-feature firing probabilities ``[n_features]``."""
        p = torch.as_tensor(self.firing_prob, dtype=torch.float32)
        return p.expand(self.n_features).clone() if p.ndim == 0 else p

    @cached_property
    def features(self) -> Tensor:
        """The true unit feature directions ``[n_features, d]``."""
        gen = torch.Generator().manual_seed(self.seed)
        f = torch.randn(self.n_features, self.d, generator=gen)
        return f / f.norm(dim=1, keepdim=True)

    @cached_property
    def offset_vector(self) -> Tensor:
        """The constant offset added to every sample ``[d]``."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        v = torch.randn(self.d, generator=gen)
        return v / v.norm() * self.offset

    def _magnitudes(self, shape: tuple[int, int], gen: torch.Generator) -> Tensor:
        lo, hi = self.magnitude_low, self.magnitude_high
        if self.magnitude == "uniform":
            return lo + (hi - lo) * torch.rand(shape, generator=gen)
        if self.magnitude == "exponential":
            return -hi * torch.log1p(-torch.rand(shape, generator=gen))
        if self.magnitude == "lognormal":
            return hi * torch.exp(0.5 * torch.randn(shape, generator=gen))
        return torch.full(shape, hi)

    def sample(self, n: int, seed: int = 0) -> SyntheticSample:
        """``n`` samples and their true coefficients, deterministic in ``seed``."""
        gen = torch.Generator().manual_seed(10_007 * (seed + 1) + self.seed)
        active = torch.rand(n, self.n_features, generator=gen) < self.probabilities
        coefficients = active * self._magnitudes((n, self.n_features), gen)
        x = coefficients @ self.features + self.offset_vector
        if self.noise:
            x = x + self.noise * torch.randn(n, self.d, generator=gen)
        return SyntheticSample(x, coefficients)


def zipf_firing_probs(n_features: int, p_max: float = 0.2, exponent: float = 1.0) -> tuple[float, ...]:
    """Graded firing probabilities ``p_max / rank**exponent`` (rank 1 .. n_features)."""
    ranks = torch.arange(1, n_features + 1, dtype=torch.float64)
    return tuple((p_max / ranks**exponent).tolist())


def appendix_f_toy(seed: int = 0) -> SyntheticFeatures:
    """The chapter's toy for shrinkage: features in 2x superposition whose active
    coefficients are bounded away from zero (uniform on [1, 2]).

    Interference between superposed features puts noise on every pre-activation,
    so an SAE must threshold. A ReLU SAE thresholds by lowering its bias, which also
    shrinks every active latent; a Gated (JumpReLU) SAE thresholds with a jump and
    keeps magnitudes. Our construction, in the spirit of the Gated SAE paper's
    appendix F toy; it is not a copy of that experiment.
    """
    return SyntheticFeatures(
        d=16,
        n_features=32,
        firing_prob=0.04,
        magnitude="uniform",
        magnitude_low=1.0,
        magnitude_high=2.0,
        seed=seed,
    )
