"""One training step of sae_helpers against SAELens's, side by side in one process.

Times a full optimiser step of each library on the same shapes (default d_in=576,
d_sae=4608, batch 4096, float32, CPU) and the same random batch:

* ``gated``: ``TrainingRun.step`` (``TrainConfig(arch="gated")``) against SAELens's
  ``GatedTrainingSAE`` at several L0;
* ``topk``: ``TrainConfig(arch="topk", k=...)`` against ``TopKTrainingSAE`` at several k;
* ``batchtopk``: ``TrainConfig(arch="batchtopk", k=...)`` against ``BatchTopKTrainingSAE``.

An architecture sae_helpers does not have yet (``"topk"``/``"batchtopk"`` while they are
being written), or whose training step fails, is skipped with a message.

What one step is, for each library:

* ours: ``run.step(batch)``: activation scaling, forward with the loss terms, backward,
  decoder-gradient projection, Adam (foreach), decoder renormalisation and dead-latent
  bookkeeping.
* SAELens: ``SAETrainer.step(batch)`` of SAELens's own trainer (``sae_lens/training/
  sae_trainer.py``): activation scaling, ``training_forward_pass`` (forward and losses),
  firing statistics, backward, ``clip_grad_norm_(..., 1.0)``, ``torch.optim.Adam``, lr and
  coefficient scheduler steps. SAELens does not renormalise the decoder: its Gated SAE
  weights the L1 term by decoder-row norms, its TopK SAEs rescale latents by them.

Fairness: both SAEs start from the same parameters (ours' initialisation, copied into
SAELens's SAE, whose own default starts decoder rows at norm 0.1), the same activation
scale (ours' ``run.scale``, set as SAELens's ``activation_scaler.scaling_factor``), the
same Adam hyper-parameters (lr 3e-4, betas (0, 0.999)) and the same L1 coefficient. Before
every timed step (untimed) each SAE's parameters are restored to that start, so every
step sees exactly the measured L0 instead of drifting with training. L0 of the Gated SAEs
is set by one gate-bias value ``b_gate = -t`` for all latents, ``t`` chosen on this batch
so that the wanted number of latents per token is open; the table shows the L0 each
library's own training forward then gives. Steps alternate ours, theirs, theirs, ours ...
and the table reports medians, so machine load (the machine is shared) hits both alike.
At the start of training no latent is dead, so the TopK aux-k loss costs neither library
anything here.

What SAELens's Gated step does differently (sae_lens/saes/gated_sae.py, v6):

* it computes the encoder matmul three times (gate, magnitude path with
  ``W_enc * exp(r_mag)``, and again for the auxiliary loss), each with its own weight and
  input gradient in the backward; ours computes ``(x - b_dec) W_enc`` once;
* its auxiliary reconstruction ``ReLU(pi_gate) W_dec + b_dec`` is not detached: the
  auxiliary loss also trains ``W_dec`` and ``b_dec`` (an extra decoder weight gradient);
  the paper, and ours, use stop-gradient copies;
* its L1 term is ``sum ReLU(pi_gate) * ||W_dec row||`` with no decoder renormalisation;
* every step clips the global gradient norm to 1.

Targets: Gated >= 1.5x SAELens's throughput at any L0 (we compute the
encoder matmul once, SAELens three times), and >= 2.5x at L0 <= 64 through a sparse
decoder path (being added separately; this script just reports what it measures);
TopK not slower than SAELens at any k.

Environment (SAELens is not a project dependency)::

    bash bench/saelens_env.sh                                   # creates bench/.saelens-venv
    bench/.saelens-venv/bin/python bench/vs_saelens.py             # ~4 CPU-minutes
    bench/.saelens-venv/bin/python bench/vs_saelens.py --quick     # small shapes, seconds
    bench/.saelens-venv/bin/python bench/vs_saelens.py --threads 1 # steadier on a busy machine
    bench/.saelens-venv/bin/python bench/vs_saelens.py --archs gated --l0 16 64 --reps 5

The default run takes about 4 minutes on an idle 2-core machine and 8-10 minutes when
other jobs share it. On a machine busier than its cores, several torch threads make every
parallel op wait at OpenMP barriers (milliseconds each): that penalises steps made of many
small ops (ours' blockwise elementwise passes) far more than a few big ones, and makes
repetitions of the same step differ several-fold; ``--threads 1`` avoids it. The table
also gives the ratio by process CPU time, which time taken by other processes does not
inflate. The first output line has a hash of the sae_helpers sources that were timed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

try:
    from sae_lens import __version__ as SAELENS_VERSION
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer
except ImportError as error:  # pragma: no cover - the message is the point
    raise SystemExit(
        f"SAELens is not importable ({error}). Create its environment with `bash bench/saelens_env.sh` "
        "and run this script as `bench/.saelens-venv/bin/python bench/vs_saelens.py`."
    ) from error

import sae_helpers
from sae_helpers.saes import architectures
from sae_helpers.training.config import TrainConfig
from sae_helpers.training.run import TrainingRun

LR = 3e-4
BETAS = (0.0, 0.999)
L1_COEFFICIENT = 1.0
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------ the two sides
@dataclass
class Side:
    """One library's SAE and its training step, restorable to a fixed start."""

    module: nn.Module
    step: Callable[[], object]
    l0: Callable[[], float]
    start: dict[str, Tensor] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # wall-clock seconds per step
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU seconds per step

    def snapshot(self) -> None:
        self.start = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    @torch.no_grad()
    def restore(self) -> None:
        for name, value in self.module.state_dict().items():
            value.copy_(self.start[name])

    def timed_step(self) -> None:
        self.restore()
        begin, begin_cpu = time.perf_counter(), time.process_time()
        self.step()
        self.times.append(time.perf_counter() - begin)
        self.cpu_times.append(time.process_time() - begin_cpu)


def ours_side(arch: str, width: int, batch: Tensor, sample: Tensor, **options) -> tuple[Side, TrainingRun]:
    cfg = TrainConfig(arch=arch, width=width, steps=10**6, batch_size=batch.shape[0], **options)
    run = TrainingRun.start(cfg, sample, CPU)

    @torch.no_grad()
    def l0() -> float:
        out = run.sae(batch * run.scale)
        return float((out.latents > 0).sum(-1).double().mean())

    return Side(run.sae, lambda: run.step(batch), l0), run


def theirs_side(sae, run: TrainingRun, batch: Tensor) -> Side:
    cfg = SAETrainerConfig(
        total_training_samples=10**12, train_batch_size_samples=batch.shape[0], lr=LR,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], lr_end=LR / 10, device="cpu",
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    trainer.activation_scaler.scaling_factor = run.scale  # ours scales by run.scale in its step too
    copy_parameters(run.sae, sae)

    @torch.no_grad()
    def l0() -> float:
        step_input = TrainStepInput(
            sae_in=trainer.activation_scaler(batch), coefficients=trainer.get_coefficients(),
            dead_neuron_mask=None, n_training_steps=0, is_logging_step=False,
        )
        acts = sae.training_forward_pass(step_input).feature_acts
        acts = acts.to_dense() if acts.is_sparse else acts
        return float((acts > 0).sum(-1).double().mean())

    return Side(sae, lambda: trainer.step(batch), l0)


@torch.no_grad()
def copy_parameters(ours: nn.Module, theirs: nn.Module) -> None:
    """Give SAELens's SAE our initial parameters (same names and shapes: SAELens v6's)."""
    mine = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        param.copy_(mine[name])


# ------------------------------------------------------------------------------ the pairs
@dataclass
class Pair:
    arch: str
    setting: str  # "L0 16" or "k 32"
    ours: Side
    theirs: Side
    l0_ours: float = float("nan")
    l0_theirs: float = float("nan")


@torch.no_grad()
def gate_bias_for_l0(run: TrainingRun, batch: Tensor, l0: int) -> float:
    """The one gate bias ``-t`` with which ``l0`` latents per token are open on ``batch`` on average."""
    sae = run.sae
    u = ((batch * run.scale - sae.b_dec) @ sae.W_enc).flatten()
    n_open = min(u.numel(), max(1, l0 * batch.shape[0]))
    threshold = torch.kthvalue(u, u.numel() - n_open + 1).values  # n_open entries are >= it
    return -float(threshold)


def gated_pairs(args, batch: Tensor, sample: Tensor) -> list[Pair]:
    ours, run = ours_side("gated", args.width, batch, sample, l1_coefficient=L1_COEFFICIENT, lr=LR,
                          adam_beta1=BETAS[0], adam_beta2=BETAS[1])
    theirs_sae = GatedTrainingSAE(GatedTrainingSAEConfig(
        d_in=args.d_in, d_sae=args.width, l1_coefficient=L1_COEFFICIENT, l1_warm_up_steps=0,
    ))
    theirs = theirs_side(theirs_sae, run, batch)
    warm_up(ours, theirs, args.warmup)  # leaves both at our initial parameters
    pairs = []
    for l0 in args.l0:
        ours.restore()
        with torch.no_grad():  # our initial parameters with one shifted gate bias, in both SAEs
            run.sae.b_gate.fill_(gate_bias_for_l0(run, batch, l0))
            copy_parameters(run.sae, theirs_sae)
        o, t = Side(ours.module, ours.step, ours.l0), Side(theirs.module, theirs.step, theirs.l0)
        o.snapshot()
        t.snapshot()
        pairs.append(Pair("gated", f"L0 {l0}", o, t))
    return pairs


def topk_pairs(args, arch: str, batch: Tensor, sample: Tensor) -> list[Pair]:
    if arch not in architectures():
        print(f"skipping {arch}: sae_helpers has no {arch!r} architecture yet (being written); "
              f"registered: {', '.join(architectures())}")
        return []
    pairs = []
    for k in args.k:
        try:
            ours, run = ours_side(arch, args.width, batch, sample, k=k, lr=LR,
                                  adam_beta1=BETAS[0], adam_beta2=BETAS[1])
            ours.snapshot()
            ours.step()  # fails here while our training step for this architecture is not done
            ours.restore()
        except Exception as error:  # noqa: BLE001 - report and go on with the other benchmarks
            print(f"skipping {arch}: building or stepping TrainConfig(arch={arch!r}, k={k}) failed: "
                  f"{type(error).__name__}: {error}")
            return pairs
        if arch == "topk":
            theirs_sae = TopKTrainingSAE(TopKTrainingSAEConfig(
                d_in=args.d_in, d_sae=args.width, k=k, use_sparse_activations=args.saelens_sparse,
                # its sparse path's backward fails on CPU with the decoder-norm rescale (aten::view on SparseCPU)
                rescale_acts_by_decoder_norm=not args.saelens_sparse,
            ))
        else:
            theirs_sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.width, k=float(k)))
        theirs = theirs_side(theirs_sae, run, batch)
        warm_up(ours, theirs, args.warmup)
        pairs.append(Pair(arch, f"k {k}", ours, theirs))
    return pairs


def warm_up(ours: Side, theirs: Side, steps: int) -> None:
    """A few untimed steps of each, then back to the start (snapshotted first if not yet)."""
    for side in (ours, theirs):
        if not side.start:
            side.snapshot()
        for _ in range(steps):
            side.step()
        side.restore()


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, two repetitions: a smoke run")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608, help="d_sae")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--archs", nargs="+", default=["gated", "topk", "batchtopk"],
                        choices=["gated", "topk", "batchtopk"])
    parser.add_argument("--l0", type=int, nargs="+", default=[16, 32, 64, 128, 512], help="Gated L0 targets")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 32, 64, 128], help="TopK / BatchTopK k")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per library and setting (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per library first")
    parser.add_argument("--saelens-sparse", action="store_true",
                        help="SAELens TopK with use_sparse_activations=True (a sparse COO decoder) and, because its "
                             "backward fails on CPU otherwise, rescale_acts_by_decoder_norm=False (both non-default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core); 1 avoids OpenMP barrier waits on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.d_in, args.width, args.batch, args.reps = 64, 512, 512, 2
        args.l0 = [v for v in args.l0 if v <= 64] or [16]
        args.k = [v for v in args.k if v <= 64] or [16]

    print(f"sae_helpers from {os.path.dirname(sae_helpers.__file__)} (sources sha256 {source_hash()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), sae-lens {SAELENS_VERSION}; "
          f"d_in={args.d_in}, d_sae={args.width}, batch={args.batch}, float32, CPU; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if os.getloadavg()[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print("warning: the machine is busier than its cores; with several torch threads every parallel op then waits "
              "on OpenMP barriers (milliseconds each), which weighs on many-op steps most. Compare with --threads 1.")
    gen = torch.Generator().manual_seed(args.seed)
    mean = 0.5 * torch.randn(args.d_in, generator=gen)
    batch = torch.randn(args.batch, args.d_in, generator=gen) + mean
    sample = torch.randn(args.batch, args.d_in, generator=gen) + mean  # initialises b_dec and the scale

    begin = time.perf_counter()
    pairs: list[Pair] = []
    for arch in args.archs:
        new = gated_pairs(args, batch, sample) if arch == "gated" else topk_pairs(args, arch, batch, sample)
        for pair in new:
            pair.ours.restore()
            pair.theirs.restore()
            pair.l0_ours, pair.l0_theirs = pair.ours.l0(), pair.theirs.l0()
            for rep in range(args.reps):  # ours, theirs, theirs, ours, ...
                order = (pair.ours, pair.theirs) if rep % 2 == 0 else (pair.theirs, pair.ours)
                for side in order:
                    side.timed_step()
            print(f"  {pair.arch:<9} {pair.setting:<7} wall ours {fmt(pair.ours.times)} theirs {fmt(pair.theirs.times)}"
                  f"  cpu ours {fmt(pair.ours.cpu_times)} theirs {fmt(pair.theirs.cpu_times)}"
                  f"  ({time.perf_counter() - begin:.0f} s)", flush=True)
        pairs.extend(new)

    if not pairs:
        print("nothing was timed")
        return
    header = (f"{'architecture':<12} {'L0 or k':>7} {'L0 ours':>7} {'L0 theirs':>9} {'ours s/step':>11} "
              f"{'theirs s/step':>13} {'ours/theirs throughput':>22} {'same, by CPU time':>17}")
    print(f"\nmedians of {args.reps} interleaved steps each, {torch.get_num_threads()} thread(s)\n{header}\n"
          f"{'-' * len(header)}")
    for p in pairs:
        ours_t, theirs_t = statistics.median(p.ours.times), statistics.median(p.theirs.times)
        cpu_ratio = statistics.median(p.theirs.cpu_times) / statistics.median(p.ours.cpu_times)
        print(f"{p.arch:<12} {p.setting.split()[1]:>7} {p.l0_ours:>7.1f} {p.l0_theirs:>9.1f} {ours_t:>11.3f} "
              f"{theirs_t:>13.3f} {theirs_t / ours_t:>21.2f}x {cpu_ratio:>16.2f}x")
    print("\nthroughput ratio = theirs s/step / ours s/step (wall clock); 'by CPU time' uses this process's CPU "
          "seconds per step instead,\nwhich time other processes take does not inflate (with several threads it "
          "also counts OpenMP waiting).")
    print(f"targets: gated >= 1.5x at any L0 and >= 2.5x at L0 <= 64; topk >= 1.0x at any k. "
          f"load average {os.getloadavg()[0]:.1f}; timing took {time.perf_counter() - begin:.0f} s")


def source_hash() -> str:
    """A short hash of the imported sae_helpers sources, to tell which state of the code was timed."""
    root = os.path.dirname(sae_helpers.__file__)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def fmt(times: list[float]) -> str:
    return "[" + " ".join(f"{t:.3f}" for t in times) + "]"


if __name__ == "__main__":
    main()
