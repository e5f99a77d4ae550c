"""The baseline (ReLU, L1) SAE's training step, fused: forward and a hand-written backward.

The fast path of :class:`sae_helpers.saes.ReluSAE`: :class:`ReluTrainingStep` gives the
same values and gradients as the plain autograd forward (``ReluSAE.plain_forward``) with
less memory traffic (:mod:`.blocks`) and, at low density, a sparse decoder (:mod:`.sparse`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .blocks import (
    accumulator_dtype,
    block_buffer,
    decode_and_error,
    reconstruction_grad,
    row_blocks,
)
from .sparse import SupportCollector, column_sums, sampled_mm, sparse_decode_and_error, spmm, spmm_t
from .threads import pass_threads


class ReluTrainingStep(torch.autograd.Function):
    """The baseline SAE's training forward and its backward, fused and written by hand.

    Inputs: ``x [N, d]``, ``u = (x - b_dec) W_enc [N, M]`` (from ``project``), ``b_enc``,
    ``W_dec``, ``b_dec``, ``W_enc``, the decoder path. Outputs: ``f = ReLU(u + b_enc)``,
    ``x_hat`` and the ``reconstruction`` and ``sparsity`` (L1) losses. ``f`` is written into ``u``'s buffer
    (``u`` is marked dirty, so autograd checks that nothing needs its old value).

    Backward: ``dL/du = dL/db_enc (per row) = 1[f > 0] (dL/dx_hat W_dec^T + lambda / N)``,
    ``dL/dW_dec = f^T dL/dx_hat``, ``dL/db_dec = sum dL/dx_hat``.

    Two decoder paths, chosen per batch by ``decoder`` (see :mod:`.sparse`):

    * dense: ``[N, M] x [M, d]`` matmuls; ``dL/du`` is returned and autograd carries it
      through ``project`` to ``W_enc``, ``b_dec`` and ``x`` (the ``W_enc`` input gets none).
      One [N, M] tensor is allocated for the gradient; the elementwise work runs in
      cache-sized row blocks.
    * sparse (few active latents): the products run on the support of ``f`` only
      (``spmm``, ``sampled_mm``, ``spmm_t``), and so does the encoder's backward:
      ``dL/dW_enc = (x - b_dec)^T dL/du``, ``dL/db_dec -= W_enc sum(dL/du)``,
      ``dL/dx += dL/du W_enc^T``, returned directly (``u`` gets no gradient, so this path
      assumes ``u = project(x)``). No [N, M] tensor is allocated in the backward.

    Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, u: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, W_enc: Tensor, decoder: str
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        latents = u
        row_sparsity = u.new_empty(u.shape[0])
        collector = SupportCollector(latents, W_dec.shape[1], decoder)
        with pass_threads("relu.forward", u):
            for rows in row_blocks(u):
                torch.sum(latents[rows].add_(b_enc).relu_(), dim=-1, out=row_sparsity[rows])
                collector.add(rows)
        ctx.mark_dirty(u)
        ctx.support = support = collector.finish()
        if support is None:
            x_hat, error, reconstruction = decode_and_error(latents, W_dec, b_dec, x)
            ctx.save_for_backward(W_dec, latents, error)
        else:
            values = support.gather(latents)
            x_hat, error, reconstruction = sparse_decode_and_error(support, values, W_dec, b_dec, x)
            ctx.save_for_backward(W_dec, values, error, x, b_dec, W_enc)
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
        if ctx.support is not None:
            return ReluTrainingStep.sparse_backward(ctx, grad_latents, grad_x_hat, grad_reconstruction, grad_sparsity)
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
        with pass_threads("relu.backward", latents):
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
            None,  # W_enc: through autograd from dL/du
            None,  # decoder
        )

    @staticmethod
    def sparse_backward(
        ctx: Any,
        grad_latents: Tensor | None,
        grad_x_hat: Tensor | None,
        grad_reconstruction: Tensor | None,
        grad_sparsity: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        """The backward on the support of ``f`` (the sparse path; see the class docstring)."""
        W_dec, values, error, x, b_dec, W_enc = ctx.saved_tensors
        support, n, dtype = ctx.support, x.shape[0], x.dtype
        grad_loss_out = reconstruction_grad(error, grad_reconstruction)
        grad_out = reconstruction_grad(error, grad_reconstruction, grad_x_hat)  # dL/dx_hat
        grad_out = None if grad_out is None else grad_out.contiguous()
        # dL/du on the support (where f > 0, so the ReLU mask is one)
        grad_u = values.new_zeros(support.nnz) if grad_out is None else sampled_mm(support, grad_out, W_dec)
        if grad_latents is not None:
            grad_u += support.gather(grad_latents)
        if grad_sparsity is not None:
            grad_u += grad_sparsity / n
        sum_pre = column_sums(support, grad_u, accumulator_dtype(dtype))

        needs = ctx.needs_input_grad
        encoder = needs[1]  # as on the dense path: the encoder's gradients flow where u's would
        grad_x = None
        if needs[0]:  # x enters the squared error directly, and u through the encoder
            grad_x = spmm(support, grad_u, W_enc.T.contiguous()) if encoder else None
            if grad_loss_out is not None:
                grad_x = -grad_loss_out if grad_x is None else grad_x.sub_(grad_loss_out)
        grad_b_dec = None
        if needs[4]:
            grad_b_dec = -(W_enc @ sum_pre.to(dtype)) if encoder else None
            if grad_out is not None:
                grad_b_dec = grad_out.sum(0) if grad_b_dec is None else grad_b_dec.add_(grad_out.sum(0))
        return (
            grad_x,
            None,  # u: its gradient goes straight to W_enc, b_dec and x
            sum_pre.to(dtype) if needs[2] else None,
            spmm_t(support, values, grad_out) if needs[3] and grad_out is not None else None,
            grad_b_dec,
            spmm_t(support, grad_u, x - b_dec).T.contiguous() if needs[5] and encoder else None,
            None,  # decoder
        )
