"""An activation cache on disk: fixed-size shards, the token ids beside them, a manifest.

Layout of a cache directory::

    manifest.json             model, hook_name, d_model, n_tokens, context_size, dtype,
                              shards [{path, sha256, n_tokens}], settings, progress
    shard_00000.safetensors   activations [n, d]; token_ids [w, context_size] (the windows
                              its rows come from); positions [n] (row -> w * context_size + pos)
                              first_window [1] (global index of token_ids[0])

Every shard holds exactly ``shard_tokens`` rows (the last one may hold fewer). Each file
is written atomically and the manifest is rewritten after every shard, so a killed
harvest resumes from its last shard. Readers verify each shard's sha256 before using it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._io import atomic_write, atomic_write_json, read_json, sha256_file
from .._progress import tqdm
from ..saes.base import resolve_dtype

MANIFEST = "manifest.json"
FORMAT = "sae_helpers.activation_cache/1"
REQUIRED_KEYS = ("model", "hook_name", "d_model", "n_tokens", "context_size", "dtype", "shards")


class CacheError(ValueError):
    """A cache directory that cannot be used as it is."""


def is_cache_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


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
    whose norm exceeds that multiple of the batch's median norm.
    """
    out = Path(out_dir)
    if n_tokens <= 0 or shard_tokens <= 0 or batch_size <= 0:
        raise ValueError("n_tokens, shard_tokens and batch_size must be positive.")
    settings = {
        **info, "n_tokens_requested": n_tokens, "shard_tokens": shard_tokens, "dtype": dtype,
        "exclude_first": exclude_first, "outlier_factor": outlier_factor, "batch_size": batch_size,
    }
    torch_dtype = resolve_dtype(dtype)
    manifest = _open_for_writing(out, settings)
    if manifest["complete"]:
        return out
    done_rows = manifest["n_tokens"]
    # Resume at the start of the batch holding the first unwritten row, so every batch has
    # the same windows as in an uninterrupted run (bitwise-equal activations), and drop
    # the rows of that batch already written.
    skip_windows = manifest["progress"]["batch_start"]
    skip_rows_of_next = manifest["progress"]["rows_written_of_batch"]
    written_by_batch: dict[int, int] = {skip_windows: skip_rows_of_next}

    buf_acts: list[Tensor] = []
    buf_pos: list[Tensor] = []  # global flat index: window * context_size + position
    buf_rows = 0
    window_store: dict[int, Tensor] = {}
    context_size = int(info["context_size"])
    bar = tqdm(total=n_tokens, initial=done_rows, desc=f"harvest {info.get('hook_name', '')}",
               unit="tok", unit_scale=True, disable=not progress)

    def flush(final: bool) -> None:
        nonlocal buf_acts, buf_pos, buf_rows, done_rows
        while buf_rows >= shard_tokens or (final and buf_rows > 0):
            acts, pos = torch.cat(buf_acts), torch.cat(buf_pos)
            take = min(shard_tokens, buf_rows)
            shard_acts, shard_pos = acts[:take], pos[:take]
            win = torch.div(shard_pos, context_size, rounding_mode="floor")
            first, last = int(win[0]), int(win[-1])
            token_ids = torch.stack([window_store[w] for w in range(first, last + 1)]).to(torch.int32)
            tensors = {
                "activations": shard_acts.to(torch_dtype).contiguous(),
                "token_ids": token_ids,
                "positions": (shard_pos - first * context_size).contiguous(),
                "first_window": torch.tensor([first], dtype=torch.int64),
            }
            index = len(manifest["shards"])
            path = out / _shard_name(index)
            atomic_write(path, lambda tmp, t=tensors: save_file(t, str(tmp)))
            done_rows += take
            manifest["shards"].append({"path": path.name, "sha256": sha256_file(path), "n_tokens": take})
            manifest["n_tokens"] = done_rows
            for start, count in zip(*torch.unique(win // batch_size * batch_size, return_counts=True), strict=True):
                written_by_batch[int(start)] = written_by_batch.get(int(start), 0) + int(count)
            # Resume point: the batch holding the first row not yet written.
            rest = pos[take:]
            next_window = int(rest[0]) // context_size if len(rest) else last + 1
            batch_start = next_window // batch_size * batch_size
            manifest["progress"] = {"batch_start": batch_start,
                                    "rows_written_of_batch": written_by_batch.get(batch_start, 0)}
            for key in [k for k in written_by_batch if k < batch_start]:
                del written_by_batch[key]
            manifest["complete"] = done_rows >= n_tokens
            atomic_write_json(out / MANIFEST, manifest)
            # Copy the few leftover rows: a view would keep the whole concatenated shard
            # buffer alive through the next fill (peak memory ~3 shards instead of ~2).
            buf_acts, buf_pos = [acts[take:].clone()], [rest.clone()]
            buf_rows -= take
            for w in [w for w in window_store if w < batch_start]:
                del window_store[w]

    def batches() -> Iterator[tuple[int, Tensor]]:
        batch, start = [], skip_windows
        for index, window in enumerate(windows):
            if index < skip_windows:
                continue
            if window.shape != (context_size,):
                raise ValueError(
                    f"Token window {index} has shape {tuple(window.shape)}, expected ({context_size},)."
                )
            batch.append(window)
            if len(batch) == batch_size:
                yield start, torch.stack(batch)
                batch, start = [], index + 1
        if batch:
            yield start, torch.stack(batch)

    first_position = 1 if exclude_first else 0
    try:
        for start, tokens in batches():
            if done_rows + buf_rows >= n_tokens:
                break
            with torch.no_grad():
                acts = activation_fn(tokens)
            if acts.ndim != 3 or acts.shape[:2] != tokens.shape:
                raise ValueError(
                    f"activation_fn returned shape {tuple(acts.shape)} for tokens {tuple(tokens.shape)}."
                )
            acts = acts[:, first_position:].float().cpu()
            n_win, n_pos, d = acts.shape
            if manifest["d_model"] is None:
                manifest["d_model"] = d
            elif manifest["d_model"] != d:
                raise CacheError(f"activation_fn returned width {d}, the cache holds width {manifest['d_model']}.")
            windows_idx = torch.arange(start, start + n_win)
            pos = (windows_idx[:, None] * context_size + torch.arange(first_position, context_size)).reshape(-1)
            flat = acts.reshape(-1, d)
            if not bool(torch.isfinite(flat).all()):
                raise ValueError(
                    f"The model produced non-finite activations in windows {start}..{start + n_win - 1}."
                )
            if outlier_factor is not None:
                norms = flat.norm(dim=1)
                keep = norms <= outlier_factor * norms.median()
                flat, pos = flat[keep], pos[keep]
            if skip_rows_of_next:
                flat, pos = flat[skip_rows_of_next:], pos[skip_rows_of_next:]
                skip_rows_of_next = 0
            room = n_tokens - done_rows - buf_rows
            flat, pos = flat[:room], pos[:room]
            for i in range(n_win):
                window_store[start + i] = tokens[i]
            buf_acts.append(flat)
            buf_pos.append(pos)
            buf_rows += len(flat)
            bar.update(len(flat))
            flush(final=False)
        flush(final=True)
    finally:
        bar.close()
    if not manifest["complete"]:
        manifest["complete"] = True
        atomic_write_json(out / MANIFEST, manifest)
        warnings.warn(
            f"The text ran out after {manifest['n_tokens']:,} of {n_tokens:,} requested tokens; "
            f"the cache in {out} holds what there was.", stacklevel=2,
        )
    return out


def _open_for_writing(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.is_file():
        manifest = read_json(path, what="Activation cache manifest")
        if manifest.get("settings") != json.loads(json.dumps(settings)):
            old = manifest.get("settings", {})
            diffs = [f"{k}: cache {old.get(k)!r}, now {v!r}" for k, v in settings.items() if old.get(k) != v]
            raise CacheError(
                f"{out} holds an activation cache made with other settings ({'; '.join(diffs)}). "
                "Use another out_dir, or delete this one to harvest again."
            )
        for shard in manifest["shards"]:
            if not (out / shard["path"]).is_file():
                raise CacheError(
                    f"Shard {out / shard['path']} listed in {path} is missing; delete {out} and harvest again."
                )
        return manifest
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists, is not empty and has no {MANIFEST}; choose an empty or new directory.")
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
    """

    def __init__(self, path: str | os.PathLike, buffer_tokens: int = 1 << 20, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest = read_json(self.path / MANIFEST, what="Activation cache manifest")
        missing = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if missing:
            raise CacheError(f"Manifest {self.path / MANIFEST} lacks {missing}; it is not an activation cache.")
        self.shards = self.manifest["shards"]
        if not self.shards:
            raise CacheError(f"The activation cache {self.path} holds no shards yet; run the harvest (again).")
        if not self.manifest.get("complete", True):
            warnings.warn(f"The activation cache {self.path} is incomplete (the harvest did not finish); "
                          "using the shards written so far.", stacklevel=2)
        self.d = int(self.manifest["d_model"])
        self.n = sum(int(s["n_tokens"]) for s in self.shards)
        self.description = f"activation cache {self.path}"
        self.verify = verify
        self._verified: set[int] = set()
        self.shards_per_block = max(1, buffer_tokens // max(int(s["n_tokens"]) for s in self.shards))

    # ------------------------------------------------------------------ shards
    def load_shard(self, index: int) -> dict[str, Tensor]:
        """One shard's tensors, its checksum verified (once per process)."""
        entry = self.shards[index]
        file = self.path / entry["path"]
        if not file.is_file():
            raise CacheError(f"Shard {file} is missing; delete {self.path} and harvest again.")
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
        return tensors

    def shard_activations(self, index: int) -> Tensor:
        return self.load_shard(index)["activations"].float()

    # ------------------------------------------------------------------ ActivationSource
    def _epoch_blocks(self, seed: int, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.shards), generator=gen).tolist()
        k = self.shards_per_block
        return [order[i : i + k] for i in range(0, len(order), k)]

    def _block_rows(self, seed: int, epoch: int, block_index: int, shards: list[int]) -> Tensor:
        rows = torch.cat([self.shard_activations(i) for i in shards])
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
                        yield torch.cat(parts)
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
