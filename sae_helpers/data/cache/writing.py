"""Writing activation caches: one pass over the token windows fills the cache of every site."""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..._dtypes import dtype_name, resolve_dtype
from ..._io import atomic_write, atomic_write_json, sha256_file
from ..._progress import tqdm
from ...distributed import SINGLE, World, broadcast_object, check_same_everywhere, gather_objects
from .manifest import MANIFEST, CacheError, _open_for_writing, _shard_name, check_count


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
