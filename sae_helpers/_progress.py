"""The progress bar: a notebook widget where ipywidgets is installed, else plain text."""

from __future__ import annotations

try:  # tqdm.auto warns (into every executed notebook) when ipywidgets is missing
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm
except ImportError:
    from tqdm import tqdm

__all__ = ["tqdm"]
