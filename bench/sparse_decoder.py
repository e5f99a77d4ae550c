"""Dense vs sparse decoder path of the fused training steps, at several L0.

Times one training step's forward and backward (``sae(x)``, the weighted loss,
``loss.backward()``; the optimiser update does not depend on the path) of a Gated (or
ReLU) SAE at d_in = 576, width 4,608, batch 4,096, float32, with the decoder path forced
``dense``, forced ``sparse`` and left on ``auto`` (``sae(x, decoder=...)``, see
:mod:`sae_helpers.kernels.sparse`). L0 is set exactly: every latent's
gate bias (``b_gate``; ``b_enc`` for ReLU) is minus the quantile of its pre-activation
over the batch that leaves the wanted fraction ``L0 / width`` of rows open (and
``b_mag = b_gate``, ``r_mag = 0``, so the magnitude path is active on every open gate).

Prints per L0 the best step time of each path (min over interleaved rounds: the machine
may be shared), the sparse path's speed-up ``dense / sparse`` and the path ``auto`` took.

Measured (2 threads, AVX-512 EPYC, quiet machine), Gated, best ms per step::

    L0     density  dense  sparse  speed-up        L0     density  dense  sparse  speed-up
    16     0.003    1144   271     4.2x            512    0.111    1327   830     1.6x
    32     0.007    1043   270     3.9x            640    0.139     976   812     1.2x
    64     0.014    1088   446     2.4x            768    0.167    1038   1109    0.94x
    128    0.028    1061   448     2.4x            1024   0.222     932   1217    0.77x
    256    0.056    1058   551     1.9x

ReLU: 3.8x at L0=16, 3.2x at 64, 2.0x at 256, 1.4x at 512, 1.06x at 768, 0.80x at 1024.
At L0=16 about half of the sparse Gated step is the dense encoder matmul; doing the
encoder's weight gradient on the support too (instead of a dense ``x^T dL/du``) saves
about 150 ms per step.

The kernels (:mod:`sae_helpers.kernels.sparse`: ``spmm`` = ``F.embedding_bag`` in CSR order,
``sampled_mm`` = ``torch.sparse.sampled_addmm``, ``spmm_t`` = ``F.embedding_bag`` in CSC
order) were the fastest measured on CPU. They won, on a 2-core AVX-512 CPU at N=4096,
M=4608, d=576 and L0 16-1024, against ``torch.sparse.mm`` on a CSR tensor (about 2x slower
for both ``S @ W`` and ``S^T @ G``; ``S^T`` as ``csr.t()`` 5-10x slower), gathering rows and
``bmm``/``vecdot``/``index_add_`` in chunks (10-50x slower: they move ``[nnz, d]`` through
memory) and ATen's embedding-bag backward kernels (as fast at L0=16, 1.5-2x slower from
L0=256). Sorting the column indices for ``spmm_t``'s column-major order as int32 is several
times faster than as int64. All three are memory-bound, about 15x slower per multiply-add
than MKL's dense matmul, which sets the crossover (``DENSITY_CROSSOVER``).

Usage::

    .venv/bin/python bench/sparse_decoder.py                      # Gated, L0 16..512, ~1 min
    .venv/bin/python bench/sparse_decoder.py --l0 384 512 768 1024  # around the crossover
    .venv/bin/python bench/sparse_decoder.py --arch relu
    .venv/bin/python bench/sparse_decoder.py --quick              # small shapes, seconds
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import Tensor

from sae_helpers.kernels.sparse import DENSITY_CROSSOVER
from sae_helpers.saes import GatedSAE, ReluSAE
from sae_helpers.saes.base import SAE

PATHS = ("dense", "sparse", "auto")


@torch.no_grad()
def sae_at_l0(arch: str, x: Tensor, width: int, l0: float, seed: int = 0) -> SAE:
    """An SAE whose every latent is active on ``round(l0 / width * batch)`` rows of ``x``."""
    n, d = x.shape
    cls = GatedSAE if arch == "gated" else ReluSAE
    sae = cls(d, width).init_weights(torch.Generator().manual_seed(seed))
    u = sae.project(x)
    k_open = min(n, max(0, round(l0 / width * n)))
    if k_open == 0:
        bias = -u.amax(0) - 1.0
    else:  # rows with u > the (n - k_open)-th smallest value: exactly k_open (no ties in floats)
        bias = -(u.kthvalue(n - k_open, dim=0).values if k_open < n else u.amin(0) - 1.0)
    if arch == "gated":
        sae.b_gate.copy_(bias)
        sae.b_mag.copy_(bias)
    else:
        sae.b_enc.copy_(bias)
    return sae


def train_step(sae: SAE, x: Tensor, decoder: str, lam: float = 1e-3) -> bool:
    """Forward and backward of the training loss on decoder path ``decoder``; returns whether
    the sparse path ran."""
    sae.zero_grad(set_to_none=True)
    out = sae(x, decoder=decoder)
    losses = out.losses
    loss = losses["reconstruction"] + lam * losses["sparsity"] + losses.get("auxiliary", 0.0)
    loss.backward()
    return getattr(losses["reconstruction"].grad_fn, "support", None) is not None  # the step's ctx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["gated", "relu"], default="gated")
    parser.add_argument("--l0", type=float, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timed rounds per L0")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small shapes, one round: a smoke test")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.d_in, args.width, args.batch, args.rounds = 64, 512, 512, 1
        args.l0 = [4, 64]

    n, d, m = args.batch, args.d_in, args.width
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{args.arch}, d_in={d}, width={m}, batch={n}, float32; DENSITY_CROSSOVER={DENSITY_CROSSOVER}")
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    header = (f"{'L0':>6} {'density':>8} {'dense ms':>9} {'sparse ms':>10} {'auto ms':>8} "
              f"{'sparse speed-up':>16} {'auto path':>10}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for l0 in args.l0:
        sae = sae_at_l0(args.arch, x, m, l0)
        best = dict.fromkeys(PATHS, float("inf"))
        auto_sparse = False
        for path in PATHS:  # warm-up
            train_step(sae, x, path)
        for r in range(args.rounds):
            for path in PATHS[r % 3:] + PATHS[: r % 3]:
                t0 = time.perf_counter()
                sparse = train_step(sae, x, path)
                best[path] = min(best[path], time.perf_counter() - t0)
                if path == "auto":
                    auto_sparse = sparse
        with torch.no_grad():
            u = sae.project(x)
            pre = u + (sae.b_gate if args.arch == "gated" else sae.b_enc)
            density = (pre > 0).float().mean().item()
        print(f"{l0:>6g} {density:>8.4f} {best['dense'] * 1e3:>9.0f} {best['sparse'] * 1e3:>10.0f} "
              f"{best['auto'] * 1e3:>8.0f} {best['dense'] / best['sparse']:>15.2f}x "
              f"{'sparse' if auto_sparse else 'dense':>10}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
