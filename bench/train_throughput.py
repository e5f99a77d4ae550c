"""Training throughput of relu and gated SAEs, as a fraction of a dense matmul's FLOP rate.

Times ``TrainingRun.step`` (the real training step: forward, backward, decoder-gradient
projection, Adam, decoder renormalisation, dead-latent bookkeeping) at d_in = 576,
width 4,608, batch 4,096 on random data, and compares it with the FLOP rate of a dense
float32 ``torch.mm`` of shape [4096 x 576] x [576 x 4608] measured in the same process,
interleaved with the SAE timings. On a shared machine absolute times are noise; the
fractions are what to compare.

FLOPs counted per step, in units of one such matmul (2 * batch * d_in * width flops):

* gated, 7: encoder forward and weight gradient, the two decoder forwards (reconstruction
  and auxiliary), the decoder's input and weight gradients, and the auxiliary decoder's
  input gradient (its decoder is frozen: no weight gradient). ``b_dec``'s gradient
  through the encoder is a vector-matrix product and not counted.
* relu, 5: encoder forward and weight gradient, decoder forward, input and weight gradients.

The SAEs are freshly initialised (about half the latents active), so the fused steps take
their dense decoder path; ``bench/sparse_decoder.py`` times the sparse one at low L0.

Each architecture is timed in two implementations: ``fused`` is the package as it is,
``reference`` the straightforward autograd implementation it had before its training
step was fused (``sae(x, fused=False)``, the architecture's ``plain_forward``, in
:func:`reference_step`),
so one run prints the before/after comparison (``--no-reference`` skips it).

Timing: warm-up steps first, then rounds in which every variant (in rotating order) is
preceded by a block of back-to-back reference matmuls as long as a step's matmuls; the
headline fraction is best step against best matmul block. Because the machine is
shared, each sample also records whether other processes used the CPUs meanwhile
(``/proc/stat``), and medians over the quiet samples are printed beside it.

Usage::

    .venv/bin/python bench/train_throughput.py            # a few minutes
    .venv/bin/python bench/train_throughput.py --quick    # small shapes, seconds
    .venv/bin/python bench/train_throughput.py --malloc   # glibc keeps freed memory (see --help)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sae_helpers.training import TrainConfig, TrainingRun
from sae_helpers.training.schedules import lr_multiplier, sparsity_multiplier

#: Matmuls of shape [batch x d_in] x [d_in x width] per training step.
MATMULS_PER_STEP = {"relu": 5, "gated": 7}


# ------------------------------------------------------------------------------ reference
def reference_step(run: TrainingRun, batch: Tensor) -> None:
    """The pre-fusion ``TrainingRun.step`` (non-logging steps), for the before/after comparison."""
    cfg, sae, step = run.cfg, run.sae, run.step_count
    x = batch.to(device=run.device, dtype=sae.dtype, non_blocking=True)
    if run.scale != 1.0:
        x = x * run.scale
    run._maybe_resample(x, None)
    lr = cfg.lr * lr_multiplier(cfg, step, run.last_resample_step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    sparsity_coefficient = cfg.l1_coefficient * sparsity_multiplier(cfg, step)

    out = sae(x, fused=False)  # the plain autograd forward (the architecture's plain_forward)
    losses = out.losses
    loss = losses["reconstruction"] + sparsity_coefficient * losses["sparsity"]
    if "auxiliary" in losses:
        loss = loss + losses["auxiliary"]
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_decoder_grad_()
    run.optimizer.step()
    sae.normalize_decoder_()
    with torch.no_grad():
        fired = (out.latents > 0).any(0)
        run.steps_since_fired += 1
        run.steps_since_fired[fired] = 0
    run.step_count += 1
    if run.step_count % run.log_every == 0:
        raise RuntimeError("reference_step does not implement logging steps; use more cfg.steps.")


# ------------------------------------------------------------------------------ timing
class CpuMonitor:
    """CPU time other processes used during an interval (Linux ``/proc``; else unknown).

    The machine is shared: a sample counts as *quiet* when the rest of the system used
    less than 2% of the CPUs while it ran.
    """

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100

    def _ticks(self) -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime of this process

    def start(self) -> tuple[float, tuple[int, int]]:
        return time.perf_counter(), self._ticks() if self.available else (0, 0)

    def stop(self, mark: tuple[float, tuple[int, int]]) -> tuple[float, bool | None]:
        """Seconds since ``mark`` and whether the rest of the machine was quiet meanwhile."""
        elapsed = time.perf_counter() - mark[0]
        if not self.available:
            return elapsed, None
        busy, own = self._ticks()
        others = (busy - mark[1][0]) - (own - mark[1][1])
        allowed = 1 + 0.02 * elapsed * self.hz * (os.cpu_count() or 1)
        return elapsed, others <= allowed


@dataclass
class Variant:
    """One timed configuration: an architecture and an implementation of its step."""

    arch: str
    impl: str
    run: TrainingRun
    step: Callable[[Tensor], object]
    times: list[float] = field(default_factory=list)  # seconds per step
    quiet: list[float] = field(default_factory=list)  # matmul-bound fractions of the quiet steps

    @property
    def name(self) -> str:
        return f"{self.arch} ({self.impl})"


def make_run(arch: str, d_in: int, width: int, batch: int, seed: int) -> TrainingRun:
    """A training run far from logging and resampling steps, initialised on random data."""
    cfg = TrainConfig(
        arch=arch, width=width, l1_coefficient=1e-3, steps=10**9, batch_size=batch,
        resample_every=0, b_dec_init="mean", init_sample_size=1024, seed=seed,
    )
    sample = torch.randn(1024, d_in, generator=torch.Generator().manual_seed(seed))
    return TrainingRun.start(cfg, sample, torch.device("cpu"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and one round: a smoke test")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--archs", nargs="+", default=["gated", "relu"], choices=sorted(MATMULS_PER_STEP))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--no-reference", action="store_true", help="time only the package's step")
    parser.add_argument(
        "--malloc", action="store_true",
        help="rerun with glibc's malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_): "
             "shows what page-faulting fresh [batch, width] tensors costs; sae_helpers does not change the allocator",
    )
    args = parser.parse_args(argv)
    if args.malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 33), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.quick:
        args.d_in, args.width, args.batch = 64, 512, 512
        args.rounds, args.steps, args.warmup = 1, 2, 1

    d, m, n = args.d_in, args.width, args.batch
    flops_mm = 2 * n * d * m
    cpu = platform.processor() or platform.machine()
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, load average "
          f"{os.getloadavg()[0]:.1f}, MALLOC_MMAP_THRESHOLD_={malloc}")
    print(f"d_in={d}, width={m}, batch={n}, float32; matmul [{n} x {d}] x [{d} x {m}] = {flops_mm / 1e9:.2f} GFLOP")

    gen = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(n, d, generator=gen), torch.randn(d, m, generator=gen), torch.empty(n, m)
    batches = [torch.randn(n, d, generator=gen) for _ in range(2)]
    impls = ["fused"] + ([] if args.no_reference else ["reference"])
    variants: list[Variant] = []
    for arch in args.archs:
        for impl in impls:
            run = make_run(arch, d, m, n, seed=0)
            step = run.step if impl == "fused" else (lambda x, run=run: reference_step(run, x))
            variants.append(Variant(arch, impl, run, step))

    monitor = CpuMonitor()
    block = max(MATMULS_PER_STEP[v.arch] for v in variants)  # the reference lasts about as long as a step
    mm_times: list[float] = []  # seconds per matmul, from blocks of back-to-back calls
    mm_quiet: list[bool | None] = []

    def time_matmuls() -> None:
        mark = monitor.start()
        for _ in range(block):
            torch.mm(a, b, out=c)
        elapsed, quiet = monitor.stop(mark)
        mm_times.append(elapsed / block)
        mm_quiet.append(quiet)

    time_matmuls()  # warm-up
    for v in variants:
        for i in range(args.warmup):
            v.step(batches[i % len(batches)])
    mm_times.clear()
    mm_quiet.clear()
    start_all = time.perf_counter()
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: no fixed neighbours
        for v in order:
            time_matmuls()
            for i in range(args.steps):
                x = batches[i % len(batches)]
                mark = monitor.start()
                v.step(x)
                elapsed, quiet = monitor.stop(mark)
                v.times.append(elapsed)
                if quiet and mm_quiet[-1]:  # against the matmul block just before it
                    v.quiet.append(MATMULS_PER_STEP[v.arch] * mm_times[-1] / elapsed)
        print(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - start_all:.0f} s)", flush=True)
    time_matmuls()

    mm_best = min(mm_times)
    mm_rate = flops_mm / mm_best
    print(f"\nmatmul reference (blocks of {block} back-to-back torch.mm): best {mm_best * 1e3:.1f} ms = "
          f"{mm_rate / 1e9:.1f} GFLOP/s; quiet in {sum(bool(q) for q in mm_quiet)}/{len(mm_times)} blocks")
    header = (f"{'variant':<18} {'matmuls':>7} {'best s/step':>11} {'steps/s':>8} {'acts/s':>9} "
              f"{'GFLOP/s':>8} {'of matmul':>9} {'quiet median':>15}")
    print(header)
    print("-" * len(header))
    best_step = {}
    for v in variants:
        t = min(v.times)
        best_step[v.name] = t
        k = MATMULS_PER_STEP[v.arch]
        rate = k * flops_mm / t
        quiet = f"{median(v.quiet):.1%} ({len(v.quiet)}/{len(v.times)})" if v.quiet else "n/a"
        print(f"{v.name:<18} {k:>7} {t:>11.3f} {1 / t:>8.2f} {n / t:>9.0f} {rate / 1e9:>8.1f} "
              f"{rate / mm_rate:>9.1%} {quiet:>15}")
    print("\n'of matmul': FLOP rate of the best step / rate of the best matmul block (the headline);")
    print("'quiet median': median over the steps that ran, like the matmul block just before them, while other")
    print("processes used < 2% CPU, of the same ratio against that block (the machine is shared).")
    if not args.no_reference:
        for arch in args.archs:
            ratio = best_step[f"{arch} (reference)"] / best_step[f"{arch} (fused)"]
            print(f"{arch}: the fused step is {ratio:.2f}x as fast as the reference step")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; timing took {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()
