"""The baseline SAE: ReLU encoder, L1 penalty, unit-norm decoder rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .base import (
    SAE,
    SAEOutput,
    accumulator_dtype,
    block_buffer,
    decode_and_error,
    reconstruction_grad,
    row_blocks,
)
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
        """Latents, reconstruction and the loss terms, as one fused autograd function
        (:class:`ReluTrainingStep`) on the encoder matmul ``self.project(x)``."""
        self.check_input(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        latents, x_hat, reconstruction, sparsity = ReluTrainingStep.apply(
            flat, self.project(flat), self.b_enc, self.W_dec, self.b_dec
        )
        losses = {"reconstruction": reconstruction, "sparsity": sparsity}
        return SAEOutput(latents.reshape(*lead, self.d_sae), x_hat.reshape(*lead, self.d_in), losses)


class ReluTrainingStep(torch.autograd.Function):
    """The baseline SAE's training forward and its backward, fused and written by hand.

    Inputs: ``x [N, d]``, ``u = (x - b_dec) W_enc [N, M]`` (from ``project``; autograd
    carries its gradient on to ``W_enc``, ``b_dec`` and ``x``), ``b_enc``, ``W_dec``,
    ``b_dec``. Outputs: ``f = ReLU(u + b_enc)``, ``x_hat`` and the ``reconstruction`` and
    ``sparsity`` (L1) losses. ``f`` is written into ``u``'s buffer (``u`` is marked
    dirty, so autograd checks that nothing needs its old value).

    Backward: ``dL/du = dL/db_enc (per row) = 1[f > 0] (dL/dx_hat W_dec^T + lambda / N)``,
    ``dL/dW_dec = f^T dL/dx_hat``, ``dL/db_dec = sum dL/dx_hat``. One [N, M] tensor is
    allocated for the gradient; the elementwise work runs in cache-sized row blocks.
    Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, u: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        latents = u
        row_sparsity = u.new_empty(u.shape[0])
        for rows in row_blocks(u):
            torch.sum(latents[rows].add_(b_enc).relu_(), dim=-1, out=row_sparsity[rows])
        ctx.mark_dirty(u)
        x_hat, error, reconstruction = decode_and_error(latents, W_dec, b_dec, x)
        ctx.save_for_backward(W_dec, latents, error)
        ctx.set_materialize_grads(False)
        return latents, x_hat, reconstruction, row_sparsity.mean()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any,
        grad_latents: Tensor | None,
        grad_x_hat: Tensor | None,
        grad_reconstruction: Tensor | None,
        grad_sparsity: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        W_dec, latents, error = ctx.saved_tensors
        n = latents.shape[0]
        grad_loss_out = reconstruction_grad(error, grad_reconstruction)
        grad_out = reconstruction_grad(error, grad_reconstruction, grad_x_hat)  # dL/dx_hat
        if grad_out is not None:
            grad_u = torch.mm(grad_out, W_dec.T)
            if grad_latents is not None:
                grad_u += grad_latents
        else:
            grad_u = torch.zeros_like(latents) if grad_latents is None else grad_latents.clone()
        sparsity_grad = None if grad_sparsity is None else grad_sparsity / n

        sum_pre = torch.zeros(latents.shape[1], dtype=accumulator_dtype(latents.dtype), device=latents.device)
        blocks = row_blocks(latents)
        mask = block_buffer(latents, blocks)
        for rows in blocks:
            g_r = grad_u[rows]
            if sparsity_grad is not None:
                g_r.add_(sparsity_grad)
            g_r.mul_(torch.gt(latents[rows], 0, out=mask[: rows.stop - rows.start]))
            sum_pre += g_r.sum(0, dtype=sum_pre.dtype)

        needs = ctx.needs_input_grad
        return (
            -grad_loss_out if needs[0] and grad_loss_out is not None else None,
            grad_u if needs[1] else None,
            sum_pre.to(latents.dtype) if needs[2] else None,
            torch.mm(latents.T, grad_out) if needs[3] and grad_out is not None else None,
            grad_out.sum(0) if needs[4] and grad_out is not None else None,
        )
