"""Parameter dtypes by name: one table shared by SAEs, saved files, caches and model loading."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"`` (or a ``torch.dtype``) into a ``torch.dtype``, with a clear error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {sorted(DTYPES)}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``"float32"``) of a torch dtype."""
    return str(dtype).removeprefix("torch.")
