"""Every architecture's training step, and one-pass sweeps against separate runs.

Part 1 times ``TrainingRun.step`` (forward, backward, Adam, decoder projection and
renormalisation, dead-latent bookkeeping) for each registered architecture at the same
shapes, beside a dense ``[batch x d_in] x [d_in x width]`` matmul measured in the same
rounds (the hardware's pace for the one matmul every architecture must do: the
encoder). Rounds rotate the order, and medians are reported, so machine load hits all
alike. TopK and BatchTopK decode through ``k`` rows per token; their sparsity is fixed
(``--k``). The L1 and JumpReLU SAEs are timed at initialisation (about half the latents
active), i.e. at the dense start of training.

Part 2 trains 8 SAEs (two each of relu, gated, topk and jumprelu, different sparsity
settings, one batch size) from an activation cache on disk, once with ``train_saes``
(one pass: each batch is read, checksummed and shuffled once and fed to all 8) and once
as 8 separate ``train_sae`` runs (8 reads), and prints the ratio of wall times. The
cache holds synthetic activations written by ``build_cache`` (a fixed random embedding
of random tokens), so no model is needed; with a real harvest the separate runs would
each also pay for reading the model's activations from disk, as here.

Usage::

    .venv/bin/python bench/sweep_throughput.py            # a few minutes
    .venv/bin/python bench/sweep_throughput.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae_helpers import architectures, train_sae, train_saes
from sae_helpers.data.cache import build_cache
from sae_helpers.training import TrainConfig, TrainingRun

SPARSITY = {"relu": {"l1_coefficient": 1.0}, "gated": {"l1_coefficient": 1.0},
            "jumprelu": {"l0_coefficient": 1.0}}


def config(arch: str, width: int, batch: int, k: int, steps: int = 10**6, **extra) -> TrainConfig:
    sparsity = {"k": k} if arch in ("topk", "batchtopk") else SPARSITY[arch]
    return TrainConfig(arch=arch, width=width, steps=steps, batch_size=batch, lr=1e-4,
                       **{**sparsity, **extra})


def time_steps(d_in: int, width: int, batch: int, k: int, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(batch, d_in, generator=gen)
    runs = {arch: TrainingRun.start(config(arch, width, batch, k), data, torch.device("cpu"))
            for arch in architectures()}
    a, b = torch.randn(batch, d_in), torch.randn(d_in, width)
    times: dict[str, list[float]] = {name: [] for name in [*runs, "matmul"]}
    for run in runs.values():
        run.step(data)  # warm-up
    for r in range(rounds):
        names = list(times)
        names = names[r % len(names):] + names[: r % len(names)]
        for name in names:
            start = time.perf_counter()
            if name == "matmul":
                torch.mm(a, b)
            else:
                runs[name].step(data)
            times[name].append(time.perf_counter() - start)
    matmul = statistics.median(times["matmul"])
    print(f"\nTraining step, d_in={d_in}, width={width}, batch={batch}, TopK/BatchTopK k={k}; "
          f"median of {rounds} rounds")
    print(f"{'architecture':<12} {'s/step':>8} {'activations/s':>14} {'step / one matmul':>18} {'L0':>7}")
    for name, run in runs.items():
        step = statistics.median(times[name])
        with torch.no_grad():
            l0 = float((run.sae(data * run.scale).latents > 0).sum(-1).float().mean())
        print(f"{name:<12} {step:8.3f} {batch / step:14,.0f} {step / matmul:18.1f} {l0:7.1f}")
    print(f"{'(matmul)':<12} {matmul:8.3f}")


def write_cache(root: Path, n_tokens: int, d_in: int) -> Path:
    gen = torch.Generator().manual_seed(1)
    vocab, context = 4096, 128
    embedding = torch.randn(vocab, d_in, generator=gen)
    windows = (torch.randint(0, vocab, (context,), generator=gen) for _ in range(n_tokens // (context - 1) + 2))
    return build_cache(root / "cache", windows, lambda ids: embedding[ids], n_tokens,
                       {"model": "synthetic", "hook_name": "none", "context_size": context}, progress=False)


def time_sweep(d_in: int, width: int, batch: int, steps: int, n_tokens: int, repeats: int) -> None:
    configs = [
        config(arch, width, batch, k=k, steps=steps, **extra)
        for arch, k, extra in [
            ("relu", 32, {"l1_coefficient": 1.0}), ("relu", 32, {"l1_coefficient": 3.0}),
            ("gated", 32, {"l1_coefficient": 1.0}), ("gated", 32, {"l1_coefficient": 3.0}),
            ("topk", 16, {}), ("topk", 64, {}),
            ("jumprelu", 32, {"l0_coefficient": 0.3}), ("jumprelu", 32, {"l0_coefficient": 1.0}),
        ]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp), n_tokens, d_in)
        one, separate = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            train_saes(cache, configs, device="cpu", progress=False)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            for cfg in configs:
                options = {k: v for k, v in cfg.to_dict().items() if k not in ("arch", "width", "steps")}
                train_sae(cache, cfg.arch, cfg.width, steps=cfg.steps, device="cpu", progress=False, **options)
            separate.append(time.perf_counter() - start)
    print(f"\n8 SAEs (2 each of relu, gated, topk, jumprelu), width {width}, {steps} steps of {batch} "
          f"from a {n_tokens:,}-token cache on disk; best of {repeats}")
    print(f"one pass (train_saes): {min(one):7.1f} s")
    print(f"8 separate train_sae:  {min(separate):7.1f} s")
    print(f"ratio separate / one pass: {min(separate) / min(one):.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke test")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep-width", type=int, default=1152)
    parser.add_argument("--sweep-steps", type=int, default=30)
    parser.add_argument("--sweep-tokens", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.d_in, args.width, args.batch, args.k, args.rounds = 64, 512, 512, 16, 2
        args.sweep_width, args.sweep_steps, args.sweep_tokens, args.repeats = 128, 10, 20_000, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    time_steps(args.d_in, args.width, args.batch, args.k, args.rounds)
    time_sweep(args.d_in, args.sweep_width, args.batch, args.sweep_steps, args.sweep_tokens, args.repeats)


if __name__ == "__main__":
    main()
