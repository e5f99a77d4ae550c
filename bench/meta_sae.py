"""Meta-SAE training at the paper's shapes: epochs per second, and BatchTopK selection's share.

The paper (Bussmann et al. 2025) trains a BatchTopK meta-SAE with 2,304 meta-latents and
k = 4 on the 49,152 decoder rows (d = 768 there; 576 here, SmolLM2's width) of a base SAE,
in batches of 4,096 rows for 2,000 epochs. Random unit rows stand in for the decoder
(the step costs do not depend on what the rows hold).

Part 1 times single training steps (``TrainingRun.step`` with ``train_meta_sae``'s
configuration: forward, backward, Adam, decoder renormalisation, dead-latent bookkeeping)
beside the BatchTopK selection alone on the same ``[batch, width]`` pre-activations: the
prefiltered ``batch_topk`` the SAE uses and the one-``topk`` reference
``batch_topk_reference``. Rounds alternate the three and medians are reported, so machine
load hits all alike. Epochs per second and the paper's 2,000 epochs follow from the median
step.

Part 2 runs ``train_meta_sae`` end to end for a few epochs and splits its time into the
steps, the final analysis (``analyze_meta_sae``) and the one-off set-up.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_sae.py           # ~2 minutes on one core
    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_sae.py --quick   # one epoch, 3 rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_helpers.data.sources import TensorSource
from sae_helpers.kernels.topk import batch_topk, batch_topk_reference
from sae_helpers.meta import PAPER, analyze_meta_sae, meta_config, train_meta_sae
from sae_helpers.training import TrainingRun


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one epoch and 3 rounds")
    parser.add_argument("--rows", type=int, default=PAPER["base_width"])
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--width", type=int, default=PAPER["width"])
    parser.add_argument("--k", type=int, default=PAPER["k"])
    parser.add_argument("--batch", type=int, default=PAPER["batch_size"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds = 1, 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rows {args.rows:,} x {args.d}, "
          f"meta width {args.width:,}, k {args.k}, batch {args.batch:,}")
    rows = torch.nn.functional.normalize(torch.randn(args.rows, args.d, generator=torch.Generator().manual_seed(0)),
                                         dim=1)

    # Part 1: step vs selection
    cfg = meta_config(args.rows, args.width, args.k, 10**6, lr=PAPER["lr"], batch_size=args.batch)
    run = TrainingRun.start(cfg, rows[: cfg.init_sample_size], torch.device("cpu"))
    batches = TensorSource(rows).batches(cfg.batch_size, 0)
    run.step(next(batches))  # warm-up
    times: dict[str, list[float]] = {"step": [], "batch_topk": [], "reference": []}
    for r in range(args.rounds):
        x = next(batches)
        with torch.no_grad():
            pre = run.sae.pre_activations(x)
        order = list(times)[r % 3:] + list(times)[: r % 3]
        for name in order:
            begin = time.perf_counter()
            if name == "step":
                run.step(x)
            elif name == "batch_topk":
                batch_topk(pre, args.k)
            else:
                batch_topk_reference(pre, args.k)
            times[name].append(time.perf_counter() - begin)
    step, fast, ref = (statistics.median(times[name]) for name in ("step", "batch_topk", "reference"))
    print(f"\none training step vs the BatchTopK selection on the same [{args.batch}, {args.width}] "
          f"pre-activations, median of {args.rounds} rounds")
    print(f"{'':<34} {'s':>8} {'share of step':>14}")
    print(f"{'training step (prefiltered topk)':<34} {step:8.3f} {1.0:14.2f}")
    print(f"{'batch_topk (prefiltered)':<34} {fast:8.3f} {fast / step:14.2f}")
    print(f"{'batch_topk_reference (one topk)':<34} {ref:8.3f} {ref / (step - fast + ref):14.2f}"
          "   (share of a step that used it)")
    print(f"selection speed-up: {ref / fast:.2f}x; step speed-up: {(step - fast + ref) / step:.2f}x")

    steps_per_epoch = args.rows / cfg.batch_size
    per_epoch = steps_per_epoch * step
    print(f"\nsteady state: {steps_per_epoch:g} steps per epoch, {per_epoch:.2f} s per epoch = "
          f"{1 / per_epoch:.3f} epochs per second")
    paper = PAPER["epochs"] * per_epoch
    print(f"the paper's {PAPER['epochs']:,} epochs, extrapolated: {paper / 3600:.1f} h "
          f"({PAPER['epochs'] * steps_per_epoch:,.0f} steps)")

    # Part 2: end to end
    start = time.perf_counter()
    meta, result = train_meta_sae(rows, args.width, args.k, args.epochs, lr=PAPER["lr"], batch_size=args.batch,
                                  min_steps=1, null=False, device="cpu", progress=False)  # exactly args.epochs
    total = time.perf_counter() - start
    start = time.perf_counter()
    analyze_meta_sae(meta, rows)
    analysis = time.perf_counter() - start
    steps = meta.training_config["steps"]
    print(f"\ntrain_meta_sae, {args.epochs} epoch(s) = {steps} steps: {total:.1f} s = {steps} x the median step "
          f"({steps * step:.1f} s) + the final analysis ({analysis:.1f} s) + set-up and the rest "
          f"({total - steps * step - analysis:.1f} s)")
    print(f"(after {args.epochs} epoch(s) at lr {PAPER['lr']}: FVE {result.fve:.3f}, inference L0 {result.l0:.2f})")


if __name__ == "__main__":
    main()
