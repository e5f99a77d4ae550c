"""Activations at a TransformerLens hook, with the forward pass stopped right after it.

Sites are named as in TransformerLens: ``blocks.6.hook_resid_post``,
``blocks.6.hook_mlp_out``, ``blocks.6.attn.hook_z`` ... (``hook_names(model)`` lists
them). A site gives one vector per token: per-head activations ``[batch, pos, n_heads,
d_head]`` (``attn.hook_z``, ``hook_q`` ...) are flattened to ``[batch, pos, n_heads *
d_head]``, as SAELens does for ``hook_z`` SAEs.

Early stopping: a hook on the site stores the activation and raises a private
exception, which unwinds the rest of the forward pass (TransformerLens removes the
hook on the way out). This stops *right after* the site, also inside a block, where
the bridge's ``stop_at_layer`` only stops at block boundaries. With several sites
(:func:`activations_at_sites`) the pass stops right after the last of them to fire, i.e.
after the deepest one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

#: Hook names whose activations are not one vector per token (attention patterns ...).
_NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once the wanted activation is stored."""


def hook_names(model: Any) -> list[str]:
    """Every hook name of ``model`` (canonical names and their TransformerLens aliases)."""
    return sorted(model.hook_dict)


def layer_of(hook_name: str) -> int | None:
    """The block index in ``blocks.<i>.…``, or ``None`` for hooks outside the blocks."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def check_hook_name(model: Any, hook_name: str) -> str:
    """Return ``hook_name`` if ``model`` has it, else raise a ``ValueError`` that lists
    similar valid names."""
    if not isinstance(hook_name, str):
        raise TypeError(f"hook_name must be a string such as 'blocks.6.hook_resid_post', got {hook_name!r}.")
    names = model.hook_dict
    if hook_name in names:
        if hook_name.endswith(_NOT_PER_TOKEN):
            raise ValueError(
                f"{hook_name!r} does not give one activation vector per token (attention patterns are "
                "[batch, head, query, key]). Use a per-token site such as 'blocks.6.hook_resid_post', "
                "'blocks.6.hook_mlp_out' or 'blocks.6.attn.hook_z'."
            )
        return hook_name
    similar = difflib.get_close_matches(hook_name, list(names), n=6, cutoff=0.6)
    layer = layer_of(hook_name)
    n_layers = model.cfg.n_layers
    hint = ""
    if layer is not None and layer >= n_layers:
        hint = f" The model has {n_layers} blocks, numbered 0 to {n_layers - 1}."
    suggestions = ", ".join(map(repr, similar)) if similar else "'blocks.0.hook_resid_post'"
    raise ValueError(
        f"Unknown hook name {hook_name!r}.{hint} Similar valid names: {suggestions}. "
        "See sae_helpers.models.hook_names(model) for all of them."
    )


def as_tokens(model: Any, tokens: Any) -> Tensor:
    """``tokens`` as a ``[batch, pos]`` integer tensor on the model's device.

    Strings are refused: the bridge would prepend a BOS token to them (see
    :mod:`sae_helpers.models.loading`); tokenise first and pass the ids.
    """
    if isinstance(tokens, (str, list)) and (isinstance(tokens, str) or any(isinstance(t, str) for t in tokens)):
        raise TypeError(
            "Pass token ids, not strings: from a string the bridge prepends a BOS token of its own. "
            "Tokenise first, e.g. model.tokenizer(text, add_special_tokens=False)['input_ids'], and put the "
            "BOS you want at position 0 yourself."
        )
    tokens = torch.as_tensor(tokens)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"Token ids must be integers, got a tensor of dtype {tokens.dtype}.")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"Token ids must have shape [batch, pos] (or [pos]), got {tuple(tokens.shape)}.")
    d_vocab = model.cfg.d_vocab
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise ValueError(
            f"Token ids must lie in [0, {d_vocab}) for this model, got ids from {int(tokens.min())} to "
            f"{int(tokens.max())}. Were they made with another model's tokenizer?"
        )
    return tokens.to(device=model.cfg.device, dtype=torch.long)


def site_vectors(activation: Tensor, hook_name: str, batch_pos: tuple[int, int]) -> Tensor:
    """An activation as ``[batch, pos, d]``: per-head ``[batch, pos, heads, d_head]`` is flattened."""
    if activation.ndim >= 3 and tuple(activation.shape[:2]) == tuple(batch_pos):
        return activation.flatten(2)
    raise ValueError(
        f"The activation at {hook_name!r} has shape {tuple(activation.shape)}, not [batch, pos, ...] for tokens "
        f"of shape {tuple(batch_pos)}. Use a per-token site such as 'blocks.6.hook_resid_post'."
    )


def _run_with_hook(model: Any, tokens: Tensor, hook_name: str, hook: Callable, **kwargs: Any) -> Any:
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)], **kwargs)


def _run_with_hooks(model: Any, tokens: Tensor, hooks: list[tuple[str, Callable]], **kwargs: Any) -> Any:
    return model.run_with_hooks(tokens, fwd_hooks=hooks, **kwargs)


@torch.no_grad()
def activations_at(model: Any, tokens: Any, hook_name: str, *, stop_early: bool = True) -> Tensor:
    """The activations ``[batch, pos, d]`` at ``hook_name`` for token ids ``[batch, pos]``.

    Parameters
    ----------
    model
        A TransformerLens ``TransformerBridge`` (e.g. from :func:`load_model`).
    tokens
        Token ids ``[batch, pos]`` or ``[pos]``, used as given (no BOS is added).
    hook_name
        A TransformerLens hook name, e.g. ``"blocks.6.hook_resid_post"``.
    stop_early
        Stop the forward pass right after the site (default). ``False`` runs the whole
        model (the same values; only slower).

    Returns
    -------
    Tensor
        Detached, in the model's dtype and on its device; per-head sites flattened to
        ``n_heads * d_head``.
    """
    check_hook_name(model, hook_name)
    tokens = as_tokens(model, tokens)
    stored: list[Tensor] = []

    def store(activation: Tensor, hook: Any) -> None:
        stored.append(activation.detach())
        if stop_early:
            raise _StopForward

    try:
        _run_with_hook(model, tokens, hook_name, store, return_type=None)
    except _StopForward:
        pass
    if not stored:
        raise RuntimeError(f"The hook {hook_name!r} did not fire during the forward pass.")
    return site_vectors(stored[0], hook_name, tuple(tokens.shape))


def d_at(model: Any, hook_name: str) -> int:
    """The width of the activation vectors at ``hook_name`` (e.g. ``d_model`` for the
    residual stream, ``n_heads * d_head`` for ``attn.hook_z``), from a one-token probe."""
    probe = torch.zeros(1, 1, dtype=torch.long)
    return int(activations_at(model, probe, hook_name).shape[-1])


@torch.no_grad()
def activations_at_sites(
    model: Any, tokens: Any, hook_names: Sequence[str], *, stop_early: bool = True
) -> dict[str, Tensor]:
    """The activations ``[batch, pos, d]`` at several sites from one forward pass.

    Like :func:`activations_at` for each name in ``hook_names`` (the same values), but
    the model runs once: with ``stop_early`` the pass ends right after the last site to
    fire (the deepest one). Returns ``{hook_name: activations}`` in the order given;
    repeated names are computed once.
    """
    if isinstance(hook_names, str):
        raise TypeError(f"hook_names must be a list of hook names, got the string {hook_names!r}; "
                        "use activations_at for one site.")
    names = list(dict.fromkeys(hook_names))
    if not names:
        raise ValueError("hook_names is empty: name at least one site.")
    for name in names:
        check_hook_name(model, name)
    tokens = as_tokens(model, tokens)
    stored: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable:
        def store(activation: Tensor, hook: Any) -> None:
            stored.setdefault(name, activation.detach())
            if stop_early and len(stored) == len(names):
                raise _StopForward

        return store

    try:
        _run_with_hooks(model, tokens, [(name, hook_for(name)) for name in names], return_type=None)
    except _StopForward:
        pass
    missing = [name for name in names if name not in stored]
    if missing:
        raise RuntimeError(f"The hooks {missing} did not fire during the forward pass.")
    return {name: site_vectors(stored[name], name, tuple(tokens.shape)) for name in names}
