"""An activation cache on disk: fixed-size shards, the token ids beside them, a manifest.

Layout of a cache directory::

    manifest.json             model, hook_name, d_model, n_tokens, context_size, dtype,
                              shards [{path, sha256, n_tokens}], settings, progress
    shard_00000.safetensors   activations [n, d] (in dtype); token_ids [w, context_size] (the windows
                              its rows come from); positions [n] (row -> w * context_size + pos)
                              first_window [1] (global index of token_ids[0])

Every shard holds exactly ``shard_tokens`` rows (the last one may hold fewer). Each file
is written atomically and the manifest is rewritten after every shard, so a killed
harvest resumes from its last shard. Readers accept only shard file names directly in the
cache directory, compare each shard's safetensors header with the manifest (before hashing
it), verify its sha256 and refuse NaN/inf activations, naming the shard.

:func:`build_caches` writes several such caches (one per site) from one pass over the
windows; each is exactly the cache :func:`build_cache` would write for that site alone.
Activations are stored in ``dtype`` (float32, bfloat16 or float16); a value the storage
dtype cannot hold (float16 above 65504) is an error, never a silent inf.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._dtypes import dtype_name, resolve_dtype
from .._io import atomic_write, atomic_write_json, read_json, sha256_file
from .._progress import tqdm
from ..distributed import SINGLE, World, broadcast_object, check_same_everywhere, gather_objects

MANIFEST = "manifest.json"
FORMAT = "sae_helpers.activation_cache/1"
REQUIRED_KEYS = ("model", "hook_name", "d_model", "n_tokens", "context_size", "dtype", "shards")


class CacheError(ValueError):
    """A cache directory that cannot be used as it is."""


def is_cache_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


SHARD_NAME = re.compile(r"shard_\d{5,}\.safetensors")
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_MAX_HEADER = 1 << 20  # a shard's header lists four tensors: a few hundred bytes


def check_shard_entries(manifest: dict[str, Any], out: Path) -> None:
    """Refuse ``shards`` entries that are not this cache's own shard files, or are listed twice.

    A shard is named ``shard_NNNNN.safetensors`` and lies in the cache directory itself: a
    path with ``..``, a directory or an absolute path would read another cache's (or any) file.
    """
    where = out / MANIFEST
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise CacheError(f"Manifest {where}: 'shards' must be a list of shard entries, found "
                         f"{type(shards).__name__}. Delete {out} and harvest again.")
    seen: dict[str, int] = {}
    for i, entry in enumerate(shards):
        missing = [k for k in ("path", "sha256", "n_tokens") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise CacheError(f"Manifest {where}: shards[{i}] lacks {missing}. Delete {out} and harvest again.")
        rows = entry["n_tokens"]
        if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
            raise CacheError(
                f"Manifest {where}: shards[{i}].n_tokens is {rows!r}, not a positive number of rows (every shard "
                f"written holds at least one). Restore the manifest, or delete {out} and harvest again."
            )
        name = entry["path"]
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise CacheError(
                f"Manifest {where}: shards[{i}].path is {name!r}, not a shard file name of this cache "
                f"(shard_NNNNN.safetensors, directly in {out}); a cache reads only its own shards. Restore "
                f"the manifest, or delete {out} and harvest again."
            )
        if name in seen:
            raise CacheError(
                f"Manifest {where}: shards[{i}].path {name!r} is listed twice (also shards[{seen[name]}]), so "
                f"its rows would be read twice. Delete {out} and harvest again."
            )
        seen[name] = i


def check_count(name: str, value: Any) -> None:
    """Refuse a count (rows, windows) that is not a positive integer, e.g. ``n_tokens=1000.5`` or ``"1000"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}); pass e.g. "
                         f"{name}=int(...).")


def build_cache(
    out_dir: str | os.PathLike,
    windows: Iterable[Tensor],
    activation_fn: Callable[[Tensor], Tensor],
    n_tokens: int,
    info: dict[str, Any],
    *,
    batch_size: int = 16,
    shard_tokens: int = 65536,
    dtype: str = "float32",
    exclude_first: bool = True,
    outlier_factor: float | None = None,
    progress: bool = True,
) -> Path:
    """Run ``activation_fn`` over ``windows`` and write ``n_tokens`` activation rows.

    ``windows`` yields ``[context_size]`` token-id tensors in a deterministic order;
    ``activation_fn`` maps a ``[batch, context_size]`` batch to ``[batch, context_size, d]``.
    ``info`` (``model``, ``hook_name``, ``context_size`` and any settings that change the
    data, e.g. the dataset) goes into the manifest; rerunning with other ``info`` or
    settings on an existing, unfinished cache is an error, with the same ones it resumes.
    ``exclude_first`` drops position 0 (the BOS token); ``outlier_factor`` drops rows
    whose norm exceeds that multiple of the batch's median norm. ``dtype`` is the storage
    dtype; a value that does not fit it (float16 overflows to inf above 65504) is an error.
    """
    site = str(info.get("hook_name") or "activations")
    return build_caches(
        {site: out_dir}, windows, lambda tokens, sites: {site: activation_fn(tokens)}, n_tokens, {site: info},
        batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype, exclude_first=exclude_first,
        outlier_factor=outlier_factor, progress=progress,
    )[site]


def build_caches(
    out_dirs: Mapping[str, str | os.PathLike],
    windows: Iterable[Tensor],
    activation_fn: Callable[[Tensor, list[str]], Mapping[str, Tensor]],
    n_tokens: int,
    infos: Mapping[str, dict[str, Any]],
    *,
    filter_site: str | None = None,
    batch_size: int = 16,
    shard_tokens: int = 65536,
    dtype: str = "float32",
    exclude_first: bool = True,
    outlier_factor: float | None = None,
    progress: bool = True,
    world: World = SINGLE,
) -> dict[str, Path]:
    """:func:`build_cache` for several sites from one pass over ``windows``: one cache each.

    ``out_dirs`` and ``infos`` map each site to its cache directory and manifest info.
    ``activation_fn(tokens, sites)`` returns ``{site: [batch, context_size, d]}`` for the
    sites it is asked for: only those whose cache still needs that batch (plus
    ``filter_site`` when filtering), so finished caches are never recomputed and a site
    that is behind (added later, or interrupted earlier) catches up alone.

    Every cache holds exactly the rows :func:`build_cache` would write for that site alone
    with the same settings, in the same order, and resumes the same way. The outlier filter
    decides once per row, on the norms at ``filter_site`` (default: the first site), and
    drops that row at every site, so the caches stay aligned row for row; the caches of the
    other sites then record ``outlier_site`` in their settings.

    With several processes (``world``, e.g. under ``torchrun``), every process reads the same
    windows and computes every ``world.size``-th batch; process 0 receives the rows and alone
    writes the shards and manifests, so the caches are exactly the single-process ones (the
    same files, byte for byte, when the processes compute as one would) and resume the same way.
    Every process must pass the same arguments (checked).
    """
    sites = list(out_dirs)
    if not sites:
        raise ValueError("No sites to harvest: out_dirs is empty.")
    if set(infos) != set(sites):
        raise ValueError(f"out_dirs names the sites {sites}, infos {list(infos)}; they must match.")
    for name, value in (("n_tokens", n_tokens), ("shard_tokens", shard_tokens), ("batch_size", batch_size)):
        check_count(name, value)
    filter_site = sites[0] if filter_site is None else filter_site
    if filter_site not in sites:
        raise ValueError(f"filter_site {filter_site!r} is not one of the sites {sites}.")
    paths = {site: Path(out_dirs[site]) for site in sites}
    resolved = [p.resolve() for p in paths.values()]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"Every site needs its own cache directory, got {list(map(str, paths.values()))}.")
    torch_dtype = resolve_dtype(dtype)
    if not torch_dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type (float32, bfloat16, float16), got {dtype!r}.")
    context_sizes = {int(infos[site]["context_size"]) for site in sites}
    if len(context_sizes) != 1:
        raise ValueError(f"All sites must share one context_size, got {sorted(context_sizes)}.")
    context_size = context_sizes.pop()

    settings = {}
    for site in sites:
        settings[site] = {
            **infos[site], "n_tokens_requested": n_tokens, "shard_tokens": shard_tokens, "dtype": dtype,
            "exclude_first": exclude_first, "outlier_factor": outlier_factor, "batch_size": batch_size,
        }
        if outlier_factor is not None and site != filter_site:
            settings[site]["outlier_site"] = infos[filter_site].get("hook_name", filter_site)
    check_same_everywhere({"settings": settings, "out_dirs": {site: str(paths[site]) for site in sites}},
                          "the harvest's settings (model, sites, text, sizes, cache directories)", world)
    # Process 0 writes: it checks every existing cache before creating any (so a refused call
    # leaves nothing behind) and tells the others where to start, or why it cannot.
    writers: dict[str, _SiteWriter] = {}
    start_at: object = None
    if world.is_main:
        try:
            for site in sites:
                _open_for_writing(paths[site], settings[site], create=False)
            writers = {
                site: _SiteWriter(site, paths[site], settings[site], n_tokens, shard_tokens, batch_size,
                                  context_size, torch_dtype)
                for site in sites
            }
        except (CacheError, OSError, ValueError) as err:
            start_at = err
        else:
            start_at = min((w.batch_start for w in writers.values() if not w.manifest["complete"]), default=None)
    start_at = broadcast_object(start_at, world)
    if isinstance(start_at, BaseException):
        raise start_at
    if start_at is None:  # every cache is complete
        return paths
    running = [w for w in writers.values() if not w.manifest["complete"]]
    first_position = 1 if exclude_first else 0

    def sites_for(start: int) -> list[str]:
        """The sites to compute for the batch at window ``start`` (none when no cache wants it)."""
        need = {w.site for w in running if w.wants(start)}
        if need and outlier_factor is not None:
            need.add(filter_site)
        return [site for site in sites if site in need]

    def compute(start: int, tokens: Tensor, need_sites: list[str]) -> tuple[dict[str, Tensor], Tensor | None]:
        """One batch's float32 rows at ``need_sites`` and, with the outlier filter, the rows to keep."""
        with torch.no_grad():
            computed = activation_fn(tokens, need_sites)
        rows = {site: _batch_rows(site, computed, tokens, start, first_position) for site in need_sites}
        keep = None
        if outlier_factor is not None:
            norms = rows[filter_site].norm(dim=1)
            keep = norms <= outlier_factor * norms.median()
        return rows, keep

    def slowest() -> int:
        return min(w.done_rows + w.buf_rows for w in running) if running else n_tokens

    names = ", ".join(str(w.manifest.get("hook_name") or w.site) for w in running) or ", ".join(sites)
    bar = tqdm(total=n_tokens, initial=slowest(), desc=f"harvest {names}", unit="tok", unit_scale=True,
               disable=not progress or not world.is_main)
    batches = _window_batches(windows, start_at, batch_size, context_size)
    computed = _computed_batches(batches, sites_for, compute, lambda: all(w.full for w in running), world)
    with contextlib.closing(computed), bar:
        for start, tokens, (rows, keep) in computed:
            n_win = len(tokens)
            pos = (torch.arange(start, start + n_win)[:, None] * context_size
                   + torch.arange(first_position, context_size)).reshape(-1)
            for w in running:
                if w.wants(start):
                    flat = rows[w.site]
                    w.add(tokens, start, flat if keep is None else flat[keep], pos if keep is None else pos[keep])
            bar.update(slowest() - bar.n)
    # Process 0 writes the last shards and the manifests; then the others learn that it is done
    # (or why not), so no process reads a cache before its manifest is complete.
    failure: Exception | None = None
    if world.is_main:
        try:
            for w in running:
                w.flush(final=True)
            for w in running:
                w.finish()
        except Exception as err:
            failure = err
    status = broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}", world)
    if failure is not None:
        raise failure
    if status is not None:
        raise RuntimeError(f"The harvest stopped in process 0: {status}")
    return paths


def _computed_batches(
    batches: Iterator[tuple[int, Tensor]],
    sites_for: Callable[[int], list[str]],
    compute: Callable[[int, Tensor, list[str]], tuple[dict[str, Tensor], Tensor | None]],
    done: Callable[[], bool],
    world: World,
) -> Iterator[tuple[int, Tensor, tuple[dict[str, Tensor], Tensor | None]]]:
    """``(start, tokens, compute(...))`` of every batch a cache still wants, in window order, on process 0.

    The processes take the batches in turns: of every ``world.size`` consecutive batches
    process ``r`` computes the ``r``-th and sends its rows to process 0, which yields them in
    order (the others yield nothing). Every process reads the same windows, so each batch holds
    the windows it holds in a single-process harvest. Process 0 decides before each round,
    from its caches' state (``done``, ``sites_for``), whether to go on and which sites each
    batch needs. A failure in any process stops all of them with its message.
    """
    try:
        while True:
            chunk = list(itertools.islice(batches, world.size))
            plan = None if (not world.is_main or done() or not chunk) else [sites_for(start) for start, _ in chunk]
            plan = broadcast_object(plan, world)
            if isinstance(plan, str):  # process 0 stopped: raise this process's own error, or its message
                raise RuntimeError(plan)
            if plan is None:
                return
            mine: object = None
            if world.rank < len(chunk) and plan[world.rank]:
                start, tokens = chunk[world.rank]
                try:
                    mine = compute(start, tokens, plan[world.rank])
                except Exception as err:  # process 0 learns of it, and stops every process
                    if not world.distributed:
                        raise
                    mine = err
            results = gather_objects(mine, world)
            if world.is_main:
                failed = [(rank, r) for rank, r in enumerate(results) if isinstance(r, BaseException)]
                if failed:
                    rank, err = failed[0]
                    raise err if rank == 0 else RuntimeError(f"Process {rank} of the harvest failed: {err}") from err
                for (start, tokens), result in zip(chunk, results, strict=False):
                    if result is not None:
                        yield start, tokens, result
            if len(chunk) < world.size:
                return
    except BaseException as err:
        if world.distributed and world.is_main:  # tell the others why, so none waits for ever
            broadcast_object(f"The harvest stopped in process 0: {type(err).__name__}: {err}", world)
        raise


def _batch_rows(site: str, computed: Mapping[str, Tensor], tokens: Tensor, start: int, first_position: int) -> Tensor:
    """One site's activations of a batch as float32 rows ``[windows * positions, d]`` on the CPU."""
    if site not in computed:
        raise ValueError(f"activation_fn returned no activations for the site {site!r}.")
    acts = computed[site]
    if acts.ndim != 3 or acts.shape[:2] != tokens.shape:
        raise ValueError(
            f"activation_fn returned shape {tuple(acts.shape)} at {site!r} for tokens {tuple(tokens.shape)}."
        )
    acts = acts[:, first_position:].float().cpu()
    flat = acts.reshape(-1, acts.shape[-1])
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(
            f"The model produced non-finite activations at {site!r} in windows {start}..{start + len(tokens) - 1}."
        )
    return flat


def _window_batches(
    windows: Iterable[Tensor], skip_windows: int, batch_size: int, context_size: int
) -> Iterator[tuple[int, Tensor]]:
    """``(index of the first window, [batch, context_size] tokens)``, from window ``skip_windows`` on."""
    batch, start = [], skip_windows
    for index, window in enumerate(windows):
        if index < skip_windows:
            continue
        if window.shape != (context_size,):
            raise ValueError(f"Token window {index} has shape {tuple(window.shape)}, expected ({context_size},).")
        batch.append(window)
        if len(batch) == batch_size:
            yield start, torch.stack(batch)
            batch, start = [], index + 1
    if batch:
        yield start, torch.stack(batch)


class _SiteWriter:
    """One cache directory being written: a row buffer, whole shards written atomically, and
    the manifest (rewritten after every shard) with the resume point."""

    def __init__(self, site: str, out: Path, settings: dict[str, Any], n_tokens: int, shard_tokens: int,
                 batch_size: int, context_size: int, torch_dtype: torch.dtype) -> None:
        self.site, self.out, self.n_tokens = site, out, n_tokens
        self.shard_tokens, self.batch_size, self.context_size = shard_tokens, batch_size, context_size
        self.torch_dtype = torch_dtype
        self.manifest = _open_for_writing(out, settings)
        self.done_rows = int(self.manifest["n_tokens"])
        # Resume at the start of the batch holding the first unwritten row, so every batch has
        # the same windows as in an uninterrupted run (bitwise-equal activations), and drop
        # the rows of that batch already written.
        self.batch_start = int(self.manifest["progress"]["batch_start"])
        self.skip_rows = int(self.manifest["progress"]["rows_written_of_batch"])
        self.written_by_batch: dict[int, int] = {self.batch_start: self.skip_rows}
        self.buf_acts: list[Tensor] = []
        self.buf_pos: list[Tensor] = []  # global flat index: window * context_size + position
        self.buf_rows = 0
        self.window_store: dict[int, Tensor] = {}

    @property
    def full(self) -> bool:
        return self.manifest["complete"] or self.done_rows + self.buf_rows >= self.n_tokens

    def wants(self, start: int) -> bool:
        """Whether this cache still needs the batch starting at window ``start``."""
        return not self.full and start >= self.batch_start

    def add(self, tokens: Tensor, start: int, flat: Tensor, pos: Tensor) -> None:
        """Append a batch's kept rows (float32 ``[n, d]``, their flat positions ``[n]``)."""
        d = flat.shape[1]
        if self.manifest["d_model"] is None:
            self.manifest["d_model"] = d
        elif self.manifest["d_model"] != d:
            raise CacheError(f"activation_fn returned width {d} at {self.site!r}, the cache in {self.out} "
                             f"holds width {self.manifest['d_model']}.")
        if self.skip_rows:
            flat, pos = flat[self.skip_rows:], pos[self.skip_rows:]
            self.skip_rows = 0
        room = self.n_tokens - self.done_rows - self.buf_rows
        flat, pos = flat[:room], pos[:room]
        stored = flat.to(self.torch_dtype)
        self._check_representable(stored, flat, pos)
        for i in range(len(tokens)):
            self.window_store[start + i] = tokens[i]
        self.buf_acts.append(stored)
        self.buf_pos.append(pos)
        self.buf_rows += len(stored)
        self.flush(final=False)

    def _check_representable(self, stored: Tensor, flat: Tensor, pos: Tensor) -> None:
        """Finiteness after the cast to the storage dtype: float16 overflows to inf above 65504."""
        finite = torch.isfinite(stored)
        if bool(finite.all()):
            return
        bad = (~finite).nonzero()[0]
        i, col = int(bad[0]), int(bad[1])
        row = self.done_rows + self.buf_rows + i
        window, position = divmod(int(pos[i]), self.context_size)
        name = dtype_name(self.torch_dtype)
        raise ValueError(
            f"{self.site!r}: activation row {row} of the cache (window {window}, position {position}, "
            f"column {col}) is {float(flat[i, col]):.6g}, which overflows to {float(stored[i, col])} in "
            f"{name} (largest finite {name}: {torch.finfo(self.torch_dtype).max:.6g}). Store this site with "
            f"dtype='bfloat16' (float32's range at half the size) or dtype='float32': delete {self.out} "
            "and harvest again."
        )

    def flush(self, final: bool) -> None:
        """Write every full shard in the buffer (with ``final``, the rest as a last, short one)."""
        manifest, context_size, batch_size = self.manifest, self.context_size, self.batch_size
        while self.buf_rows >= self.shard_tokens or (final and self.buf_rows > 0):
            acts, pos = torch.cat(self.buf_acts), torch.cat(self.buf_pos)
            take = min(self.shard_tokens, self.buf_rows)
            shard_acts, shard_pos = acts[:take], pos[:take]
            win = torch.div(shard_pos, context_size, rounding_mode="floor")
            first, last = int(win[0]), int(win[-1])
            token_ids = torch.stack([self.window_store[w] for w in range(first, last + 1)]).to(torch.int32)
            tensors = {
                "activations": shard_acts.contiguous(),
                "token_ids": token_ids,
                "positions": (shard_pos - first * context_size).contiguous(),
                "first_window": torch.tensor([first], dtype=torch.int64),
            }
            path = self.out / _shard_name(len(manifest["shards"]))
            atomic_write(path, lambda tmp, t=tensors: save_file(t, str(tmp)))
            self.done_rows += take
            manifest["shards"].append({"path": path.name, "sha256": sha256_file(path), "n_tokens": take})
            manifest["n_tokens"] = self.done_rows
            for start, count in zip(*torch.unique(win // batch_size * batch_size, return_counts=True), strict=True):
                self.written_by_batch[int(start)] = self.written_by_batch.get(int(start), 0) + int(count)
            # Resume point: the batch holding the first row not yet written.
            rest = pos[take:]
            next_window = int(rest[0]) // context_size if len(rest) else last + 1
            batch_start = next_window // batch_size * batch_size
            manifest["progress"] = {"batch_start": batch_start,
                                    "rows_written_of_batch": self.written_by_batch.get(batch_start, 0)}
            for key in [k for k in self.written_by_batch if k < batch_start]:
                del self.written_by_batch[key]
            manifest["complete"] = self.done_rows >= self.n_tokens
            atomic_write_json(self.out / MANIFEST, manifest)
            # Copy the few leftover rows: a view would keep the whole concatenated shard
            # buffer alive through the next fill (peak memory ~3 shards instead of ~2).
            self.buf_acts, self.buf_pos = [acts[take:].clone()], [rest.clone()]
            self.buf_rows -= take
            for w in [w for w in self.window_store if w < batch_start]:
                del self.window_store[w]

    def finish(self) -> None:
        """Mark a cache the text ran out for as complete, with a warning (an error when the text
        did not fill a single window: an empty "complete" cache would be useless)."""
        if self.manifest["complete"]:
            return
        if not self.manifest["shards"]:
            raise CacheError(
                f"The text ran out before one window of {self.context_size} tokens for the cache in {self.out}: "
                "nothing was harvested. Use a longer text (dataset=...) or a smaller context_size."
            )
        self.manifest["complete"] = True
        atomic_write_json(self.out / MANIFEST, self.manifest)
        warnings.warn(
            f"The text ran out after {self.manifest['n_tokens']:,} of {self.n_tokens:,} requested tokens; "
            f"the cache in {self.out} holds what there was.", stacklevel=4,
        )


def _open_for_writing(out: Path, settings: dict[str, Any], create: bool = True) -> dict[str, Any] | None:
    """The manifest of the cache in ``out`` (checked against ``settings``), or a new one.

    With ``create=False`` only check: return ``None`` where a new cache would be created.
    """
    path = out / MANIFEST
    if path.is_file():
        manifest = read_json(path, what="Activation cache manifest")
        if create:  # a harvest starts: drop the temporaries of one that was killed
            for tmp in [*out.glob(".shard_*.tmp"), *out.glob(f".{MANIFEST}.*.tmp")]:
                tmp.unlink()
        old = manifest.get("settings") or {}
        new = json.loads(json.dumps(settings))
        if old != new:
            diffs = [f"{k}: cache {old.get(k)!r}, now {new.get(k)!r}"
                     for k in [*new, *(k for k in old if k not in new)] if old.get(k) != new.get(k)]
            hint = (" The model has the same name but other weights or dtype than the one the cache was harvested "
                    "with." if "model_identity" in old and old.get("model_identity") != new.get("model_identity")
                    else "")
            raise CacheError(
                f"{out} holds an activation cache made with other settings ({'; '.join(diffs)}).{hint} "
                "Use another out_dir, or delete this one to harvest again."
            )
        check_shard_entries(manifest, out)
        listed = sum(int(shard["n_tokens"]) for shard in manifest["shards"])
        if manifest.get("n_tokens") != listed:
            raise CacheError(
                f"Manifest {path}: n_tokens is {manifest.get('n_tokens')!r}, but its shards hold {listed} rows. "
                f"The manifest was edited or damaged: delete {out} and harvest again."
            )
        for shard in manifest["shards"]:
            if not (out / shard["path"]).is_file():
                raise CacheError(
                    f"Shard {out / shard['path']} listed in {path} is missing; delete {out} and harvest again."
                )
        return manifest
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists, is not empty and has no {MANIFEST}; choose an empty or new directory.")
    if not create:
        return None
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "model": settings.get("model"),
        "hook_name": settings.get("hook_name"),
        "d_model": None,
        "n_tokens": 0,
        "context_size": settings.get("context_size"),
        "dtype": settings["dtype"],
        "shards": [],
        "complete": False,
        "progress": {"batch_start": 0, "rows_written_of_batch": 0},
        "settings": settings,
    }
    if "d_model" in settings:
        manifest["d_model"] = settings["d_model"]
    atomic_write_json(path, manifest)
    return manifest


class CacheSource:
    """Read an activation cache as an :class:`~sae_helpers.data.sources.ActivationSource`.

    Training batches come through a block shuffle: each epoch visits the shards in a
    seeded random order, ``buffer_tokens`` rows (whole shards) at a time, and each block's
    rows are permuted. Memory holds one block, never the cache, and batch ``t`` is a
    pure function of ``(seed, t)``, so resumed training sees the same data.

    Every reader (``batches``, ``in_order``, ``sample``, ``shard_activations``) hands out
    float32 rows whatever the storage ``dtype`` (a half-precision cache keeps its blocks in
    that dtype in memory and converts each batch).
    """

    def __init__(self, path: str | os.PathLike, buffer_tokens: int = 1 << 20, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest = read_json(self.path / MANIFEST, what="Activation cache manifest")
        missing = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if missing:
            raise CacheError(f"Manifest {self.path / MANIFEST} lacks {missing}; it is not an activation cache.")
        check_shard_entries(self.manifest, self.path)
        self.shards = self.manifest["shards"]
        if not self.shards:
            raise CacheError(f"The activation cache {self.path} holds no shards yet; run the harvest (again).")
        if not self.manifest.get("complete", True):
            warnings.warn(f"The activation cache {self.path} is incomplete (the harvest did not finish); "
                          "using the shards written so far.", stacklevel=2)
        self.d = int(self.manifest["d_model"])
        self.dtype = str(self.manifest["dtype"])  # the storage dtype; readers return float32
        self.n = sum(int(s["n_tokens"]) for s in self.shards)
        self.description = f"activation cache {self.path}"
        self.verify = verify
        self._verified: set[int] = set()
        self._finite: set[int] = set()  # shards checked for NaN/inf (once per process)
        self.shards_per_block = max(1, buffer_tokens // max(int(s["n_tokens"]) for s in self.shards))

    def fingerprint(self) -> str:
        """The sha256 of the shard list (names, checksums, row counts): the data, not its progress."""
        shards = [(s["path"], s["sha256"], int(s["n_tokens"])) for s in self.shards]
        digest = hashlib.sha256(json.dumps([self.d, self.dtype, shards]).encode()).hexdigest()
        return f"cache of {self.n} rows, shards-sha256 {digest[:16]}"

    @property
    def metadata(self) -> dict[str, Any]:
        """The manifest's model, site, context size and text as an SAE records them (``model_name``,
        ``hook_name``, ``context_size``, ``dataset_path``; those the manifest leaves empty are left out)."""
        from ..saelens_metadata import dataset_path_of

        known = {"model_name": self.manifest.get("model"), "hook_name": self.manifest.get("hook_name"),
                 "context_size": self.manifest.get("context_size"),
                 "dataset_path": dataset_path_of((self.manifest.get("settings") or {}).get("dataset"))}
        return {key: value for key, value in known.items() if value is not None}

    # ------------------------------------------------------------------ shards
    def load_shard(self, index: int) -> dict[str, Tensor]:
        """One shard's tensors, its checksum verified (once per process)."""
        entry = self.shards[index]
        file = self.path / entry["path"]
        if not file.is_file():
            raise CacheError(f"Shard {file} is missing; delete {self.path} and harvest again.")
        if index not in self._verified:
            self._check_size(file, entry)
        if self.verify and index not in self._verified:
            if sha256_file(file) != entry["sha256"]:
                raise CacheError(
                    f"Shard {file} is corrupted (its sha256 does not match {self.path / MANIFEST}). "
                    f"Delete {self.path} and harvest again."
                )
            self._verified.add(index)
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise CacheError(f"Shard {file} is unreadable ({err}); delete {self.path} and harvest again.") from err
        acts = tensors["activations"]
        if acts.ndim != 2 or acts.shape != (int(entry["n_tokens"]), self.d):
            raise CacheError(f"Shard {file} holds activations of shape {tuple(acts.shape)}, the manifest says "
                             f"({entry['n_tokens']}, {self.d}).")
        if index not in self._finite:
            self._check_finite(file, acts)
            self._finite.add(index)
        return tensors

    def _check_finite(self, file: Path, acts: Tensor) -> None:
        """Refuse a shard holding NaN or inf (e.g. float16 overflow in a cache written without the check),
        which would otherwise give an FVU of nan or a training run that "diverges"."""
        for start in range(0, acts.shape[0], 65536):
            finite = torch.isfinite(acts[start : start + 65536])
            if not bool(finite.all()):
                row, col = (int(v) for v in (~finite).nonzero()[0])
                value = float(acts[start + row, col])
                raise CacheError(
                    f"Shard {file} holds a non-finite activation ({value}) at row {start + row}, column {col}. "
                    f"The cache cannot be trained or evaluated on: delete {self.path} and harvest again (with "
                    "dtype='bfloat16' or 'float32' if the activations exceed float16's range of 65504)."
                )

    def _check_size(self, file: Path, entry: dict[str, Any]) -> None:
        """Compare the file with its safetensors header and the manifest before hashing or reading it,
        so a file that is not this shard (however large) is refused at once."""
        size = file.stat().st_size
        fault = None
        with open(file, "rb") as handle:
            head = handle.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or n > min(_MAX_HEADER, size - 8):
                fault = "it has no safetensors header"
            else:
                try:
                    header = json.loads(handle.read(n))
                    acts = header["activations"]
                    end = max(int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__")
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    fault = "its safetensors header is unreadable or has no 'activations' tensor"
                else:
                    want_shape = [int(entry["n_tokens"]), self.d]
                    want_dtype = _SAFETENSORS_DTYPES.get(self.dtype, acts.get("dtype"))
                    if acts.get("shape") != want_shape or acts.get("dtype") != want_dtype:
                        fault = (f"its activations are {acts.get('dtype')} {acts.get('shape')}, the manifest says "
                                 f"{want_dtype} {want_shape}")
                    elif size != 8 + n + end:
                        fault = f"it is {size:,} bytes, its header describes {8 + n + end:,}"
        if fault is not None:
            raise CacheError(f"Shard {file} does not match {self.path / MANIFEST}: {fault}. "
                             f"Delete {self.path} and harvest again.")

    def shard_activations(self, index: int) -> Tensor:
        return self.load_shard(index)["activations"].float()

    # ------------------------------------------------------------------ ActivationSource
    def _epoch_blocks(self, seed: int, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.shards), generator=gen).tolist()
        k = self.shards_per_block
        return [order[i : i + k] for i in range(0, len(order), k)]

    def _block_rows(self, seed: int, epoch: int, block_index: int, shards: list[int]) -> Tensor:
        rows = torch.cat([self.load_shard(i)["activations"] for i in shards])  # storage dtype
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7919 + block_index)
        return rows[torch.randperm(len(rows), generator=gen)]

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[Tensor]:
        skip = (start_step * batch_size) % self.n
        epoch = (start_step * batch_size) // self.n
        parts: list[Tensor] = []
        have = 0
        while True:
            for b, shards in enumerate(self._epoch_blocks(seed, epoch)):
                size = sum(int(self.shards[i]["n_tokens"]) for i in shards)
                if skip >= size:
                    skip -= size
                    continue
                rows = self._block_rows(seed, epoch, b, shards)[skip:]
                skip = 0
                while len(rows):
                    take = rows[: batch_size - have]
                    parts.append(take)
                    have += len(take)
                    rows = rows[len(take):]
                    if have == batch_size:
                        yield torch.cat(parts).float()
                        parts, have = [], 0
            epoch += 1

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        for index in range(len(self.shards)):
            yield from self.shard_activations(index).split(batch_size)

    def sample(self, n: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed + 7919)
        rows, got = [], 0
        for index in torch.randperm(len(self.shards), generator=gen).tolist():
            acts = self.shard_activations(index)
            rows.append(acts[torch.randperm(len(acts), generator=gen)[: n - got]])
            got += len(rows[-1])
            if got >= n:
                break
        return torch.cat(rows)

    # ------------------------------------------------------------------ contexts
    def tokens_of_rows(self, shard_index: int) -> tuple[Tensor, Tensor]:
        """``(token_ids [w, context_size], positions [n])`` of one shard: row ``i`` is the token at
        ``token_ids.view(-1)[positions[i]]``."""
        tensors = self.load_shard(shard_index)
        return tensors["token_ids"].long(), tensors["positions"]
