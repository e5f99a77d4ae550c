"""The baseline SAE: ReLU encoder, L1 penalty, unit-norm decoder rows."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels.relu import ReluTrainingStep
from .base import SAE, SAEOutput, squared_error
from .registry import register


@register
class ReluSAE(SAE):
    """``f = ReLU((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``.

    Loss terms: ``reconstruction = ||x - x_hat||^2`` and ``sparsity = sum_i f_i``
    (the L1 norm; decoder rows have unit norm, so no norm weighting is needed).
    Saved as SAELens architecture ``"standard"``.
    """

    architecture = "relu"
    saelens_architecture = "standard"
    latent_axes = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    bias_like = ("b_enc", "b_dec")
    reset_on_resample = ("b_enc",)

    def __init__(self, d_in: int, d_sae: int, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))

    def pre_activations(self, x: Tensor) -> Tensor:
        """``(x - b_dec) W_enc + b_enc``."""
        return self.project(x) + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x))

    def forward(self, x: Tensor, *, fused: bool = True, decoder: str = "auto") -> SAEOutput:
        """Latents, reconstruction and the loss terms: those of :meth:`plain_forward`.

        ``fused=True`` (the default, what training runs) computes them with the fused
        training step :class:`~sae_helpers.kernels.relu.ReluTrainingStep` on the encoder matmul
        ``self.project(x)``, on decoder path ``decoder`` (``"auto"``: chosen per batch,
        ``"dense"`` or ``"sparse"``); ``fused=False`` runs :meth:`plain_forward`.
        """
        if not fused:
            return self.plain_forward(x)
        # ---- the fast path: the same values and gradients, by sae_helpers.kernels
        self.check_input(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        latents, x_hat, reconstruction, sparsity = ReluTrainingStep.apply(
            flat, self.project(flat), self.b_enc, self.W_dec, self.b_dec, self.W_enc, decoder
        )
        losses = {"reconstruction": reconstruction, "sparsity": sparsity}
        return SAEOutput(latents.reshape(*lead, self.d_sae), x_hat.reshape(*lead, self.d_in), losses)

    def plain_forward(self, x: Tensor) -> SAEOutput:
        """The class docstring's equations in plain autograd (the reference of the fast path)."""
        f = torch.relu(self.pre_activations(x))
        x_hat = f @ self.W_dec + self.b_dec
        losses = {
            "reconstruction": squared_error(x, x_hat),  # ||x - x_hat||^2
            "sparsity": f.sum(-1).mean(),  # ||f||_1 (f >= 0)
        }
        return SAEOutput(f, x_hat, losses)
