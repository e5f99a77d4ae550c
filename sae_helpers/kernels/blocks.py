"""Row-blocked elementwise work and the dense decode shared by the fused training steps.

A training step is bound by its ``[batch, d_in] x [d_in, d_sae]`` matmuls; everything else
is elementwise work on ``[batch, d_sae]`` tensors. Autograd runs each elementwise op as a
separate pass over memory and allocates a fresh ``[batch, d_sae]`` result for most of them
(on CPU every allocation above glibc's 32 MiB mmap limit is page-faulted in anew, which
costs several plain passes). The fused steps (:mod:`.relu`, :mod:`.gated`) instead write
into a few buffers, reuse them for the gradients, and do the elementwise work in row
blocks small enough to stay in cache (:func:`row_blocks`, :func:`block_buffer`), on one
thread or all, whichever is faster under the machine's current load
(:data:`~.threads.pass_threads`).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Bytes per row block of the blockwise elementwise passes on CPU (a few [rows, d_sae]
#: slices are touched per block; about 2 MiB each keeps them in L2/L3 cache).
CPU_BLOCK_BYTES = 1 << 21


def row_blocks(t: Tensor) -> list[slice]:
    """Row slices covering the 2-D tensor ``t`` for blockwise elementwise work.

    On CPU the blocks hold about :data:`CPU_BLOCK_BYTES` each, so consecutive in-place
    ops on one block run from cache. On GPUs there is one block: there the ops are
    bandwidth-bound kernels anyway, and fewer launches are better.
    """
    n = t.shape[0]
    if t.device.type != "cpu":
        return [slice(0, n)]
    rows = max(1, CPU_BLOCK_BYTES // max(1, t.shape[1] * t.element_size()))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def block_buffer(t: Tensor, blocks: list[slice]) -> Tensor:
    """Scratch space for one row block of ``t`` (slice it to each block's length).

    Masks are written into it as ``0.0``/``1.0`` of ``t``'s dtype (``torch.gt(..., out=)``):
    multiplying by a same-dtype mask is several times faster on CPU than by a bool one.
    """
    return t.new_empty(max((b.stop - b.start for b in blocks), default=0), t.shape[1])


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype blockwise sums accumulate in: float32 for 16-bit types, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def decode_and_error(latents: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_hat, x_hat - x, mean ||x - x_hat||^2)`` for 2-D ``latents`` and ``x``.

    Computed as ``latents @ W_dec + b_dec`` and ``squared_error`` (:mod:`sae_helpers.saes.base`)
    are, so the values are the same bits as the plain autograd forward's.
    """
    x_hat = torch.mm(latents, W_dec).add_(b_dec)
    error = x_hat - x
    return x_hat, error, error.pow(2).sum(-1).mean()


def reconstruction_grad(
    error: Tensor, grad_loss: Tensor | None, grad_x_hat: Tensor | None = None
) -> Tensor | None:
    """Gradient with respect to ``x_hat`` of ``grad_loss * mean ||x_hat - x||^2`` plus an
    incoming ``grad_x_hat`` (``None`` when neither is there)."""
    grad = None if grad_loss is None else error * (2.0 / error.shape[0] * grad_loss)
    if grad_x_hat is not None:
        grad = grad_x_hat if grad is None else grad + grad_x_hat
    return grad
