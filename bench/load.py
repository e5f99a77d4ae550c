"""A competing load for the shared-CPU benchmarks (``contention.py``, ``small_steps.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The competing load: another process's 2-thread matmuls, back to back.
COMPETITOR = (
    "import torch\n"
    "torch.set_num_threads(2)\n"
    "a = torch.randn(1024, 1024)\n"
    "while True:\n"
    "    a @ a\n"
)


@contextmanager
def competing_load(threads: int = 2) -> Iterator[None]:
    """Run :data:`COMPETITOR` in a separate process for the duration of the block."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    process = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
    try:
        time.sleep(2.0)  # let it start its threads
        if process.poll() is not None:
            raise RuntimeError(f"the competing load exited at once with code {process.returncode}")
        yield
    finally:
        process.kill()
        process.wait()
