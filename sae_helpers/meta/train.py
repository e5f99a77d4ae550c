"""Training a meta-SAE on a base SAE's decoder rows, and the same configuration on a null's rows."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..saes.base import SAE
from ..training.checkpoint import has_checkpoint, read_checkpoint
from ..training.config import TrainConfig
from ..training.train import train_sae
from .analysis import MetaSAEResult, analyze_meta_sae
from .config import DEFAULT_LR, MIN_STEPS, meta_config
from .nulls import NULL_SEED_OFFSET, decoder_directions, random_unit_rows


def _sha256(rows: Tensor) -> str:
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def train_meta_sae(
    sae: SAE | Tensor,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    min_steps: int = MIN_STEPS,
    null: bool = True,
    n_top: int = 10,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, MetaSAEResult]:
    """Train a BatchTopK meta-SAE on the unit-norm decoder rows of ``sae``, and its null.

    Parameters
    ----------
    sae : the base SAE (or its ``[d_sae, d_in]`` decoder rows).
    width : meta-latents; default the paper's ratio, ``round(3 * d_sae / 64)`` (2,304 for
        49,152; about ``d_sae / 21``; :func:`default_width`).
    k : active meta-latents per base latent, on average over a batch (paper: 4).
    epochs, min_steps : the run takes ``max(ceil(epochs * d_sae / batch_size), min_steps)``
        optimiser steps (:func:`meta_steps`). The paper's 2,000 epochs are 24,000 steps over
        its 49,152 rows, 2,250 over 4,608, and 2,000 over any base of at most 4,096 rows (one
        batch per epoch); ``min_steps`` (default :data:`MIN_STEPS`, 2,000) keeps fewer epochs
        of a small base from making a run of a few hundred steps. Pass ``min_steps=1`` for
        exactly ``epochs`` epochs.
    seed : initialisation and row order (the trainer gets ``SEED_OFFSET + seed``; see
        :func:`meta_config`), and the null's rows (:func:`random_unit_rows`).
    lr : Adam learning rate; default :data:`DEFAULT_LR` (1e-3). The paper's 1e-4 belongs to its
        24,000 steps: on 4,096 rows built from 64 planted atoms, 2,000 steps at 1e-4 recover the
        atoms at a mean max cosine of 0.87 with the loss still falling, 1e-3 converges within
        1,000 steps at 0.92-0.99 (``bench/meta_defaults.py``; the Methods page has the tables).
    batch_size : rows per step (paper: 4,096); a batch larger than ``d_sae`` is cut to
        ``d_sae`` rows. Batches are cut from the endless sequence of epochs, so the last batch
        of an epoch may continue into the next.
    null : also train the same configuration on ``d_sae`` random unit rows of the same width
        (:func:`random_unit_rows` with ``seed``) and report its FVE as ``result.fve_null``
        (the FVE a meta-SAE of this size reaches on rows without shared structure). It doubles
        the training time; ``null=False`` skips it (``fve_null`` is then NaN).
    n_top : base latents kept per meta-latent in ``result.top_base_latents``.
    checkpoint_dir : as for :func:`train_sae`: checkpoints, log and the final SAE go there,
        and a rerun resumes (or returns the finished run at once); the null's go to
        ``checkpoint_dir / "null"`` (:func:`train_null_meta_sae`). The checkpoint records a
        hash of the rows; another base SAE in the same directory is an error.
    device, progress : as for :func:`train_sae`.
    options : further :class:`~sae_helpers.TrainConfig` fields; they override the
        defaults of this module (``normalize_activations=False``, ``adam_beta1=0.9``,
        ``dead_after`` = one epoch, ``sae_options={"threshold_rate": threshold_rate(steps)}``).
        The null gets the same.

    Returns
    -------
    (meta_sae, result)
        The trained meta-SAE (inference form: a JumpReLU SAE with the BatchTopK threshold)
        and its :class:`MetaSAEResult` on the rows, with ``fve_null``.
    """
    rows = decoder_directions(sae)
    n = rows.shape[0]
    cfg = meta_config(n, width, k, epochs, seed, lr, batch_size, min_steps=min_steps, **options)
    base_metadata = dict(sae.metadata) if isinstance(sae, SAE) else {}
    metadata = {
        "model_name": base_metadata.get("model_name"),
        "hook_name": None,  # inputs are decoder directions, not activations at a site
        "context_size": None,
        "meta_sae": {"base_d_sae": n, "base_metadata": base_metadata, "epochs": epochs, "k": k},
    }
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = _train_on_rows(rows, cfg, metadata, ckpt, device, progress)
    result = analyze_meta_sae(meta, sae, n_top=n_top)
    if null:
        _, fve_null = train_null_meta_sae(
            n, rows.shape[1], width, k, epochs, seed, lr, batch_size, min_steps=min_steps,
            checkpoint_dir=None if ckpt is None else ckpt / "null", device=device, progress=progress, **options)
        result = result._replace(fve_null=fve_null)
    return meta, result


def train_null_meta_sae(
    n_rows: int,
    d_in: int,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    null: str = "random",
    rows: Tensor | None = None,
    min_steps: int = MIN_STEPS,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, float]:
    """A null of :func:`train_meta_sae`: the same meta-SAE configuration (``meta_config``
    of ``n_rows`` rows with these arguments) trained on ``n_rows`` null rows of width ``d_in``.

    By default the null is ``"random"``: ``random_unit_rows(n_rows, d_in, seed)``, drawn here.
    Otherwise ``rows`` are the null's rows (``[n_rows, d_in]``, unit norm, used as they are), and
    ``null`` names them; the nulls that depend on the base SAE come from :func:`null_rows`, e.g.
    ``null="covariance", rows=null_rows(base, "covariance", seed)``. The name is kept in the
    meta-SAE's metadata (``meta_sae.null_kind``).

    Returns the null meta-SAE and its FVE on those rows (:func:`analyze_meta_sae`).
    ``train_meta_sae(..., checkpoint_dir=D)`` keeps the random null in ``D / "null"``; calling this
    with that directory and the same arguments returns the finished run at once. A checkpoint
    directory of other rows (another null, seed or base) is refused.
    """
    if rows is None:
        if null != "random":
            raise ValueError(f"The {null!r} null depends on the base SAE: pass its rows, "
                             f"rows=null_rows(base, {null!r}, seed).")
        rows = random_unit_rows(n_rows, d_in, seed)
        seeds = {"null_seed": NULL_SEED_OFFSET + seed}
    else:
        rows = rows.detach().to("cpu", torch.float32)
        if tuple(rows.shape) != (n_rows, d_in):
            raise ValueError(f"The null's rows have shape {tuple(rows.shape)}; expected [n_rows, d_in] = "
                             f"[{n_rows}, {d_in}].")
        if not torch.allclose(rows.norm(dim=1), torch.ones(n_rows), rtol=0, atol=1e-4):
            raise ValueError("The null's rows must have unit norm, like the decoder rows the meta-SAE is trained on "
                             "(scale them with decoder_directions).")
        seeds = {}
    cfg = meta_config(n_rows, width, k, epochs, seed, lr, batch_size, min_steps=min_steps, **options)
    metadata = {"model_name": None, "hook_name": None, "context_size": None,
                "meta_sae": {"base_d_sae": n_rows, "null": True, "null_kind": null, **seeds,
                             "epochs": epochs, "k": k}}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = _train_on_rows(rows, cfg, metadata, ckpt, device, progress, desc="null meta-SAE")
    return meta, analyze_meta_sae(meta, rows, n_top=0).fve


def _train_on_rows(
    rows: Tensor, cfg: TrainConfig, metadata: dict[str, Any], ckpt: Path | None,
    device: str | torch.device | None, progress: bool, desc: str = "meta-SAE",
) -> SAE:
    """``train_sae`` on ``rows`` with ``cfg``; the rows' hash goes into the metadata, and a
    checkpoint of other rows in ``ckpt`` is refused."""
    digest = _sha256(rows)
    metadata = {**metadata, "meta_sae": {**metadata["meta_sae"], "decoder_sha256": digest}}
    if ckpt is not None and has_checkpoint(ckpt):
        _, info = read_checkpoint(ckpt)
        saved = (info.get("metadata") or {}).get("meta_sae", {}).get("decoder_sha256")
        if saved != digest:
            raise ValueError(
                f"{ckpt} holds a {desc} checkpoint trained on other decoder rows (another base SAE). "
                "Use a checkpoint_dir per base SAE, or delete this one to start over."
            )
    # The rows are the whole data set: its curve on them is the plateau the health checks read.
    return train_sae(rows, **cfg.to_dict(), checkpoint_dir=ckpt, resume=ckpt is not None, device=device,
                     metadata=metadata, progress=progress, heldout=rows)
