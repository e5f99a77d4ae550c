"""Atomic checkpoints of a training run, and exact resume.

``checkpoint_dir/checkpoint/`` holds ``state.safetensors`` (SAE parameters, Adam
moments, dead-latent counters, the resampling RNG state) and ``trainer.json`` (step,
configuration and its fingerprint, activation scale, training log). The state file's
metadata carries the sha256 of ``trainer.json``: a ``trainer.json`` edited by hand (its
activation scale, say) or taken from another checkpoint is refused. The directory is
built beside the old one and swapped in with a rename, so a crash at any moment
leaves the previous complete checkpoint (a crash between the two renames leaves it as
``.checkpoint.old``, which every reader moves back first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .._io import atomic_replace_dir, clean_stale, parse_json, recover_dir, save_tensors

CHECKPOINT_SUBDIR = "checkpoint"
STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
#: Beside ``checkpoint/`` in a run directory: the training log so far, and the final SAE once finished.
LOG_FILE = "training_log.json"
SAE_SUBDIR = "sae"
#: The key of ``state.safetensors``' metadata holding the sha256 of ``trainer.json``.
TRAINER_SHA256 = "trainer_sha256"


def write_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write tensors and JSON-able ``info`` as the checkpoint in ``directory``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    text = (json.dumps(info, indent=1) + "\n").encode()

    def build(tmp: Path) -> None:
        save_tensors(tensors, tmp / STATE_FILE, metadata={TRAINER_SHA256: hashlib.sha256(text).hexdigest()})
        (tmp / TRAINER_FILE).write_bytes(text)

    return atomic_replace_dir(Path(directory) / CHECKPOINT_SUBDIR, build)


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint (recovering one a crashed swap left aside)."""
    return (recover_dir(Path(directory) / CHECKPOINT_SUBDIR) / TRAINER_FILE).is_file()


def clean_checkpoint_dir(directory: str | Path) -> None:
    """Recover the newest complete checkpoint and delete what crashed writes left behind
    (``.checkpoint.old``, ``.checkpoint.*.tmp``, the same for ``sae/``, and
    ``.training_log.json.*.tmp``). Called when a run starts or resumes."""
    directory = Path(directory)
    clean_stale(directory / CHECKPOINT_SUBDIR)
    clean_stale(directory / SAE_SUBDIR)  # the final SAE is swapped in the same way
    if directory.is_dir():
        for tmp in directory.glob(f".{LOG_FILE}.*.tmp"):
            tmp.unlink()


def read_checkpoint_info(directory: str | Path) -> dict[str, Any]:
    """The info (``trainer.json``) of the checkpoint in ``directory``, checked against the sha256
    its state file records, without reading any tensor."""
    folder = recover_dir(Path(directory) / CHECKPOINT_SUBDIR)
    trainer_path, state_path = folder / TRAINER_FILE, folder / STATE_FILE
    if not trainer_path.is_file():
        raise FileNotFoundError(f"Checkpoint file {trainer_path} is missing; delete {folder} to start over.")
    if not state_path.is_file():
        raise FileNotFoundError(f"Checkpoint state {state_path} is missing; delete {folder} to start over.")
    text = trainer_path.read_bytes()
    try:
        with safe_open(str(state_path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(TRAINER_SHA256)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"Checkpoint state {state_path} is unreadable ({err}); delete {folder} to start "
                         "over.") from err
    if recorded is None:
        raise ValueError(f"Checkpoint state {state_path} records no checksum of {trainer_path} (written by another "
                         f"version of sae_helpers, or by hand), so the two cannot be trusted together. Delete {folder} "
                         "to start over.")
    if recorded != hashlib.sha256(text).hexdigest():
        raise ValueError(
            f"Checkpoint file {trainer_path} is not the one written with {state_path} (edited by hand, or from "
            f"another checkpoint): resuming from it would train with settings that never produced this state. "
            f"Delete {folder} to start over."
        )
    return parse_json(text, trainer_path, what="Checkpoint file")


def read_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and info of the checkpoint in ``directory`` (:func:`read_checkpoint_info`), with clear errors."""
    info = read_checkpoint_info(directory)
    folder = recover_dir(Path(directory) / CHECKPOINT_SUBDIR)
    state_path = folder / STATE_FILE
    try:
        tensors = load_file(str(state_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"Checkpoint state {state_path} is unreadable ({err}); delete {folder} to start over."
        ) from err
    return tensors, info
