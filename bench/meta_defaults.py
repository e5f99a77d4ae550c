"""How long and how fast must a meta-SAE train? The measurements behind ``train_meta_sae``'s defaults.

Trains BatchTopK meta-SAEs (``sae_helpers.meta.train_meta_sae``, batches of 4,096 rows, k = 4)
for a grid of learning rates and optimiser steps on one of three sets of rows, and prints one
line per run:

* ``planted`` (default): 4,096 unit rows in d = 128, each the normalised sum of 2-4 of 64
  random unit atoms with weights in [0.75, 1.25]; 64 meta-latents. Known features, so the
  table gives the atoms' recovery: ``mmcs`` (mean over atoms of the max cosine to a
  meta-decoder row), ``exact`` (rows whose top-m meta-latents, m = the row's atom count, are
  exactly the meta-latents matched to its m atoms) and ``own`` (rows whose top-m
  meta-latents each have one of the row's own atoms as their closest atom).
* ``large``: the same construction at the book's size, 4,608 rows in d = 576 from 1,024
  atoms; 1,024 meta-latents.
* ``book``: the decoder rows of the book's widest SAE (4,608 latents, d = 576, from
  ``data/runs/family``: run the atomicity or completeness chapter with the book's
  parameters first); meta-widths 216 (the paper's ratio) and 1,152 (d_sae / 4).

Every run reports ``fve`` and, with ``--null``, ``fve_null`` (the same configuration on as
many random unit rows: ``MetaSAEResult.fve_null``) and their difference; the inference L0,
dead meta-latents, the training-health numbers of ``sh.training_health`` (near-initial
meta-latents, loss plateau over the last tenth) and the seconds the run took.

Usage (one core; times for this machine's CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_defaults.py                   # planted grid, ~6 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_defaults.py --case large --lrs 1e-3 --steps 1000 2000
    OMP_NUM_THREADS=1 .venv/bin/python bench/meta_defaults.py --case book --lrs 1e-3 --steps 500 1000 2000 --null
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import sae_helpers as sh
from sae_helpers.meta import decoder_directions, train_meta_sae

ROOT = Path(__file__).resolve().parent.parent
BOOK_BASE = ROOT / "data" / "runs" / "family" / "blocks.6.hook_resid_post"


def planted_rows(n_atoms: int, d: int, n: int, max_atoms: int = 4, seed: int = 0):
    """``n`` unit rows, each the normalised sum of 2..max_atoms of ``n_atoms`` random unit atoms
    (weights in [0.75, 1.25]); returns ``(atoms, rows, members)``. As ``composed_dictionary`` in
    ``tests/meta/test_meta_sae.py``."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=gen), dim=1)
    counts = torch.randint(2, max_atoms + 1, (n,), generator=gen).tolist()
    members = [torch.randperm(n_atoms, generator=gen)[:c] for c in counts]
    rows = torch.stack([((torch.rand(len(m), generator=gen) * 0.5 + 0.75)[:, None] * atoms[m]).sum(0)
                        for m in members])
    return atoms, torch.nn.functional.normalize(rows, dim=1), members


def recovery(atoms, meta, result, members) -> dict[str, float]:
    """``mmcs``, ``exact`` and ``own`` (see the module docstring)."""
    cos = atoms @ meta.W_dec.detach().T  # [atoms, meta-latents]
    atom_to_meta = cos.argmax(1)
    meta_to_atom = cos.argmax(0)
    exact, own = [], []
    for i, m in enumerate(members):
        top = [j for j, _ in result.decompositions[i][: len(m)]]
        exact.append(set(top) == set(atom_to_meta[m].tolist()))
        own.append(len(top) == len(m) and set(meta_to_atom[top].tolist()) <= set(m.tolist()))
    return {"mmcs": float(cos.max(1).values.mean()), "exact": float(np.mean(exact)), "own": float(np.mean(own))}


def book_rows() -> torch.Tensor:
    runs = sorted(BOOK_BASE.glob("batchtopk-w4608-*"))
    if not runs:
        raise SystemExit(f"No 4,608-latent SAE under {BOOK_BASE}: run the atomicity chapter with the book's "
                         "parameters (book/params/04_atomicity.yaml) first.")
    sae = sh.load_sae(str(runs[0] / "sae"))
    if json.loads((runs[0] / "sae" / "training_config.json").read_text())["steps"] != 2400:
        raise SystemExit(f"{runs[0]} is not the book's SAE (2,400 steps).")
    return decoder_directions(sae)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("planted", "large", "book"), default="planted")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="meta-widths (default per case)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--null", action="store_true", help="also train each run's null (doubles the time)")
    args = parser.parse_args(argv)

    atoms = members = None
    if args.case == "planted":
        atoms, rows, members = planted_rows(64, 128, 4096)
        widths = args.widths or [64]
    elif args.case == "large":
        atoms, rows, members = planted_rows(1024, 576, 4608)
        widths = args.widths or [1024]
    else:
        rows = book_rows()
        widths = args.widths or [216, 1152]
    n, d = rows.shape
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); case {args.case}: {n:,} rows in d {d}, "
          f"k {args.k}, batch {min(args.batch, n):,}")
    head = (f"{'width':>6} {'lr':>7} {'steps':>6} {'mmcs':>6} {'exact':>6} {'own':>6} {'fve':>6} {'null':>6} "
            f"{'diff':>6} {'L0':>5} {'dead':>6} {'near-init':>9} {'plateau':>8} {'s':>6}")
    print(head)
    for width in widths:
        for lr in args.lrs:
            for steps in args.steps:
                begin = time.perf_counter()
                meta, result = train_meta_sae(rows, width, args.k, epochs=1, lr=lr, batch_size=args.batch,
                                              min_steps=steps, null=args.null, progress=False)
                seconds = time.perf_counter() - begin
                health = sh.training_health(meta, rows)
                rec = recovery(atoms, meta, result, members) if atoms is not None else {}
                cells = [f"{width:>6}", f"{lr:>7.0e}", f"{steps:>6}"]
                cells += [f"{rec[key]:>6.3f}" if rec else f"{'-':>6}" for key in ("mmcs", "exact", "own")]
                null = result.fve_null
                cells += [f"{result.fve:>6.3f}", f"{null:>6.3f}" if not math.isnan(null) else f"{'-':>6}",
                          f"{result.fve - null:>6.3f}" if not math.isnan(null) else f"{'-':>6}",
                          f"{result.l0:>5.2f}", f"{result.dead_fraction:>6.3f}",
                          f"{health['near_initial_fraction']:>9.3f}", f"{health['loss_plateau']:>+8.4f}",
                          f"{seconds:>6.0f}"]
                print(" ".join(cells), flush=True)


if __name__ == "__main__":
    main()
