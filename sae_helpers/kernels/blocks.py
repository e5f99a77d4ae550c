"""Row-blocked elementwise work and the dense decode shared by the fused training steps.

A training step is bound by its ``[batch, d_in] x [d_in, d_sae]`` matmuls; everything else
is elementwise work on ``[batch, d_sae]`` tensors. Autograd runs each elementwise op as a
separate pass over memory and allocates a fresh ``[batch, d_sae]`` result for most of them
(on CPU every allocation above glibc's 32 MiB mmap limit is page-faulted in anew, which
costs several plain passes). The fused steps (:mod:`.relu`, :mod:`.gated`) instead write
into a few buffers, reuse them for the gradients, and do the elementwise work in row
blocks small enough to stay in cache (:func:`row_blocks`, :func:`block_buffer`), on one
thread or all, whichever is faster under the machine's current load (:class:`PassThreads`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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


class PassThreads:
    """How many threads the row-blocked passes use: one or all, chosen by measurement.

    The passes are dozens of short ops per step. With several threads each op is an OpenMP
    parallel region that ends at a barrier; when other processes share the cores (a
    browser, a second notebook, CI jobs) the OS pauses some thread of ours in most of them,
    every barrier then waits up to a scheduler time slice, and a Gated step took 4.5x as
    long beside a 2-thread load as alone, where plain matmuls took 1.2x (
    ``bench/contention.py``). On one thread the passes have no barriers, but on a quiet
    machine they are slower than on all (a Gated step about 10%).

    So each pass (per name and shape) is timed: the first two calls try one thread and all
    threads, then the faster so far (a moving average of each) runs, and every
    :attr:`explore_every`-th call tries the other, so the choice follows the machine's load.
    The matmuls between the passes always use every thread. Both choices give the same bits
    (elementwise ops and reductions whose outputs are split between threads, not their
    terms; ``tests/kernels/test_blocks.py``), so results do not depend on the load.
    ``force`` = ``"one"`` or ``"all"`` fixes the choice (benchmarks, tests); ``None`` measures.
    ``torch.set_num_threads`` is process-wide: ops that other Python threads run during a
    one-thread pass are single-threaded too.
    """

    explore_every = 16
    smoothing = 0.3  # weight of the newest time in the moving averages

    def __init__(self) -> None:
        self.force: str | None = None
        self.times: dict[tuple, list[float | None]] = {}  # (name, shape) -> [one, all] moving averages
        self.calls: dict[tuple, int] = {}

    def choose_one(self, key: tuple) -> bool:
        """Whether the next call of pass ``key`` runs on one thread."""
        if self.force is not None:
            return self.force == "one"
        one, every = self.times.setdefault(key, [None, None])
        call = self.calls[key] = self.calls.get(key, -1) + 1
        if one is None or every is None:
            return one is None
        faster_one = one <= every
        return faster_one != (call % self.explore_every == 0)

    def record(self, key: tuple, one: bool, seconds: float) -> None:
        if self.force is not None:
            return
        times = self.times.setdefault(key, [None, None])
        i = 0 if one else 1
        times[i] = seconds if times[i] is None else (1 - self.smoothing) * times[i] + self.smoothing * seconds

    @contextmanager
    def __call__(self, name: str, t: Tensor) -> Iterator[None]:
        """Run the pass inside the block (over ``t``'s rows) on the chosen number of threads."""
        threads = torch.get_num_threads()
        if t.device.type != "cpu" or threads == 1:
            yield
            return
        if len(self.times) > 256:  # many shapes (inference on varying batches): start afresh
            self.times.clear()
            self.calls.clear()
        key = (name, tuple(t.shape), t.dtype)
        one = self.choose_one(key)
        if one:
            torch.set_num_threads(1)
        start = time.perf_counter()
        try:
            yield
        finally:
            if one:
                torch.set_num_threads(threads)
        self.record(key, one, time.perf_counter() - start)


#: The process's choice for every fused step's passes (``pass_threads.force = "one"`` to fix it).
pass_threads = PassThreads()


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
