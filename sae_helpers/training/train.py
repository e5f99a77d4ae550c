"""Training's entry points: :func:`train_sae` (one SAE) and :func:`train_saes` (many from one pass).

``train_saes`` feeds every batch to every configuration, so a sweep over sparsity
coefficients, widths and architectures costs one read of the activations (one
harvest, one pass over the cache) instead of one per SAE. Each run keeps its own
checkpoint; a rerun of the same sweep skips finished runs and resumes the others.
Both go through the one lifecycle of runs, :func:`~.lifecycle.train_runs`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .._io import atomic_write
from ..data.sources import as_source, data_fingerprint
from ..distributed import SINGLE, all_gather_objects, barrier, check_same_everywhere, process_group
from ..formats import load_sae
from ..reproducibility import resolve_device
from ..saes.base import SAE
from .checkpoint import SAE_SUBDIR
from .config import TrainConfig
from .lifecycle import train_runs
from .run import heldout_rows

if TYPE_CHECKING:
    import pandas as pd


class SweepResult(NamedTuple):
    """The trained SAEs (in configuration order) and one results row per SAE."""

    saes: list[SAE]
    results: pd.DataFrame


def run_snapshots(out_dir: str | os.PathLike, configs: Sequence[TrainConfig | dict[str, Any]],
                  saes: Sequence[SAE] | None = None) -> list[dict[int, SAE]]:
    """Each configuration's snapshots from ``train_saes(..., out_dir=out_dir, snapshots=...)``, by step
    (:func:`~.trainer.load_snapshots`); with the finished ``saes``, each run's final SAE at its last step."""
    from .lifecycle import load_snapshots

    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    out = [load_snapshots(Path(out_dir) / run_name(cfg)) for cfg in cfgs]
    for by_step, sae in zip(out, saes or [], strict=False):
        log = sae.training_log or []
        if log:
            by_step[int(log[-1]["step"])] = sae
    return out


def run_name(cfg: TrainConfig) -> str:
    """A readable, unique directory name for a configuration, e.g. ``gated-w1152-l1_2-<hash>``."""
    labels = {"l1_coefficient": "l1", "k": "k", "l0_coefficient": "l0"}
    sparsity = "".join(f"-{label}_{getattr(cfg, name):g}" for name, label in labels.items()
                       if getattr(cfg, name) is not None)
    return f"{cfg.arch}-w{cfg.width}{sparsity}-{cfg.fingerprint()[:8]}"


#: Seed stride between the widths of a family (see :func:`family_configs`).
FAMILY_SEED_STRIDE = 1_000


def family_configs(widths: Sequence[int], *, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """Configurations for a family of SAEs that differ only in width.

    Each width gets its own initialisation seed, ``seed + FAMILY_SEED_STRIDE * i`` for the
    ``i``-th width. With one seed for all, the initial decoder is drawn row by row from the
    same random stream, so the first latents of a wider SAE would *start* as copies of the
    narrower SAE's latents and stay close to them after a short run, inflating every
    cross-width comparison (decoder cosines, stitching classes, meta-SAE similarity).
    Train them in one pass with ``train_saes(..., data_seed=seed)`` so they still see the
    same batches in the same order.

    ``options`` are the other :class:`TrainConfig` fields, shared by every width.
    """
    if not widths or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be distinct and non-empty, got {list(widths)!r}.")
    return [{**options, "width": int(w), "seed": seed + FAMILY_SEED_STRIDE * i} for i, w in enumerate(widths)]


def train_saes(
    activations,
    configs: Sequence[TrainConfig | dict[str, Any]],
    *,
    out_dir: str | os.PathLike | None = None,
    eval_activations=None,
    results_csv: str | os.PathLike | None = None,
    data_seed: int | None = None,
    checkpoint_every: int | None = None,
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    parallel: str = "data",
    snapshots: Sequence[int] = (),
) -> SweepResult:
    """Train every configuration in ``configs`` in one pass over ``activations``.

    Parameters
    ----------
    activations : as for :func:`train_sae` (tensor, ``.safetensors`` file, cache directory,
        iterable).
    configs : :class:`TrainConfig` objects or dicts of its fields; all share ``batch_size``.
    out_dir : one subdirectory per run (named by :func:`run_name`) with its checkpoint,
        log and final SAE (``sae/``, SAELens layout). A rerun skips finished runs and
        resumes unfinished ones from their checkpoints; either is refused when the run was
        trained on other data or in another order (the fingerprint of all its rows and the
        data order, kept in the checkpoint and beside the finished SAE).
    eval_activations : if given, each run is evaluated during training on a fixed sample of
        them (:data:`~.config.HELDOUT_ROWS` rows; ``heldout_fvu`` and ``heldout_l0`` in its log,
        the curve ``plateau_tolerance`` judges), and each finished SAE on all of them
        (:func:`evaluate`): the metrics join its results row, with ``passes_health``
        (:func:`training_health`).
        Every row holds ``near_initial_fraction``, ``loss_plateau`` and ``fvu_plateau``
        (training health from the decoder and the training log) either way.
    results_csv : where to write the results table (atomically).
    data_seed : seed of the data order; default the first configuration's ``seed``. With
        equal seeds, each SAE equals :func:`train_sae` run alone on the same data (both go
        through :func:`~sae_helpers.training.lifecycle.train_runs`, and a run directory holds the
        same files either way).
    device, metadata, progress, checkpoint_every : as for :func:`train_sae`.
    snapshots : steps at which every run saves its SAE in its directory
        (:func:`~.trainer.load_snapshots`); needs ``out_dir``.
    parallel : how processes launched by ``torchrun`` share the work (one process: no
        difference). ``"data"``: every process trains every configuration on its share of each
        batch (:func:`~sae_helpers.training.lifecycle.train_runs`). ``"configs"``: process ``r`` of
        ``W`` trains configurations ``r, r + W, ...`` alone on the whole data (needs ``out_dir``;
        no communication during training) and evaluates them; every process then returns all
        SAEs and the whole table, which process 0 writes.
    """
    import pandas as pd

    from ..evaluation.metrics import evaluate
    from .health import training_health

    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    if not cfgs:
        raise ValueError("configs is empty: pass at least one training configuration.")
    names = [run_name(c) for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError("configs holds the same configuration twice.")
    device = resolve_device(device)
    source = as_source(activations)
    root = Path(out_dir) if out_dir is not None else None
    data_seed = cfgs[0].seed if data_seed is None else data_seed
    run_dirs = [root / name if root is not None else None for name in names]
    if parallel not in ("data", "configs"):
        raise ValueError(f"parallel must be 'data' or 'configs', got {parallel!r}.")
    if snapshots and root is None:
        raise ValueError("snapshots are saved in the runs' directories: pass out_dir=... as well.")
    heldout = heldout_rows(eval_activations)
    world = process_group(device)
    mine = range(world.rank, len(cfgs), world.size) if parallel == "configs" else range(len(cfgs))
    if parallel == "configs" and world.distributed:
        if root is None:
            raise ValueError("parallel='configs' needs an out_dir: each process saves its SAEs there for the others.")
        evaluation_data = data_fingerprint(as_source(eval_activations)) if eval_activations is not None else None
        check_same_everywhere((data_fingerprint(source), [c.fingerprint() for c in cfgs], data_seed, evaluation_data),
                              "the data, the configurations, the data order and the evaluation data", world)
        trained = train_runs(source, [cfgs[i] for i in mine], [run_dirs[i] for i in mine], data_seed=data_seed,
                             device=device, metadata=metadata, reuse_finished=True, checkpoint_every=checkpoint_every,
                             progress=progress, world=SINGLE, heldout=heldout, snapshots=snapshots)
    else:
        trained = train_runs(source, cfgs, run_dirs, data_seed=data_seed, device=device, metadata=metadata,
                             reuse_finished=True, checkpoint_every=checkpoint_every, progress=progress, heldout=heldout,
                             snapshots=snapshots)

    rows = {}
    for i, sae in zip(mine, trained, strict=True):
        cfg, name = cfgs[i], names[i]
        last = sae.training_log[-1] if sae.training_log else {}
        row = {"name": name, **cfg.to_dict(), **{f"train_{k}": last[k] for k in ("l0", "fvu", "loss") if k in last}}
        evaluation = evaluate(sae, eval_activations) if eval_activations is not None else None
        row.update(evaluation or {})
        health = training_health(sae, evaluation=evaluation)  # reuses the evaluation: no second pass
        row.update({k: health[k] for k in ("near_initial_fraction", "loss_plateau", "fvu_plateau")})
        if evaluation is not None:
            row["passes_health"] = health["passes"]
        rows[i] = row
    saes = trained
    if parallel == "configs" and world.distributed:  # gather the others' rows and SAEs
        rows = {i: row for part in all_gather_objects(rows, world) for i, row in part.items()}
        barrier(world)
        saes = [load_sae(run_dirs[i] / SAE_SUBDIR) for i in range(len(cfgs))]
    table = pd.DataFrame([rows[i] for i in range(len(cfgs))])
    if results_csv is not None and world.is_main:
        atomic_write(results_csv, lambda tmp: table.to_csv(tmp, index=False))
    return SweepResult(saes, table)


def train_sae(
    activations,
    arch: str,
    width: int,
    l1_coefficient: float | None = None,
    steps: int | None = None,
    *,
    k: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    heldout=None,
    snapshots: Sequence[int] = (),
    **options: Any,
) -> SAE:
    """Train one SAE and return it, ready for raw activations: ``train_saes`` with one configuration,
    kept in ``checkpoint_dir`` itself.

    Parameters
    ----------
    activations : a 2-D tensor ``[n, d]``, a ``.safetensors`` file holding one 2-D
        tensor named ``activations``, an activation cache directory, or an iterable of
        ``[batch, d]`` tensors.
    arch, width, l1_coefficient, steps, k, options : the :class:`TrainConfig` (each of its
        fields may be passed as a keyword: ``batch_size``, ``lr``, ``seed``, ``l0_coefficient``,
        ``sae_options`` ...; its defaults apply). ``steps`` is required; the sparsity setting is
        ``l1_coefficient`` for ``"relu"`` and ``"gated"``, ``k`` for ``"topk"`` and
        ``"batchtopk"``, ``l0_coefficient`` for ``"jumprelu"``. ``seed`` also sets the data order.
    checkpoint_dir : where to write atomic checkpoints (every ``checkpoint_every``
        steps, default ``steps // 10``, and at the end), the training log
        (``training_log.json``) and the final SAE (``sae/``).
    resume : continue from the checkpoint in ``checkpoint_dir``; the result equals an
        uninterrupted run. A finished run returns at once. The checkpoint records a
        fingerprint of the data (:meth:`ActivationSource.fingerprint`): resuming it on
        other activations, or without such a record, is an error. Without ``resume``, an
        existing checkpoint is an error.
    device : ``"cpu"``, ``"cuda"``...; default CUDA when available (``"cuda"`` without CUDA is an error).
    metadata : stored in the SAE's ``cfg.json`` (``model_name``, ``hook_name``, ``context_size``);
        an activation cache supplies the ones not given here.
    progress : show a progress bar with loss, L0 and dead fraction.
    heldout : held-out activations (anything ``activations`` accepts; up to :data:`HELDOUT_ROWS`
        rows are used) to evaluate on every ``eval_every`` steps; needed by ``plateau_tolerance``.
    snapshots : steps at which to save the SAE in ``checkpoint_dir/snapshots/`` (:func:`load_snapshots`).

    The returned SAE carries its :attr:`~SAE.provenance` (the configuration and the training
    log, also as ``sae.training_config`` and ``sae.training_log``); ``sae.save(path)`` stores it
    beside the weights and ``load_sae`` reads it back.
    """
    if steps is None:
        raise ValueError("train_sae needs steps=... (the number of optimiser steps).")
    cfg = TrainConfig.from_dict(
        {"arch": arch, "width": width, "steps": steps, "l1_coefficient": l1_coefficient, "k": k, **options}
    )
    device = resolve_device(device)
    source = as_source(activations)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if snapshots and ckpt is None:
        raise ValueError("snapshots are saved in the run's directory: pass checkpoint_dir=... as well.")
    (sae,) = train_runs(source, [cfg], [ckpt], data_seed=cfg.seed, device=device, metadata=metadata, resume=resume,
                        checkpoint_every=checkpoint_every, progress=progress, desc=f"{arch} SAE",
                        heldout=heldout_rows(heldout), snapshots=snapshots)
    return sae
