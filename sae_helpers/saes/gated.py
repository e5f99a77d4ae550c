"""The Gated SAE of Rajamanoharan et al. (2024), exactly as in the paper.

With ``x_c = x - b_dec`` and ``u = x_c W_gate`` (computed once):

* gate: ``pi_gate = u + b_gate``, ``f_gate = 1[pi_gate > 0]``
* magnitude (tied weights): ``pi_mag = exp(r_mag) * u + b_mag``
* latents ``f = f_gate * ReLU(pi_mag)``, reconstruction ``x_hat = f W_dec + b_dec``

Loss terms: ``reconstruction = ||x - x_hat||^2``, ``sparsity = sum_i ReLU(pi_gate)_i``
and ``auxiliary = ||x - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2`` where ``sg`` is a
stop-gradient: the auxiliary term trains the gate, never the decoder. ``x_c`` is not
detached. ``W_gate`` is stored under SAELens's name ``W_enc``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels.gated import GatedTrainingStep
from .base import SAE, SAEOutput, squared_error
from .registry import register


@register
class GatedSAE(SAE):
    """Gated SAE (SAELens architecture ``"gated"``); see the module docstring."""

    architecture = "gated"
    saelens_architecture = "gated"
    latent_axes = {"W_enc": 1, "b_gate": 0, "r_mag": 0, "b_mag": 0, "W_dec": 0}
    encoder_biases = {"b_gate": None, "b_mag": "r_mag"}  # pi_gate = u + b_gate, pi_mag = exp(r_mag) u + b_mag
    bias_like = ("b_gate", "b_mag", "b_dec")
    reset_on_resample = ("b_gate", "r_mag", "b_mag")

    def __init__(self, d_in: int, d_sae: int, **kwargs) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        factory = {"dtype": self.dtype, "device": self.device}
        self.b_gate = nn.Parameter(torch.zeros(d_sae, **factory))
        self.r_mag = nn.Parameter(torch.zeros(d_sae, **factory))
        self.b_mag = nn.Parameter(torch.zeros(d_sae, **factory))

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(pi_gate, pi_mag)`` from a single encoder matmul."""
        u = self.project(x)
        return u + self.b_gate, torch.exp(self.r_mag) * u + self.b_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        return torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)

    def forward(self, x: Tensor, *, fused: bool = True, decoder: str = "auto") -> SAEOutput:
        """Latents, reconstruction and the three loss terms: those of :meth:`plain_forward`.

        ``fused=True`` (the default, what training runs) computes them with the fused
        training step :class:`~sae_helpers.kernels.gated.GatedTrainingStep` on the single encoder
        matmul ``u = self.project(x)``, on decoder path ``decoder`` (``"auto"``: chosen per
        batch, ``"dense"`` or ``"sparse"``); its hand-written backward gives the paper's
        gradients (the Heaviside gate passes none; the auxiliary term reaches the decoder
        only as a frozen copy). ``fused=False`` runs :meth:`plain_forward`.
        """
        if not fused:
            return self.plain_forward(x)
        # ---- the fast path: the same values and gradients, by sae_helpers.kernels
        self.check_input(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        u = self.project(flat)
        latents, x_hat, reconstruction, sparsity, auxiliary = GatedTrainingStep.apply(
            flat, u, self.b_gate, self.r_mag, self.b_mag, self.W_dec, self.b_dec, self.W_enc, decoder
        )
        losses = {"reconstruction": reconstruction, "sparsity": sparsity, "auxiliary": auxiliary}
        return SAEOutput(latents.reshape(*lead, self.d_sae), x_hat.reshape(*lead, self.d_in), losses)

    def plain_forward(self, x: Tensor) -> SAEOutput:
        """The module docstring's equations in plain autograd (the reference of the fast path)."""
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        f = torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)  # 1[pi_gate > 0] ReLU(pi_mag)
        x_hat = f @ self.W_dec + self.b_dec
        gate = torch.relu(pi_gate)
        x_gate = gate @ self.W_dec.detach() + self.b_dec.detach()  # sg: the frozen decoder
        losses = {
            "reconstruction": squared_error(x, x_hat),  # ||x - x_hat||^2
            "sparsity": gate.sum(-1).mean(),  # ||ReLU(pi_gate)||_1
            "auxiliary": squared_error(x, x_gate),  # ||x - x_gate||^2, trains the gate only
        }
        return SAEOutput(f, x_hat, losses)

    @torch.no_grad()
    def to_jumprelu(self):
        """The equivalent JumpReLU SAE (exact: with tied weights a Gated SAE *is* one).

        ``W_enc' = W_gate * exp(r_mag)``, ``b_enc' = b_mag`` and
        ``threshold = b_mag - exp(r_mag) * b_gate``, because
        ``pi_gate > 0  <=>  pi_mag > b_mag - exp(r_mag) b_gate``.
        """
        from .jumprelu import JumpReluSAE

        scale = torch.exp(self.r_mag)
        out = JumpReluSAE(
            self.d_in, self.d_sae, dtype=self.dtype, device=self.device, metadata=self.metadata
        )
        out.provenance = self.provenance
        out.W_enc.copy_(self.W_enc * scale)
        out.b_enc.copy_(self.b_mag)
        out.threshold.copy_(self.b_mag - scale * self.b_gate)
        out.W_dec.copy_(self.W_dec)
        out.b_dec.copy_(self.b_dec)
        return out
