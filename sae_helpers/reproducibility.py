"""Seeds, the device, and the record of versions and parameters each executed notebook prints.

The device: :func:`select_device` turns a notebook's ``device`` parameter (``"auto"``,
``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...) into a ``torch.device``; :func:`set_default_device`
makes it the process-wide default that training and model loading use when they are given
no device (a chapter's setup sets it, so one parameter places both models and SAEs).
"""

from __future__ import annotations

import platform
import random
from importlib import metadata
from typing import Any

import numpy as np
import torch

_default_device: torch.device | None = None

REPORTED_PACKAGES = ("torch", "numpy", "transformer-lens", "transformers", "datasets", "matplotlib", "seaborn")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``device`` as a ``torch.device``: ``"auto"`` or ``None`` give CUDA when available, else the
    CPU; a device this machine lacks is an error saying what to pass instead."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device: pass 'cpu', 'cuda', 'cuda:1'... or 'auto'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available here: pass device='cpu', or 'auto' to use "
                         "CUDA only when there is one.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}, but there are only {torch.cuda.device_count()} CUDA device(s).")
    return resolved


def set_default_device(device: str | torch.device | None) -> torch.device:
    """Make :func:`select_device` of ``device`` the default of :func:`default_device` (``None``:
    back to automatic); returns the device."""
    global _default_device
    _default_device = None if device is None else select_device(device)
    return default_device()


def default_device() -> torch.device:
    """The device set by :func:`set_default_device`, else CUDA when available, else the CPU."""
    return _default_device if _default_device is not None else select_device("auto")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` gives :func:`default_device`."""
    return default_device() if device is None else select_device(device)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report(parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, device and the given notebook parameters, as one dict to display."""
    from . import __version__

    report: dict[str, Any] = {
        "sae_helpers": __version__,
        "python": platform.python_version(),
        **{name: _version(name) for name in REPORTED_PACKAGES},
        "device": str(default_device()),
        "torch_threads": torch.get_num_threads(),
    }
    if parameters:
        report["parameters"] = dict(parameters)
    return report
