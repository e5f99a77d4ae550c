"""JumpReLU SAE (inference): ``f = ReLU(pi) * 1[pi > threshold]``.

``pi = (x - b_dec) W_enc + b_enc``, as in SAELens's ``"jumprelu"`` architecture.
It is the export format of Gated SAEs (:meth:`GatedSAE.to_jumprelu`) and loads
JumpReLU SAEs saved by SAELens. Training it directly (straight-through estimator,
L0 penalty) is not implemented yet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SAE, SAEOutput, squared_error
from .registry import register


@register
class JumpReluSAE(SAE):
    """JumpReLU SAE with a per-latent threshold (SAELens architecture ``"jumprelu"``)."""

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    trainable = False
    latent_axes = {"W_enc": 1, "b_enc": 0, "threshold": 0, "W_dec": 0}
    bias_like = ("b_enc", "threshold", "b_dec")
    reset_on_resample = ("b_enc", "threshold")

    def __init__(self, d_in: int, d_sae: int, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        factory = {"dtype": self.dtype, "device": self.device}
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.threshold = nn.Parameter(torch.zeros(d_sae, **factory))

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
