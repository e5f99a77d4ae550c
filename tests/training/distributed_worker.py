"""One process of a distributed training run, launched by tests/training/test_distributed.py with
``torchrun --nproc-per-node 2 tests/training/distributed_worker.py DATA OUT ARCH [--resume] [--die-at N]``.

Trains one SAE with :func:`sae_helpers.train_sae` on the activations in DATA (a .safetensors file),
checkpointing in OUT (process 0 writes ``OUT/sae``). ``--die-at N``: the last process kills itself with
SIGKILL when its run reaches step N (a crash at a known point).
"""

import argparse
import os
import signal

from sae_helpers import train_sae, train_saes
from sae_helpers.training.run import TrainingRun

SETTINGS = {"relu": {"l1_coefficient": 1.0}, "gated": {"l1_coefficient": 1.0}, "topk": {"k": 4},
            "batchtopk": {"k": 4}, "jumprelu": {"l0_coefficient": 0.1}}
#: Shared by the test's single-process reference: small, float64 (so that only the order of
#: additions differs between one and two processes), dead latents soon (TopK's aux-k loss acts).
OPTIONS = {"width": 48, "steps": 24, "batch_size": 64, "lr": 3e-3, "seed": 3, "dtype": "float64",
           "init_sample_size": 256, "dead_after": 4, "resample_every": 8, "resample_pool_size": 128,
           "resample_lr_warmup_steps": 4}


SWEEP_WIDTHS = (24, 32, 40)


def sweep_configs(arch: str) -> list[dict]:
    """Three widths of ``arch`` with the test's options (one per process and one more)."""
    return [{"arch": arch, **options(arch), "width": width} for width in SWEEP_WIDTHS]


def options(arch: str) -> dict:
    return {**OPTIONS, **SETTINGS[arch], **({"resample_every": 0} if arch in ("topk", "batchtopk") else {})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("arch")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--sweep", choices=["data", "configs"], help="train_saes over SWEEP_WIDTHS instead")
    args = parser.parse_args()
    if args.sweep:
        train_saes(args.data, sweep_configs(args.arch), out_dir=args.out, results_csv=f"{args.out}/results.csv",
                   parallel=args.sweep, progress=False, device="cpu")
        return
    if args.die_at is not None and int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        step = TrainingRun.step

        def dying_step(run, *a, **k):
            if run.step_count == args.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(run, *a, **k)

        TrainingRun.step = dying_step
    train_sae(args.data, args.arch, checkpoint_dir=args.out, resume=args.resume, checkpoint_every=2, progress=False,
              device="cpu", **options(args.arch))


if __name__ == "__main__":
    main()
