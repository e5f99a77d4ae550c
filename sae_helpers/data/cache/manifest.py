"""The activation cache's manifest: its names and checks, and opening a cache directory for writing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..._io import atomic_write_json, read_json

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
