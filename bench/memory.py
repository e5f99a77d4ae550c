"""Peak memory of evaluating and training from a ``.safetensors`` file, at 1x and 4x its size.

Memory must stay bounded when the activations file is larger than what is held in memory.
The file source reads each batch's rows from the file with positional
reads (:class:`sae_helpers.data.sources.FileSource`), so peak resident memory should not
grow with the file. (A memory map does not pass this benchmark: every random row touched
makes the kernel map its whole neighbourhood, so a shuffled batch maps most of the file.)

For file sizes S and 4S of float32 activations (d = 256, written to a temporary
directory), each measurement runs in a fresh child process:

* ``evaluate``: ``sh.evaluate(sae, path)`` with a small ReLU SAE (every row, in order);
* ``train``: ``sh.train_sae(path, "relu", ...)`` for a few dozen steps.

The child imports everything and builds the SAE, reads its resident memory (VmRSS), resets
the kernel's high-water mark (``/proc/self/clear_refs``; without it the peak since start is
used) and then runs the task; it reports the peak (VmHWM, or ``ru_maxrss``) minus that
baseline. The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then gives every
large buffer its own mapping and returns it when freed, so the peak measures the memory
in use. With glibc's default (``--glibc-default``) freed batches linger in its heap by
chance, and the same run's peak varies by +-40 MB (evaluate peaks of 80 to 150 MB at either
size), which swamps a 10% criterion. ``--repeats`` runs each measurement that many times
(fresh processes) and keeps the smallest peak. The ratio peak(4S) / peak(S) must
stay below 1.10 for each task.

``--before`` adds reference rows for the old behaviour (the whole file loaded into a tensor,
``load_activation_file``), which grow with the file.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py             # about a minute and a half
    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --before    # also the old behaviour
    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --size-mb 20 --steps 20   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D = 256
LIMIT = 1.10


def _status(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), or ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(task: str, path: str, steps: int, batch_size: int, width: int, loaded: bool) -> None:
    import torch

    import sae_helpers as sh
    from sae_helpers.data.sources import TensorSource, load_activation_file

    torch.manual_seed(0)
    sae = sh.create_sae("relu", D, width)
    data = path
    reset = _reset_peak()
    baseline = _status("VmRSS") or 0
    start = time.perf_counter()
    if loaded:  # the old behaviour: the whole file in one tensor
        data = TensorSource(load_activation_file(path), description=f"file {path}").x
    if task == "evaluate":
        sh.evaluate(sae, data, batch_size=batch_size)
    else:
        sh.train_sae(data, "relu", width, l1_coefficient=1.0, steps=steps, batch_size=batch_size,
                     device="cpu", progress=False)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    if peak is None or not reset:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps({"baseline": baseline, "peak": peak, "delta": peak - baseline, "seconds": seconds}))


def write_file(path: Path, megabytes: float, seed: int) -> int:
    import torch
    from safetensors.torch import save_file

    rows = int(megabytes * 2**20) // (D * 4)
    gen = torch.Generator().manual_seed(seed)
    save_file({"activations": torch.randn(rows, D, generator=gen)}, str(path))
    return rows


def measure(task: str, path: Path, args: argparse.Namespace, loaded: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", task, str(path), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--width", str(args.width)] + (["--loaded"] if loaded else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {task} on {path} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=50.0, help="S, the smaller file (MB of float32)")
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--width", type=int, default=512, help="SAE width (d_in is 256)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per measurement (min kept)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="keep glibc's dynamic mmap threshold in the children (noisy peaks)")
    parser.add_argument("--before", action="store_true", help="also measure the old whole-file loading")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--loaded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.steps, args.batch_size, args.width, args.loaded)
        return

    mb = 2**20
    with tempfile.TemporaryDirectory(prefix="sae-memory-bench-") as tmp:
        files = {}
        for factor in (1, 4):
            path = Path(tmp) / f"acts_{factor}x.safetensors"
            rows = write_file(path, args.size_mb * factor, seed=factor)
            files[factor] = (path, rows)
        variants = [("file (pread)", False)] + ([("loaded (old)", True)] if args.before else [])
        malloc = "glibc default malloc" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=65536"
        print(f"d={D}, SAE relu width {args.width}, batch {args.batch_size}, train steps {args.steps}, {malloc}, "
              f"min of {args.repeats} run(s); peak RSS above the baseline after imports, in MB")
        print(f"{'task':<9} {'source':<13} {'size':>5} {'rows':>8} {'file MB':>8} {'peak MB':>8} {'s':>6}")
        ratios: dict[tuple[str, str], float] = {}
        for task in ("evaluate", "train"):
            for name, loaded in variants:
                peaks = {}
                for factor in (1, 4):
                    path, rows = files[factor]
                    runs = [measure(task, path, args, loaded) for _ in range(max(1, args.repeats))]
                    r = min(runs, key=lambda run: run["delta"])
                    peaks[factor] = r["delta"]
                    print(f"{task:<9} {name:<13} {factor:>4}S {rows:>8} {path.stat().st_size / mb:>8.1f} "
                          f"{r['delta'] / mb:>8.1f} {r['seconds']:>6.1f}", flush=True)
                ratios[task, name] = peaks[4] / max(peaks[1], 1)
        print()
        ok = True
        for (task, name), ratio in ratios.items():
            counted = name == variants[0][0]
            verdict = ("PASS" if ratio <= LIMIT else "FAIL") if counted else "(reference)"
            ok &= ratio <= LIMIT or not counted
            print(f"{task:<9} {name:<13} peak(4S)/peak(S) = {ratio:.3f}  {verdict} (limit {LIMIT:.2f})")
        print("overall:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
