"""Small training steps run on one thread.

A step of a small SAE (chapter 00 trains 64 latents on 32-dimensional data) is a few dozen
tiny ops. On a quiet machine two threads make it no faster than one; on a shared machine
every op's OpenMP region waits at its barrier for a thread the OS has paused, and the step
takes several times as long as on one thread (``bench/small_steps.py`` measures it). So when the step's work is below
:data:`ONE_THREAD_BELOW` multiply-adds, training runs on one thread. The choice depends on
the shapes only, never on the load, so a run gives the same numbers on a busy machine as
on a quiet one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["ONE_THREAD_BELOW", "step_work", "threads_for"]

#: Multiply-adds of one encoder matmul per step (rows x d_in x d_sae, summed over the SAEs
#: trained together) below which training runs on one thread. Chapter 00's step is about
#: 2**20 (1 thread as fast as 2 alone), a language-model chapter's about 2**28 (2 threads
#: about 1.8x as fast as 1 alone).
ONE_THREAD_BELOW = 1 << 23


def step_work(rows: int, shapes: list[tuple[int, int]]) -> int:
    """Multiply-adds of one encoder matmul per step: ``rows`` x d_in x d_sae, summed over ``shapes``."""
    return sum(rows * d_in * d_sae for d_in, d_sae in shapes)


@contextmanager
def threads_for(work: int, device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block on one thread when ``work`` (:func:`step_work`) is small and the device is
    the CPU, else on torch's current number of threads; yields the number used. The previous
    setting is restored afterwards (``torch.set_num_threads`` is process-wide)."""
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1 or work >= ONE_THREAD_BELOW:
        yield threads
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(threads)
