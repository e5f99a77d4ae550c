"""Ours vs SAELens on a shared CPU: alone, and beside a competing 2-thread load.

A reader runs the book on a laptop with a browser open, on Colab's two shared vCPUs or in
CI beside other jobs, so the training speed that counts is the speed under load. This
script times one optimiser step of each library (the steps and the fair set-up of
``bench/vs_saelens.py``: same start, same batch, same L0 or k, parameters restored before
every timed step, the two libraries interleaved) in four conditions:

* torch threads 1 and 2 (``torch.set_num_threads``), each
* alone, and beside a competing process that this script starts and stops itself: a
  2-thread ``torch.mm`` loop (1024 x 1024 float32, the kind of load another notebook
  kernel or test job puts on the machine).

It prints, per architecture (Gated at one L0, TopK and BatchTopK at one k), the seconds
per step, the throughput ratio ours/SAELens, and each library's slowdown under the load.
On a machine that is already busy the "alone" rows are not alone: the script prints the
load average it started with.

Environment (SAELens is not a project dependency)::

    bash bench/saelens_env.sh                                      # creates bench/.saelens-venv
    bench/.saelens-venv/bin/python bench/contention.py             # ~15 minutes on 2 cores
    bench/.saelens-venv/bin/python bench/contention.py --quick     # small shapes, a minute

Targets: under the competing load at 2 threads, ours >= 1.5x SAELens for Gated
and >= 1.0x for TopK and BatchTopK; alone at 2 threads, ours >= 2x SAELens for Gated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_saelens  # noqa: E402  (the two sides and their fair set-up)
from load import competing_load  # noqa: E402


def time_pair(pair: vs_saelens.Pair, reps: int) -> tuple[float, float]:
    """Median seconds per step of (ours, theirs), interleaved ours, theirs, theirs, ours, ..."""
    for side in (pair.ours, pair.theirs):
        side.times.clear()
        side.cpu_times.clear()
        side.restore()
        side.step()  # one untimed step at this thread count and load
    for rep in range(reps):
        order = (pair.ours, pair.theirs) if rep % 2 == 0 else (pair.theirs, pair.ours)
        for side in order:
            side.timed_step()
    return statistics.median(pair.ours.times), statistics.median(pair.theirs.times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, two repetitions: a smoke run")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608, help="d_sae")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--archs", nargs="+", default=["gated", "topk", "batchtopk"],
                        choices=["gated", "topk", "batchtopk"])
    parser.add_argument("--l0", type=int, default=64, help="Gated L0")
    parser.add_argument("--k", type=int, default=64, help="TopK / BatchTopK k")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=4, help="timed steps per library and condition (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.d_in, args.width, args.batch, args.reps = 64, 512, 512, 2
        args.l0, args.k = min(args.l0, 16), min(args.k, 16)

    print(f"sae_helpers sources sha256 {vs_saelens.source_hash()}, torch {torch.__version__}, "
          f"sae-lens {vs_saelens.SAELENS_VERSION}; d_in={args.d_in}, d_sae={args.width}, batch={args.batch}, "
          f"float32, CPU ({os.cpu_count()} cores); load average at start {os.getloadavg()[0]:.1f}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    mean = 0.5 * torch.randn(args.d_in, generator=gen)
    batch = torch.randn(args.batch, args.d_in, generator=gen) + mean
    sample = torch.randn(args.batch, args.d_in, generator=gen) + mean
    setup = argparse.Namespace(**vars(args), warmup=1, saelens_sparse=False)
    setup.l0, setup.k = [args.l0], [args.k]

    pairs: list[vs_saelens.Pair] = []
    for arch in args.archs:
        new = (vs_saelens.gated_pairs(setup, batch, sample) if arch == "gated"
               else vs_saelens.topk_pairs(setup, arch, batch, sample))
        pairs.extend(new)

    rows = []  # (arch, setting, threads, loaded, ours s, theirs s)
    begin = time.perf_counter()
    for threads in args.threads:
        torch.set_num_threads(threads)
        for loaded in (False, True):
            with competing_load() if loaded else nullcontext():
                for pair in pairs:
                    ours, theirs = time_pair(pair, args.reps)
                    rows.append((pair.arch, pair.setting, threads, loaded, ours, theirs))
                    print(f"  {pair.arch:<9} {pair.setting:<6} threads {threads} {'loaded' if loaded else 'alone '} "
                          f"ours {ours:.3f} s theirs {theirs:.3f} s ({time.perf_counter() - begin:.0f} s)", flush=True)

    alone = {(a, s, t): (o, th) for a, s, t, loaded, o, th in rows if not loaded}
    header = (f"{'architecture':<12} {'setting':<7} {'threads':>7} {'load':<9} {'ours s/step':>11} "
              f"{'SAELens s/step':>14} {'ours/SAELens':>12} {'ours slowdown':>13} {'SAELens slowdown':>16}")
    print(f"\nmedians of {args.reps} interleaved steps each; 'load' = a competing 2-thread matmul process\n"
          f"{header}\n{'-' * len(header)}")
    for arch, setting, threads, loaded, ours, theirs in rows:
        base_ours, base_theirs = alone[(arch, setting, threads)]
        slow = (f"{ours / base_ours:>12.2f}x {theirs / base_theirs:>15.2f}x" if loaded
                else f"{'':>13} {'':>16}")
        print(f"{arch:<12} {setting:<7} {threads:>7} {'competing' if loaded else 'alone':<9} {ours:>11.3f} "
              f"{theirs:>14.3f} {theirs / ours:>11.2f}x {slow}")
    print("\nours/SAELens = SAELens s/step / ours s/step (throughput ratio); slowdown = loaded / alone at the same "
          "thread count.\ntargets: loaded at 2 threads gated >= 1.5x, topk and batchtopk >= 1.0x; alone at 2 threads "
          f"gated >= 2x. load average at the end {os.getloadavg()[0]:.1f}; took {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
