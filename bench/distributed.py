"""Data-parallel training: 2 processes (torchrun, gloo, one thread each) against 1 process (two threads).

Times a training step of ``train_sae`` (each variant trains 2 steps to warm up, then 4 and 12
steps; the difference over 8 steps is the per-step time, free of start-up and initialisation) on
random activations, both
variants interleaved for ``--reps`` rounds, and prints the speed-up of 2 processes over 1. On this
project's 2-core machine the two variants use the same cores, so the ratio shows what the
all-reduces and the split cost or gain, not a cluster's scaling.

Usage::

    .venv/bin/python bench/distributed.py               # d_in 576, width 4,608, batch 4,096, gated and batchtopk
    .venv/bin/python bench/distributed.py --quick       # small shapes, one round
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"gated": {"l1_coefficient": 1.0}, "relu": {"l1_coefficient": 1.0}, "topk": {"k": 64},
            "batchtopk": {"k": 64}}


def worker(args: argparse.Namespace) -> None:
    """Time ``train_sae`` at 4 and 12 steps in this process (one rank of torchrun, or alone)."""
    import torch

    from sae_helpers import train_sae

    times = {}
    for steps in (2, 4, 12):  # the first call pays the one-time costs (imports, allocator, thread pools)
        start = time.perf_counter()
        train_sae(args.data, args.arch, args.width, steps=steps, batch_size=args.batch, lr=1e-4, progress=False,
                  device="cpu", init_sample_size=4096, **SETTINGS[args.arch])
        times[steps] = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"per_step": (times[12] - times[4]) / 8, "threads": torch.get_num_threads()}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(variant: str, args: argparse.Namespace, data: Path, arch: str) -> float:
    worker_args = [str(Path(__file__)), "--worker", "--data", str(data), "--arch", arch, "--width", str(args.width),
                   "--batch", str(args.batch)]
    if variant == "1 process":
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        command = [sys.executable, *worker_args]
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                   "127.0.0.1", "--master-port", str(free_port()), *worker_args]
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one round")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096, help="the global batch")
    parser.add_argument("--archs", nargs="+", default=["gated", "batchtopk"], choices=sorted(SETTINGS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.d_in, args.width, args.batch, args.reps = 64, 512, 512, 1

    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "activations.safetensors"
        gen = torch.Generator().manual_seed(0)
        save_file({"activations": torch.randn(max(16 * args.batch, 8192), args.d_in, generator=gen)}, str(data))
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; d_in "
              f"{args.d_in}, width {args.width}, global batch {args.batch}; medians of {args.reps} interleaved rounds")
        for arch in args.archs:
            times: dict[str, list[float]] = {"1 process": [], "2 processes": []}
            for rep in range(args.reps):
                order = list(times) if rep % 2 == 0 else list(reversed(times))
                for variant in order:
                    times[variant].append(run(variant, args, data, arch))
            one, two = (statistics.median(times[v]) for v in times)
            print(f"{arch:10s} 1 process x 2 threads {one:.3f} s/step   2 processes x 1 thread {two:.3f} s/step   "
                  f"2 processes / 1 process: {one / two:.2f}x the speed")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
