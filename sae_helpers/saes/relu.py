"""The baseline SAE: ReLU encoder, L1 penalty, unit-norm decoder rows."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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

    def forward(self, x: Tensor) -> SAEOutput:
        latents = self.encode(x)
        x_hat = self.decode(latents)
        losses = {
            "reconstruction": squared_error(x, x_hat),
            "sparsity": latents.sum(-1).mean(),
        }
        return SAEOutput(latents, x_hat, losses)
