"""Does the book's learning rate (1e-3) reach the SAE the paper's (3e-4) reaches, and how much sooner?

The Gated SAE paper trained its Gated SAEs at lr 3e-4 (batch 4,096); the book trains every SAE at
1e-3 (batch 512), at a constant learning rate until its held-out FVU and L0 plateau. This trains
chapter 02's Gated SAE (width 864, L1 coefficient 2) and baseline (width 1,296, L1 1.4) at both
learning rates in one pass over the book's cache of SmolLM2-135M ``blocks.6.hook_resid_post``
(1M tokens; the same batches for all four), each until its plateau or the step cap, and prints per
architecture: the steps to plateau, the held-out FVU and L0 at the end, and the ratios 1e-3 / 3e-4.
An FVU ratio near 1 at a lower step count justifies the book's rate; a clearly higher FVU or L0 at
1e-3 would not.

Usage::

    .venv/bin/python bench/learning_rate.py                 # cap 24,000 steps: about 50 min on 2 cores
    .venv/bin/python bench/learning_rate.py --steps 16000   # a shorter cap
    .venv/bin/python bench/learning_rate.py --quick         # 20k tokens, 400 steps: a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

import sae_helpers as sh

SITE = "blocks.6.hook_resid_post"
CACHE = Path(__file__).resolve().parent.parent / "data" / "cache"
SETTINGS = {"gated": {"width": 864, "l1_coefficient": 2.0}, "relu": {"width": 1296, "l1_coefficient": 1.4}}
RATES = (3e-4, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24_000, help="the step cap (default 24,000)")
    parser.add_argument("--archs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="20k tokens and 400 steps: checks the script runs")
    args = parser.parse_args()
    n_train, n_eval, steps = (20_000, 4_000, 400) if args.quick else (1_000_000, 16_000, args.steps)
    model = sh.load_model("smollm2-135m")
    caches = sh.harvest_splits(model, [SITE], n_train, n_eval, CACHE, context_size=128, dtype="float16",
                               outlier_factor=5.0)
    train, held_out = caches[SITE]
    configs = [dict(arch=arch, lr=lr, steps=steps, batch_size=512, plateau_tolerance=0.02, lr_decay_start=None,
                    **SETTINGS[arch]) for arch in args.archs for lr in RATES]
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as out:
        sweep = sh.train_saes(train, configs, out_dir=out, eval_activations=held_out)
    results = sweep.results.to_dict("records")
    health = sh.health_table({str(i): sae for i, sae in enumerate(sweep.saes)},
                             evaluations={str(i): result for i, result in enumerate(results)})
    table = pd.DataFrame([{"arch": config["arch"], "lr": config["lr"], "steps": int(health.loc[str(i), "steps"]),
                           "plateaued": bool(health.loc[str(i), "plateaued"]), "fvu": result["fvu"],
                           "l0": result["l0"], "dead %": 100 * result["dead_fraction"]}
                          for i, (config, result) in enumerate(zip(configs, results, strict=True))])
    print(table.to_string(index=False))
    for arch, runs in table.groupby("arch"):
        slow, fast = (runs[runs.lr == lr].iloc[0] for lr in RATES)
        print(f"{arch}: 1e-3 / 3e-4: FVU {fast.fvu / slow.fvu:.3f}x, L0 {fast.l0 / slow.l0:.3f}x, "
              f"steps {fast.steps / slow.steps:.3f}x (plateaued: 1e-3 {bool(fast.plateaued)}, "
              f"3e-4 {bool(slow.plateaued)})")


if __name__ == "__main__":
    main()
