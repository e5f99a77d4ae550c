"""JumpReLU SAE (Rajamanoharan et al. 2024b): ``f = ReLU(pi) * 1[pi > theta]`` per latent.

``pi = (x - b_dec) W_enc + b_enc``, as in SAELens's ``"jumprelu"`` architecture.

* :class:`JumpReluSAE` is the saved and inference form, with a ``threshold`` parameter
  (any real value: a threshold <= 0 makes the latent a plain ReLU). It is the export
  format of Gated SAEs (:meth:`GatedSAE.to_jumprelu`, exact) and of BatchTopK SAEs, and
  loads JumpReLU SAEs saved by SAELens.
* :class:`JumpReluTrainingSAE` is what ``train_sae(arch="jumprelu", l0_coefficient=...)``
  trains: thresholds parametrised by their logarithm (``theta = exp(log_threshold)``,
  initially ``init_threshold``), the loss ``||x - x_hat||^2 + lambda * L0`` with
  ``L0 = sum_i 1[pi_i > theta_i]``, and the paper's straight-through estimators with a
  rectangle kernel ``K(u) = 1[|u| < 1/2]`` of ``bandwidth`` eps:

  - ``d f_i / d theta_i = -(theta_i / eps) K((pi_i - theta_i) / eps)``,
  - ``d 1[pi_i > theta_i] / d theta_i = -(1 / eps) K((pi_i - theta_i) / eps)``,
  - ``d f_i / d pi_i = 1[pi_i > theta_i]``; the L0 term sends no gradient to ``pi``.

  Defaults here: ``theta`` starts at ``init_threshold = 0.5`` with ``bandwidth = 0.1``, in
  the trainer's units (activations scaled to ``E||x||^2 = d``, so pre-activations are of
  order 1). The paper's 0.001 and 0.001 suit its runs of 10^5 steps and more: Adam moves a
  log-threshold by about ``lr`` per step, so from 0.001 the thresholds barely rise in a
  few thousand steps and the SAE stays dense (measured on the known-features data: L0 59
  of 64 latents after 3,000 steps, whatever ``l0_coefficient``). Pass
  ``sae_options={"init_threshold": ..., "bandwidth": ...}`` to change them. For short
  runs, ``threshold_lr_scale`` multiplies the thresholds' learning rate (default 1): in
  400 steps at lr 1e-3 a log-threshold can move by at most about 0.4, and on SmolLM2's
  residual stream L0 then hardly depends on ``l0_coefficient`` (46-47 for 1 to 10); with
  a scale of 10 it falls from 49 to 8 as the coefficient goes from 0.3 to 10. After
  training, :meth:`JumpReluTrainingSAE.for_inference` gives the :class:`JumpReluSAE`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import SAE, SAEOutput, squared_error
from .registry import register


def _kernel(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """The rectangle kernel ``K((pre - threshold) / bandwidth)`` as 0/1 of ``pre``'s dtype."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


class JumpReluFunction(torch.autograd.Function):
    """``pre * 1[pre > threshold]`` with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold).to(grad.dtype)
        kernel = _kernel(pre, threshold, ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * (grad * kernel).reshape(-1, pre.shape[-1]).sum(0)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """``1[pre > threshold]`` with the straight-through threshold gradient (none to ``pre``)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        kernel = _kernel(pre, threshold, ctx.bandwidth)
        grad_threshold = -(1.0 / ctx.bandwidth) * (grad * kernel).reshape(-1, pre.shape[-1]).sum(0)
        return None, grad_threshold, None


@register
class JumpReluSAE(SAE):
    """JumpReLU SAE with a per-latent threshold (SAELens architecture ``"jumprelu"``)."""

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    latent_axes = {"W_enc": 1, "b_enc": 0, "threshold": 0, "W_dec": 0}
    bias_like = ("b_enc", "threshold", "b_dec")
    reset_on_resample = ("b_enc", "threshold")
    sparsity_option = "l0_coefficient"
    training_options = {"bandwidth": float, "init_threshold": float, "threshold_lr_scale": float}
    resamples_by_default = False

    def __init__(self, d_in: int, d_sae: int, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        factory = {"dtype": self.dtype, "device": self.device}
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.threshold = nn.Parameter(torch.zeros(d_sae, **factory))

    @classmethod
    def for_training(cls, d_in: int, d_sae: int, **kwargs: Any) -> SAE:
        return JumpReluTrainingSAE(d_in, d_sae, **kwargs)

    def pre_activations(self, x: Tensor) -> Tensor:
        return self.project(x) + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return torch.where(pre > self.threshold, torch.relu(pre), 0.0)

    def forward(self, x: Tensor) -> SAEOutput:
        latents = self.encode(x)
        x_hat = self.decode(latents)
        losses = {
            "reconstruction": squared_error(x, x_hat),
            "sparsity": (latents > 0).sum(-1).to(x.dtype).mean(),
        }
        return SAEOutput(latents, x_hat, losses)


class JumpReluTrainingSAE(JumpReluSAE):
    """The trainable JumpReLU SAE (log-thresholds, straight-through estimators)."""

    latent_axes = {"W_enc": 1, "b_enc": 0, "log_threshold": 0, "W_dec": 0}
    bias_like = ("b_enc", "b_dec")  # log_threshold is shifted by -log(scale) instead
    reset_on_resample = ("b_enc",)  # and log_threshold goes back to log(init_threshold)

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        bandwidth: float = 0.1,
        init_threshold: float = 0.5,
        threshold_lr_scale: float = 1.0,
        **kwargs,
    ) -> None:
        SAE.__init__(self, d_in, d_sae, **kwargs)
        checks = {"bandwidth": bandwidth, "init_threshold": init_threshold, "threshold_lr_scale": threshold_lr_scale}
        for name, value in checks.items():
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        self.bandwidth = float(bandwidth)
        self.init_threshold = float(init_threshold)
        self.threshold_lr_scale = float(threshold_lr_scale)
        factory = {"dtype": self.dtype, "device": self.device}
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init_threshold), **factory))

    def lr_scales(self) -> dict[str, float]:
        return {"log_threshold": self.threshold_lr_scale}

    @property
    def threshold(self) -> Tensor:  # type: ignore[override]
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> SAE:
        super().init_weights(generator)
        self.log_threshold.fill_(math.log(self.init_threshold))
        return self

    @torch.no_grad()
    def fold_activation_scale_(self, scale: float) -> None:
        super().fold_activation_scale_(scale)
        self.log_threshold.sub_(math.log(scale))

    @torch.no_grad()
    def reinitialize_latents_(self, latents: Tensor, directions: Tensor, encoder_norm: float) -> None:
        super().reinitialize_latents_(latents, directions, encoder_norm)
        self.log_threshold[latents] = math.log(self.init_threshold)

    def forward(self, x: Tensor) -> SAEOutput:
        """Latents, reconstruction, and the loss terms ``reconstruction`` and ``sparsity``
        (L0, differentiable in the thresholds through the straight-through estimator)."""
        self.check_input(x)
        pre = self.pre_activations(x)
        threshold = self.threshold
        latents = JumpReluFunction.apply(pre, threshold, self.bandwidth)
        x_hat = self.decode(latents)
        l0 = StepFunction.apply(pre, threshold, self.bandwidth).sum(-1).mean()
        return SAEOutput(latents, x_hat, {"reconstruction": squared_error(x, x_hat), "sparsity": l0})

    @torch.no_grad()
    def for_inference(self) -> JumpReluSAE:
        """The :class:`JumpReluSAE` with ``threshold = exp(log_threshold)``."""
        out = JumpReluSAE(self.d_in, self.d_sae, dtype=self.dtype, device=self.device, metadata=self.metadata)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(out, name).copy_(getattr(self, name))
        out.threshold.copy_(self.threshold)
        out.provenance = self.provenance
        return out
