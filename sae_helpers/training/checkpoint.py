"""Atomic checkpoints of a training run, and exact resume.

``checkpoint_dir/checkpoint/`` holds ``state.safetensors`` (SAE parameters, Adam
moments, dead-latent counters, the resampling RNG state) and ``trainer.json`` (step,
configuration and its fingerprint, activation scale, training log). The directory is
built beside the old one and swapped in with a rename, so a crash at any moment
leaves the previous complete checkpoint (a crash between the two renames leaves it as
``.checkpoint.old``, which every reader moves back first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._io import atomic_replace_dir, clean_stale, read_json, recover_dir

CHECKPOINT_SUBDIR = "checkpoint"
STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
#: Beside ``checkpoint/`` in a run directory: the training log so far, and the final SAE once finished.
LOG_FILE = "training_log.json"
SAE_SUBDIR = "sae"


def write_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write tensors and JSON-able ``info`` as the checkpoint in ``directory``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def build(tmp: Path) -> None:
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / TRAINER_FILE).write_text(json.dumps(info, indent=1) + "\n")

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


def read_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and info of the checkpoint in ``directory``, with clear errors."""
    folder = recover_dir(Path(directory) / CHECKPOINT_SUBDIR)
    info = read_json(folder / TRAINER_FILE, what="Checkpoint file")
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"Checkpoint state {state_path} is missing; delete {folder} to start over.")
    try:
        tensors = load_file(str(state_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"Checkpoint state {state_path} is unreadable ({err}); delete {folder} to start over."
        ) from err
    return tensors, info
