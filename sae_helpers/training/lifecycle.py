"""The lifecycle of training runs: open (fresh, resumed from a checkpoint, or finished) -> one pass
(:func:`~.loop.drive`) -> finish (the SAE saved with its provenance and a record of its data), with
checkpoints and snapshots in each run's directory.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import atomic_write_json, directory_lock, read_json, recover_dir
from ..data.sources import ActivationSource, data_fingerprint
from ..distributed import SINGLE, World, barrier, check_same_everywhere, process_group
from ..formats import TRAINING_CONFIG_FILENAME, load_sae, save_sae
from ..saes.base import SAE
from .checkpoint import (
    LOG_FILE,
    SAE_SUBDIR,
    clean_checkpoint_dir,
    has_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
    write_checkpoint,
)
from .config import EXECUTION_FIELDS, TrainConfig
from .loop import drive
from .run import TrainingRun, check_same_data, heldout_fingerprint

#: Subdirectory of a run directory holding its snapshots, one ``step_NNNNNNN/`` SAE each.
SNAPSHOT_SUBDIR = "snapshots"


def write_run(run_dir: Path, run: TrainingRun) -> None:
    """Checkpoint ``run`` in ``run_dir``: ``checkpoint/`` (atomic) and ``training_log.json`` (atomic)."""
    write_checkpoint(run_dir, *run.state())
    atomic_write_json(run_dir / LOG_FILE, run.log)


def open_run(
    cfg: TrainConfig, source: ActivationSource, device: torch.device, run_dir: Path | None,
    data: str | None, metadata: dict[str, Any] | None, resume: bool = True, world: World = SINGLE,
    data_seed: int | None = None, heldout: Tensor | None = None,
) -> TrainingRun:
    """``cfg``'s run: resumed from the checkpoint in ``run_dir`` (refused unless ``resume``), else
    started from a sample of ``source``; ``data`` is the source's fingerprint (``None`` without
    ``run_dir``), ``data_seed`` the order the run is fed in, ``heldout`` the rows it is evaluated on."""
    if run_dir is not None:
        if world.is_main:
            clean_checkpoint_dir(run_dir)
        barrier(world)
        if has_checkpoint(run_dir):
            if not resume:
                raise FileExistsError(
                    f"{run_dir} already holds a checkpoint. Pass resume=True to continue it, "
                    "or choose another checkpoint_dir (nothing was overwritten)."
                )
            tensors, info = read_checkpoint(run_dir)
            return TrainingRun.restore(cfg, source.d, tensors, info, device, where=f"checkpoint in {run_dir}",
                                       data=data, world=world, data_seed=data_seed, heldout=heldout)
    return TrainingRun.start(cfg, source.sample(cfg.init_sample_size, cfg.seed), device, metadata, data, world,
                             data_seed, heldout)


#: Beside a finished run's SAE: the fingerprint and order of the data it was trained on.
TRAINING_DATA = "training_data"


def finished_sae(run_dir: Path, cfg: TrainConfig, data: str | None, data_seed: int | None = None) -> SAE | None:
    """The run's saved SAE if it is finished with ``cfg``, after checking it was trained on ``data``
    in the order ``data_seed``: the record saved with the SAE (``sae/training_data.json``), else its
    checkpoint's. A run with neither is trained again (``None``)."""
    sae_dir = recover_dir(run_dir / SAE_SUBDIR)
    config_file = sae_dir / TRAINING_CONFIG_FILENAME
    saved = read_json(config_file, what="Training config") if config_file.is_file() else None
    if saved is None or {k: v for k, v in saved.items() if k not in EXECUTION_FIELDS} != cfg.to_dict():
        return None
    record = sae_dir / f"{TRAINING_DATA}.json"
    if record.is_file():
        info = read_json(record, what="Training data record")
    elif has_checkpoint(run_dir):
        info = read_checkpoint_info(run_dir)
    else:
        warnings.warn(f"The finished run in {run_dir} has no record of the data it was trained on ({record}, or "
                      "its checkpoint): training it again.", stacklevel=3)
        return None
    check_same_data(info, data, f"finished run in {run_dir}", data_seed=data_seed)
    return load_sae(sae_dir)  # with its provenance: this configuration and the saved log


def train_runs(
    source: ActivationSource,
    cfgs: Sequence[TrainConfig],
    run_dirs: Sequence[Path | None],
    *,
    data_seed: int,
    device: torch.device,
    metadata: dict[str, Any] | None = None,
    resume: bool = True,
    reuse_finished: bool = False,
    checkpoint_every: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    world: World | None = None,
    heldout: Tensor | None = None,
    snapshots: Sequence[int] = (),
) -> list[SAE]:
    """The lifecycle of training runs, one per configuration: open -> one pass -> finish.

    Each run with a directory (``run_dirs[i]``, else ``None``: nothing written) is resumed from
    its checkpoint there (refused unless ``resume``), or, with ``reuse_finished``, taken as the
    finished SAE saved there when that was trained with the same configuration on the same data.
    The others start afresh. :func:`drive` then feeds all of them the same batches (order
    ``data_seed``), checkpointing each (:func:`write_run`); each finished run's SAE (with its
    :class:`Provenance`) is saved to ``sae/`` in its directory. The SAEs' metadata is the
    source's (``model_name``, ``hook_name``, ``context_size`` of a cache), updated by ``metadata``.

    Under ``torchrun`` (:func:`~sae_helpers.distributed.process_group`, or ``world``) every
    process runs this with the same arguments and trains on its share of each batch; only
    process 0 writes files (each process returns the same SAEs, once process 0 has saved them).
    ``world=SINGLE`` trains in this process alone, whatever the launcher.

    ``heldout``: raw activations every run is evaluated on (see :class:`TrainingRun`).
    ``snapshots``: steps at which each run with a directory saves its SAE as it is then, to
    ``snapshots/step_NNNNNNN/`` (:func:`load_snapshots`); at constant learning rate a snapshot is
    what a shorter run would have given (:meth:`TrainConfig.truncated`).
    """
    world = process_group(device) if world is None else world
    with contextlib.ExitStack() as locks:
        if world.is_main:  # one training process per run directory
            for run_dir in dict.fromkeys(d for d in run_dirs if d is not None):
                locks.enter_context(directory_lock(
                    run_dir, "training an SAE", "Wait for it to finish, or train into another checkpoint_dir / "
                    "out_dir: two trainings in one directory would overwrite each other's checkpoints."))
        return _train_runs(source, cfgs, run_dirs, data_seed=data_seed, device=device, metadata=metadata,
                           resume=resume, reuse_finished=reuse_finished, checkpoint_every=checkpoint_every,
                           progress=progress, desc=desc, world=world, heldout=heldout, snapshots=snapshots)


def _train_runs(source: ActivationSource, cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path | None], *,
                data_seed: int, device: torch.device, metadata: dict[str, Any] | None, resume: bool,
                reuse_finished: bool, checkpoint_every: int | None, progress: bool, desc: str | None, world: World,
                heldout: Tensor | None, snapshots: Sequence[int]) -> list[SAE]:
    data = data_fingerprint(source) if world.distributed or any(d is not None for d in run_dirs) else None
    check_same_everywhere((data, [cfg.fingerprint() for cfg in cfgs], data_seed, heldout_fingerprint(heldout)),
                          "the data, the configurations, the data order and the held-out rows", world)
    if metadata is None or isinstance(metadata, Mapping):  # anything else: the SAE refuses it, clearly
        metadata = {**source.metadata, **(metadata or {})}
    saes: list[SAE | None] = [None] * len(cfgs)
    runs: list[TrainingRun] = []
    slots: list[int] = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        done = (finished_sae(run_dir, cfg, data, data_seed=data_seed)
                if reuse_finished and run_dir is not None else None)
        if done is not None:
            saes[i] = done
            continue
        runs.append(open_run(cfg, source, device, run_dir, data, metadata, resume, world, data_seed, heldout))
        slots.append(i)
    starts: list[str | int] = ["finished" if sae is not None else 0 for sae in saes]
    for run, slot in zip(runs, slots, strict=True):
        starts[slot] = run.step_count
    check_same_everywhere(starts, "where each run starts (finished, or the step its checkpoint resumes from); the "
                          "run directories must be on a filesystem every process shares", world)

    def checkpoint(index: int) -> None:
        run_dir = run_dirs[slots[index]]
        if run_dir is not None and world.is_main:
            write_run(run_dir, runs[index])

    def snapshot(index: int) -> None:
        run_dir = run_dirs[slots[index]]
        if run_dir is not None and world.is_main:
            save_sae(runs[index].final_sae(), snapshot_dir(run_dir, runs[index].step_count))

    opened_at = [run.step_count for run in runs]
    drive(runs, source, data_seed, checkpoint, checkpoint_every, progress, desc=desc or f"{len(runs)} SAEs, one pass",
          snapshot_steps=snapshots, on_snapshot=snapshot)
    for index, (run, slot) in enumerate(zip(runs, slots, strict=True)):
        run_dir = run_dirs[slot]
        writes = run_dir is not None and world.is_main
        if writes and run.step_count == opened_at[index]:
            write_run(run_dir, run)  # a run resumed finished
        sae = run.final_sae()
        if writes:
            save_sae(sae, run_dir / SAE_SUBDIR, **{TRAINING_DATA: {"data": data, "data_seed": data_seed}})
        saes[slot] = sae
    barrier(world)  # every process returns once the files are written
    return [sae for sae in saes if sae is not None]


def snapshot_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps its SAE as it was after ``step`` steps."""
    return Path(run_dir) / SNAPSHOT_SUBDIR / f"step_{int(step):07d}"


def load_snapshots(run_dir: str | os.PathLike) -> dict[int, SAE]:
    """A run directory's snapshots by step (in step order), each with its provenance (the
    configuration and the log up to that step); empty when it has none."""
    root = Path(run_dir) / SNAPSHOT_SUBDIR
    found = sorted((int(p.name.removeprefix("step_")), p) for p in root.glob("step_*")
                   if p.is_dir() and p.name.removeprefix("step_").isdigit()) if root.is_dir() else []
    return {step: load_sae(path) for step, path in found}
