"""Are BatchTopK SAEs on SmolLM2 trained? Near-initial and dead latents, before and after the fixes.

Trains BatchTopK SAEs (width 2,304, k 32, lr 1e-3) on SmolLM2-135M's ``blocks.6.hook_resid_post``
under several recipes, in one run, and prints for each: the training-health numbers
(``sh.training_health``: latents whose decoder row keeps cosine > 0.9 to its random start,
dead and dense latents on held-out tokens, loss plateau), L0 and FVU, the near-initial
fraction split by held-out firing density, and the share of BatchTopK's selections that go
to outlier tokens (norm above 5x the batch median: SmolLM2's massive activations, mostly on
" the"). The recipes:

* ``before``: the book's old recipe -- every token kept, batches of 1,024, 600 steps, Adam's
  beta2 0.999 (the old default);
* ``filtered``: the same on a harvest without outlier tokens (``outlier_factor=5``);
* ``filtered, 4x batch``: batches of 4,096 (four times the tokens in the same steps);
* ``filtered, 4x steps``: 2,400 steps of 1,024 (four times the tokens in four times the steps);
* ``filtered, 4x steps, beta2 auto``: the same with the default ``adam_beta2=None`` (0.9896 here);
* ``book``: the book's recipe, 2,400 steps of 512 with the default beta2.

The ratio printed last compares the near-initial fraction after and before. Everything is
measured on held-out speeches (16k tokens). Caches go to ``data/cache`` (shared with the book).

Usage::

    .venv/bin/python bench/convergence.py            # ~40 minutes on 2 cores
    .venv/bin/python bench/convergence.py --quick --n-train 20000   # a smoke run (150 base steps)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sae_helpers as sh
from sae_helpers.data.cache import CacheSource
from sae_helpers.kernels.topk import batch_topk
from sae_helpers.training.config import TrainConfig

SITE = "blocks.6.hook_resid_post"
ROOT = Path(__file__).resolve().parent.parent / "data" / "cache"


def outlier_share(sae: sh.SAE, cache: Path, factor: float = 5.0, n_batches: int = 8, batch: int = 1024) -> float:
    """Share of BatchTopK's training-time selections that land on tokens with norm > factor x median."""
    source = CacheSource(cache)
    on_outliers = total = 0
    with torch.no_grad():
        for i, x in enumerate(source.in_order(batch)):
            if i == n_batches:
                break
            norms = x.norm(dim=1)
            big = norms > factor * norms.median()
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            support, _ = batch_topk(pre, sae.metadata.get("k", 32))
            on_outliers += int(big[support.rows].sum())
            total += support.nnz
    return on_outliers / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 base steps instead of 600")
    parser.add_argument("--n-train", type=int, default=300_000)
    parser.add_argument("--width", type=int, default=2304)
    args = parser.parse_args(argv)
    steps = 150 if args.quick else 600
    model = sh.load_model()
    raw = sh.harvest_splits(model, [SITE], args.n_train, 16_000, ROOT, dtype="float16")[SITE]
    filtered = sh.harvest_splits(model, [SITE], args.n_train, 16_000, ROOT, dtype="float16", outlier_factor=5.0)[SITE]
    recipes = {  # caches, batch size, steps, adam_beta2
        "before": (raw, 1024, steps, 0.999),
        "filtered": (filtered, 1024, steps, 0.999),
        "filtered, 4x batch": (filtered, 4096, steps, 0.999),
        "filtered, 4x steps": (filtered, 1024, 4 * steps, 0.999),
        "filtered, 4x steps, beta2 auto": (filtered, 1024, 4 * steps, None),
        "book": (filtered, 512, 4 * steps, None),
    }
    rows = {}
    for name, (caches, batch_size, n_steps, beta2) in recipes.items():
        start = time.perf_counter()
        sae = sh.train_sae(caches.train, "batchtopk", args.width, k=32, steps=n_steps, batch_size=batch_size,
                           lr=1e-3, seed=0, adam_beta2=beta2, progress=False)
        evaluation = sh.evaluate(sae, caches.eval, return_density=True)
        health = sh.training_health(sae, evaluation=evaluation)
        near = sh.training.decoder_drift(sae).numpy() > 0.9
        density = np.asarray(evaluation["feature_density"])
        by_density = {f"near-initial, density {lo:g}-{hi:g}": float(near[(density > lo) & (density <= hi)].mean())
                      for lo, hi in ((0, 1e-3), (1e-3, 1e-2), (1e-2, 1))}
        checks = ("near_initial_fraction", "dead_fraction", "dense_fraction", "loss_plateau")
        rows[name] = {
            "steps x batch": f"{n_steps} x {batch_size}",
            "adam_beta2": TrainConfig.from_dict(sae.training_config).beta2,
            **{check: health[check] for check in checks},
            "l0": evaluation["l0"], "fvu": evaluation["fvu"], **by_density,
            "selections on outlier tokens (raw batches)": outlier_share(sae, raw.train),
            "seconds": time.perf_counter() - start,
        }
        print(name, rows[name], flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 30):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    before, after = rows["before"]["near_initial_fraction"], rows["book"]["near_initial_fraction"]
    print(f"near-initial fraction after / before: {after / before:.2f} ({after:.1%} vs {before:.1%})")


if __name__ == "__main__":
    main()
