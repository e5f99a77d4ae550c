"""Reading an activation cache: :class:`CacheSource`, every shard checked against the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..._io import read_json, sha256_file
from .manifest import (
    _MAX_HEADER,
    _SAFETENSORS_DTYPES,
    MANIFEST,
    REQUIRED_KEYS,
    CacheError,
    check_shard_entries,
)


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
        from ...saelens_metadata import dataset_path_of

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
