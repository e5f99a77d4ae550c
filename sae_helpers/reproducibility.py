"""Seeds and the record of versions and parameters each executed notebook prints."""

from __future__ import annotations

import platform
import random
from importlib import metadata
from typing import Any

import numpy as np
import torch

REPORTED_PACKAGES = ("torch", "numpy", "transformer-lens", "transformers", "datasets", "matplotlib", "seaborn")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    if parameters:
        report["parameters"] = dict(parameters)
    return report
