"""Fault injection: SIGKILL a process at seeded random moments while it writes to disk.

A child (``python -c``) imports and sets up once, then forks one worker per kill, so a kill costs a
fork rather than a new interpreter; the worker loops over the writes until it is killed.
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import gc, os, sys
{setup}
gc.collect()
gc.freeze()  # a worker's first collection would otherwise touch (copy) the whole inherited heap: a long pause
print('ready', flush=True)
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            work()
        except BaseException:
            import traceback
            traceback.print_exc()  # the reason a worker stopped by itself, for the assertion below
            sys.stderr.flush()
        finally:
            os._exit(3)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def kill_repeatedly(setup: str, n_kills: int, seed: int, max_delay: float, check: Callable[[int], None],
                    log: Path) -> None:
    """Run ``work()`` (defined by the code ``setup``, and looping until killed) ``n_kills`` times in a
    fresh process, kill it with SIGKILL a seeded random delay in ``[0, max_delay)`` seconds after it
    starts, and call ``check(i)`` on what it left. The child's stderr goes to ``log``."""
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as err:
        child = subprocess.Popen([sys.executable, "-c", SERVER.format(setup=setup)], cwd=ROOT, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        if child.stdout.readline().strip() != b"ready":
            raise AssertionError(f"the child did not start:\n{log.read_text()[-3000:]}")
        for i in range(n_kills):
            child.stdin.write(b"go\n")
            child.stdin.flush()
            pid = int(child.stdout.readline())
            time.sleep(rng.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            status = int(child.stdout.readline())
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                raise AssertionError(f"kill {i}: the worker stopped by itself (status {status}):\n"
                                     f"{log.read_text()[-3000:]}")
            check(i)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
