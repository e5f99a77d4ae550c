"""The Gated SAE's training step, fused: forward and a hand-written backward.

The fast path of :class:`sae_helpers.saes.GatedSAE`: :class:`GatedTrainingStep` gives the
same values and gradients as the plain autograd forward (``GatedSAE.plain_forward``, the
paper's equations) with less memory traffic (:mod:`.blocks`) and, at low density, a sparse
decoder (:mod:`.sparse`).
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


class GatedTrainingStep(torch.autograd.Function):
    """The Gated SAE's training forward and its backward, fused and written by hand.

    Inputs: ``x [N, d]``, ``u = (x - b_dec) W_gate [N, M]`` (from ``project``), ``b_gate``,
    ``r_mag``, ``b_mag``, ``W_dec``, ``b_dec``, ``W_gate``, the decoder path. Outputs:
    ``latents f``, ``x_hat`` and the ``reconstruction``, ``sparsity`` and ``auxiliary`` losses.

    With ``s = exp(r_mag)``, ``pi_gate = u + b_gate``, ``pi_mag = s u + b_mag``,
    ``f = 1[pi_gate > 0] ReLU(pi_mag)`` and ``a = ReLU(pi_gate)``, the backward is

    * ``g_f = dL/dx_hat W_dec^T`` and ``g_a = dL/dx_aux W_dec^T + lambda / N`` (one matmul
      each; the auxiliary term's ``W_dec`` and ``b_dec`` are frozen, so ``x_aux`` sends
      nothing else to the decoder),
    * ``g_mag = 1[f > 0] g_f`` (gate open and ``pi_mag > 0``), ``g_gate = 1[pi_gate > 0] g_a``,
    * ``dL/du = s g_mag + g_gate``, ``dL/db_mag = sum g_mag``, ``dL/db_gate = sum g_gate``,
      ``dL/dr_mag = s sum(g_mag u)``, ``dL/dW_dec = f^T dL/dx_hat``, ``dL/db_dec = sum dL/dx_hat``.

    Two decoder paths, chosen per batch by ``decoder`` (see :mod:`.sparse`):

    * dense: ``[N, M] x [M, d]`` matmuls. ``dL/du`` is returned and autograd carries it
      through ``project`` to ``W_gate``, ``b_dec`` and ``x`` (the ``W_gate`` input gets
      none). Memory: besides ``u`` it allocates three [N, M] tensors per step: ``f``, ``a``
      (whose buffer is reused for ``g_a`` and then ``dL/du``) and ``g_f``. The elementwise
      work runs in cache-sized row blocks (:func:`~.blocks.row_blocks`).
    * sparse (few open gates): everything after the encoder matmul runs on the gate's
      support (``f``'s is a subset): both decodes (``spmm``), ``g_f`` and ``g_a`` there only
      (``sampled_mm``, same frozen-decoder semantics), ``dL/dW_dec = f^T dL/dx_hat``
      (``spmm_t``), and the encoder's backward ``dL/dW_gate = (x - b_dec)^T dL/du``,
      ``dL/db_dec -= W_gate sum(dL/du)``, ``dL/dx += dL/du W_gate^T``, returned directly
      (``u`` gets no gradient, so this path assumes ``u = project(x)``). The backward
      allocates no [N, M] tensor.

    Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        u: Tensor,
        b_gate: Tensor,
        r_mag: Tensor,
        b_mag: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        W_enc: Tensor,
        decoder: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        scale = torch.exp(r_mag)
        latents = torch.empty_like(u)
        gate = torch.empty_like(u)  # ReLU(pi_gate); later the buffer of the gradients
        row_sparsity = u.new_empty(u.shape[0])
        blocks = row_blocks(u)
        mask = block_buffer(u, blocks)
        collector = SupportCollector(gate, W_dec.shape[1], decoder)  # the open gates: ReLU(pi_gate) > 0
        with pass_threads("gated.forward", u):
            for rows in blocks:
                u_r, f_r, a_r, m_r = u[rows], latents[rows], gate[rows], mask[: rows.stop - rows.start]
                torch.add(u_r, b_gate, out=a_r)  # pi_gate
                torch.mul(u_r, scale, out=f_r).add_(b_mag)  # pi_mag
                f_r.relu_().mul_(torch.gt(a_r, 0, out=m_r))  # 1[pi_gate > 0] ReLU(pi_mag)
                torch.sum(a_r.relu_(), dim=-1, out=row_sparsity[rows])
                collector.add(rows, mask=m_r)
        ctx.support = support = collector.finish()
        ctx.set_materialize_grads(False)
        if support is not None:
            f_values, a_values = support.gather(latents), support.gather(gate)
            x_hat, error, reconstruction = sparse_decode_and_error(support, f_values, W_dec, b_dec, x)
            _, aux_error, auxiliary = sparse_decode_and_error(support, a_values, W_dec, b_dec, x)
            ctx.save_for_backward(support.gather(u), scale, W_dec, f_values, error, aux_error, x, b_dec, W_enc)
            return latents, x_hat, reconstruction, row_sparsity.mean(), auxiliary
        x_hat, error, reconstruction = decode_and_error(latents, W_dec, b_dec, x)
        _, aux_error, auxiliary = decode_and_error(gate, W_dec, b_dec, x)
        ctx.save_for_backward(u, b_gate, scale, W_dec, latents, error, aux_error)
        ctx.scratch = gate
        return latents, x_hat, reconstruction, row_sparsity.mean(), auxiliary

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any,
        grad_latents: Tensor | None,
        grad_x_hat: Tensor | None,
        grad_reconstruction: Tensor | None,
        grad_sparsity: Tensor | None,
        grad_auxiliary: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        if ctx.support is not None:
            return GatedTrainingStep.sparse_backward(
                ctx, grad_latents, grad_x_hat, grad_reconstruction, grad_sparsity, grad_auxiliary
            )
        u, b_gate, scale, W_dec, latents, error, aux_error = ctx.saved_tensors
        n = u.shape[0]
        # The forward's ReLU(pi_gate) buffer is no longer needed: reuse it (once) for the gradient.
        grad_u, ctx.scratch = ctx.scratch, None
        if grad_u is None:
            grad_u = torch.empty_like(u)

        grad_loss_out = reconstruction_grad(error, grad_reconstruction)  # from the loss alone
        grad_out = reconstruction_grad(error, grad_reconstruction, grad_x_hat)  # dL/dx_hat
        grad_aux_out = reconstruction_grad(aux_error, grad_auxiliary)  # dL/dx_aux
        grad_f = None if grad_out is None else torch.mm(grad_out, W_dec.T)
        if grad_latents is not None:
            grad_f = grad_latents.clone() if grad_f is None else grad_f.add_(grad_latents)
        if grad_aux_out is None:
            grad_u.zero_()
        else:
            torch.mm(grad_aux_out, W_dec.T, out=grad_u)  # g_a, before the gate mask
        sparsity_grad = None if grad_sparsity is None else grad_sparsity / n

        acc = {"dtype": accumulator_dtype(u.dtype), "device": u.device}
        sum_gate, sum_mag, sum_mag_u = (torch.zeros(u.shape[1], **acc) for _ in range(3))
        blocks = row_blocks(u)
        tmp = block_buffer(u, blocks)
        with pass_threads("gated.backward", u):
            for rows in blocks:
                u_r, g_r, t_r = u[rows], grad_u[rows], tmp[: rows.stop - rows.start]
                if sparsity_grad is not None:
                    g_r.add_(sparsity_grad)
                g_r.mul_(torch.add(u_r, b_gate, out=t_r).gt_(0))  # g_gate: the forward's 1[pi_gate > 0]
                sum_gate += g_r.sum(0, dtype=acc["dtype"])
                if grad_f is not None:
                    g_mag = grad_f[rows].mul_(torch.gt(latents[rows], 0, out=t_r))  # 1[f > 0] g_f
                    sum_mag += g_mag.sum(0, dtype=acc["dtype"])
                    sum_mag_u += torch.mul(g_mag, u_r, out=t_r).sum(0, dtype=acc["dtype"])
                    g_r.addcmul_(g_mag, scale)  # dL/du = g_gate + s g_mag

        needs = ctx.needs_input_grad
        grad_x = None
        if needs[0]:  # x enters the two squared errors directly (and u through autograd)
            direct = [g for g in (grad_loss_out, grad_aux_out) if g is not None]
            grad_x = -sum(direct) if direct else None
        grad_W_dec = torch.mm(latents.T, grad_out) if needs[5] and grad_out is not None else None
        grad_b_dec = grad_out.sum(0) if needs[6] and grad_out is not None else None
        dtype = u.dtype
        return (
            grad_x,
            grad_u if needs[1] else None,
            sum_gate.to(dtype) if needs[2] else None,
            (sum_mag_u.to(dtype) * scale) if needs[3] else None,
            sum_mag.to(dtype) if needs[4] else None,
            grad_W_dec,
            grad_b_dec,
            None,  # W_gate: through autograd from dL/du
            None,  # decoder
        )

    @staticmethod
    def sparse_backward(
        ctx: Any,
        grad_latents: Tensor | None,
        grad_x_hat: Tensor | None,
        grad_reconstruction: Tensor | None,
        grad_sparsity: Tensor | None,
        grad_auxiliary: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        """The backward on the open gates' support (the sparse path; see the class docstring)."""
        u_values, scale, W_dec, f_values, error, aux_error, x, b_dec, W_enc = ctx.saved_tensors
        support, n, dtype = ctx.support, x.shape[0], x.dtype
        acc = accumulator_dtype(dtype)
        grad_loss_out = reconstruction_grad(error, grad_reconstruction)  # from the loss alone
        grad_out = reconstruction_grad(error, grad_reconstruction, grad_x_hat)  # dL/dx_hat
        grad_out = None if grad_out is None else grad_out.contiguous()
        grad_aux_out = reconstruction_grad(aux_error, grad_auxiliary)  # dL/dx_aux

        # On the support every gate is open: g_gate = g_a + lambda / N there, zero elsewhere.
        if grad_aux_out is None:
            grad_u = u_values.new_zeros(support.nnz)
        else:
            grad_u = sampled_mm(support, grad_aux_out, W_dec)  # frozen W_dec: no W_dec gradient from it
        if grad_sparsity is not None:
            grad_u += grad_sparsity / n
        sum_gate = column_sums(support, grad_u, acc)
        sum_mag = sum_mag_u = None
        g_mag = None if grad_out is None else sampled_mm(support, grad_out, W_dec)  # g_f
        if grad_latents is not None:
            g_gl = support.gather(grad_latents)
            g_mag = g_gl if g_mag is None else g_mag.add_(g_gl)
        if g_mag is not None:
            g_mag.mul_(f_values > 0)  # g_mag = 1[f > 0] g_f
            sum_mag = column_sums(support, g_mag, acc)
            sum_mag_u = column_sums(support, g_mag * u_values, acc)
            grad_u.addcmul_(g_mag, scale.index_select(0, support.cols))  # dL/du = g_gate + s g_mag
        sum_u = sum_gate if sum_mag is None else sum_gate + scale.to(acc) * sum_mag  # sum(dL/du)

        needs = ctx.needs_input_grad
        encoder = needs[1]  # as on the dense path: the encoder's gradients flow where u's would
        grad_x = None
        if needs[0]:  # x enters the two squared errors directly, and u through the encoder
            grad_x = spmm(support, grad_u, W_enc.T.contiguous()) if encoder else None
            for direct in (grad_loss_out, grad_aux_out):
                if direct is not None:
                    grad_x = -direct if grad_x is None else grad_x.sub_(direct)
        grad_b_dec = None
        if needs[6]:  # through the decoder (not the frozen auxiliary one) and the encoder
            grad_b_dec = -(W_enc @ sum_u.to(dtype)) if encoder else None
            if grad_out is not None:
                grad_b_dec = grad_out.sum(0) if grad_b_dec is None else grad_b_dec.add_(grad_out.sum(0))
        zeros = torch.zeros(support.shape[1], dtype=dtype, device=x.device)
        return (
            grad_x,
            None,  # u: its gradient goes straight to W_gate, b_dec and x
            sum_gate.to(dtype) if needs[2] else None,
            (zeros if sum_mag_u is None else sum_mag_u.to(dtype) * scale) if needs[3] else None,
            (zeros if sum_mag is None else sum_mag.to(dtype)) if needs[4] else None,
            spmm_t(support, f_values, grad_out) if needs[5] and grad_out is not None else None,
            grad_b_dec,
            spmm_t(support, grad_u, x - b_dec).T.contiguous() if needs[7] and encoder else None,
            None,  # decoder
        )
