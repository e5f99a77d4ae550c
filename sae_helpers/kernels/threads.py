"""How many CPU threads the training computations use: two rules, one per kind of work.

* **Whole steps** (:func:`threads_for`): a step below :data:`ONE_THREAD_BELOW` multiply-adds (chapter
  00 trains 64 latents on 32-dimensional data) runs on one thread. On a quiet machine two threads
  make such a step no faster; on a shared one every op's OpenMP region waits at its barrier for a
  thread the OS has paused, and the step takes several times as long (``bench/small_steps.py``).
  A step's matmuls can give other last bits on another thread count, so this choice follows the
  shapes only, never the load: a run gives the same numbers on a busy machine as on a quiet one.
* **Elementwise passes inside a fused step** (:class:`PassThreads`): dozens of short ops per step,
  whose results are the same bits on any thread count, so here the faster choice is measured as the
  run goes and follows the machine's load (``bench/contention.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["ONE_THREAD_BELOW", "PassThreads", "pass_threads", "step_work", "threads_for"]

#: Multiply-adds of one encoder matmul per step (rows x d_in x d_sae, summed over the SAEs
#: trained together) below which training runs on one thread: chapter 00's steps (about 2**20)
#: are below it, a language-model chapter's (about 2**28) far above (``bench/small_steps.py``).
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


class PassThreads:
    """How many threads the row-blocked passes use: one or all, chosen by measurement.

    The passes are dozens of short ops per step. With several threads each op is an OpenMP
    parallel region that ends at a barrier; when other processes share the cores (a
    browser, a second notebook, CI jobs) the OS pauses some thread of ours in most of them,
    every barrier then waits up to a scheduler time slice, and a fused step slows far more than
    its matmuls do (``bench/contention.py``, results in bench/README.md). On one thread the passes
    have no barriers, but on a quiet machine they are slower than on all.

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
