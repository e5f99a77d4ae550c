"""Small training steps on a shared CPU: one thread, two, and OpenMP's passive wait policy,
alone and beside a competing 2-thread load.

A step of a small SAE (chapter 00 trains 64 latents on 32-dimensional data) is a few dozen tiny
ops, each an OpenMP parallel region ending at a barrier. Between regions torch's OpenMP runtime
(libgomp) spins its worker threads for a while before they sleep. On a quiet machine that saves
a wake-up per region; on a shared one the OS pauses some thread of ours in most regions and
every barrier waits for it. :mod:`sae_helpers.kernels.threads` therefore trains steps below
``ONE_THREAD_BELOW`` multiply-adds on one thread. This script measures that rule against the
alternatives:

* ``2 threads``: torch's default threads for every step (training before the rule);
* ``ours``: the rule as shipped (one thread below the threshold, torch's threads above);
* ``PASSIVE``: 2 threads with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once: no spinning);
* ``1 thread``: ``OMP_NUM_THREADS=1`` for everything.

Each setting trains the same Gated SAE (same seed, data and steps) in a fresh process (the wait
policy is read when torch loads its OpenMP runtime) and reports its wall time; the settings take
turns, each condition is repeated (median), and the script prints seconds per step and each
setting's speed-up over ``2 threads`` for four shapes from chapter 00's (2**20 multiply-adds per
step) to a language-model chapter's (d 576, 4,608 latents: about 2**30), alone and beside the
competing load of ``bench/contention.py`` (another process's 2-thread 1024 x 1024 matmuls). On
a busy machine the "alone" rows are not alone: the load average at the start is printed.

    .venv/bin/python bench/small_steps.py            # about 15 minutes on 2 cores
    .venv/bin/python bench/small_steps.py --quick    # fewer steps, one repetition

Targets: beside the load, ``ours`` at least 3x ``2 threads`` on chapter 00's shapes; alone,
``ours`` no slower than ``2 threads`` there, and within the noise of ``2 threads`` above the
threshold (where they are the same setting: their ratio shows the noise). The latest result is in
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import competing_load  # noqa: E402

#: The child: train one SAE and print the seconds of training (data made before the clock starts).
CHILD = """
import sys, time, torch
from sae_helpers import SyntheticFeatures, train_sae
from sae_helpers.kernels import threads
d, width, batch, steps, rule = map(int, sys.argv[1:6])
if not rule:
    threads.ONE_THREAD_BELOW = 0  # every step on torch's threads, as before the one-thread rule
x = SyntheticFeatures(d=d, n_features=2 * d, firing_prob=0.05, seed=0).sample(20 * batch, seed=1).x
train_sae(x, "gated", width, 1.0, 3, batch_size=batch, progress=False, init_sample_size=batch)  # warm-up
start = time.perf_counter()
train_sae(x, "gated", width, 1.0, steps, batch_size=batch, progress=False, init_sample_size=batch)
print(time.perf_counter() - start, torch.get_num_threads())
"""

#: (d_in, d_sae, batch): chapter 00's shapes, two between, and a language-model chapter's.
WORKLOADS = {"chapter 00": (32, 64, 512), "4M": (64, 128, 512), "17M": (64, 512, 512),
             "LM chapter": (576, 4608, 512)}
#: Timed steps per workload (about 1-10 s each on 2 cores).
STEPS = {"chapter 00": 400, "4M": 200, "17M": 100, "LM chapter": 20}
#: The settings compared: (environment, whether the one-thread rule is on). "2 threads" is how
#: training ran before the rule; "ours" is how it runs now.
POLICIES = {"2 threads": ({}, False), "ours": ({}, True), "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
            "1 thread": ({"OMP_NUM_THREADS": "1"}, False)}
_CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def seconds(policy: tuple[dict[str, str], bool], shape: tuple[int, int, int], steps: int) -> float:
    """Wall seconds of ``steps`` training steps in a fresh process with the setting ``policy``."""
    environment, rule = policy
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED} | environment
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, shape), str(steps), str(int(rule))], env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    if out[1] != environment.get("OMP_NUM_THREADS", "2"):
        print(f"note: the child ran on {out[1]} threads", file=sys.stderr)
    return float(out[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions: a smoke run")
    parser.add_argument("--reps", type=int, default=3, help="runs per policy and condition (median)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    steps = {name: n // 4 if args.quick else n for name, n in STEPS.items()}
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; 2 torch threads per run")
    print(f"{'workload':<11} {'condition':<12}" + "".join(f"{name + ' s/step':>17}" for name in POLICIES)
          + "   speed-up over 2 threads")
    for name, shape in WORKLOADS.items():
        for condition in ("alone", "beside load"):
            with competing_load() if condition == "beside load" else nullcontext():
                times: dict[str, list[float]] = {p: [] for p in POLICIES}
                for rep in range(reps):
                    order = list(POLICIES) if rep % 2 == 0 else list(reversed(POLICIES))
                    for policy in order:
                        times[policy].append(seconds(POLICIES[policy], shape, steps[name]) / steps[name])
            median = {p: statistics.median(times[p]) for p in POLICIES}
            print(f"{name:<11} {condition:<12}" + "".join(f"{median[p]:>17.4f}" for p in POLICIES) + "   "
                  + ", ".join(f"{p} {median['2 threads'] / median[p]:.2f}x" for p in POLICIES if p != "2 threads"))


if __name__ == "__main__":
    main()
