"""Stitching surgery: build an SAE from the latents of two SAEs of one site.

A moved latent keeps its exact activation: its pre-activation biases (the SAE class's
``encoder_biases``) are corrected for the other decoder bias,
``(x - b_dec_L) W_j + b_j = (x - b_dec_S) W_j + (b_j + (b_dec_S - b_dec_L) W_j)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..saes.base import SAE

#: Sites must agree on these metadata fields when both SAEs record them.
SITE_FIELDS = ("model_name", "hook_name")

LatentIndices = Sequence[int] | Tensor | np.ndarray


# ---------------------------------------------------------------------------- checks
def prepare(sae: SAE) -> SAE:
    """The inference form of ``sae`` if it can be stitched (BatchTopK -> JumpReLU), else an error."""
    if not isinstance(sae, SAE):
        raise TypeError(f"Expected an SAE, got {type(sae).__name__}.")
    for name, param in sae.named_parameters():
        finite = torch.isfinite(param)
        if not bool(finite.all()):
            raise ValueError(f"{type(sae).__name__}.{name} holds {int((~finite).sum())} NaN/inf value(s): the SAE "
                             "diverged in training or was damaged. Train it again, or load a saved copy.")
    sae = sae.for_inference()
    if sae.coupled_latents is not None:
        raise ValueError(
            f"{type(sae).__name__.removesuffix('SAE')} SAEs cannot be stitched: {sae.coupled_latents}. "
            "Use ReLU, Gated, JumpReLU or "
            "BatchTopK SAEs (a trained BatchTopK SAE is a JumpReLU SAE with one threshold)."
        )
    return sae


def check_same_site(small: SAE, large: SAE) -> None:
    """Raise a clear error unless the two SAEs read activations of one width and one site."""
    if small.d_in != large.d_in:
        raise ValueError(
            f"d_in mismatch: the small SAE has d_in={small.d_in}, the large SAE d_in={large.d_in}. "
            "Stitch two SAEs trained on the same site."
        )
    for field in SITE_FIELDS:
        a, b = small.metadata.get(field), large.metadata.get(field)
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"Site mismatch: metadata[{field!r}] is {a!r} for the small SAE and {b!r} for the large SAE. "
                f"Stitch SAEs trained on the same site; if a record is wrong, correct sae.metadata[{field!r}]."
            )


def check_compatible(small: SAE, large: SAE) -> None:
    """Raise a clear error unless the two (prepared) SAEs share architecture, width and site."""
    if small.architecture != large.architecture:
        hint = (" Convert Gated SAEs with GatedSAE.to_jumprelu() (exact) so that both are JumpReLU SAEs."
                if {small.architecture, large.architecture} == {"gated", "jumprelu"} else
                " Stitch SAEs of one architecture.")
        raise ValueError(
            f"Architecture mismatch: the small SAE is {small.architecture!r}, the large SAE "
            f"{large.architecture!r}.{hint}"
        )
    check_same_site(small, large)


def _indices(values: LatentIndices, size: int, what: str) -> Tensor:
    """``values`` as a 1-D long tensor of distinct indices in ``[0, size)``, with clear errors."""
    index = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))
    index = index.reshape(-1)
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(f"{what} must be integer latent indices, got dtype {index.dtype} "
                        "(for a boolean mask pass mask.nonzero().flatten()).")
    index = index.long().cpu()
    bad = index[(index < 0) | (index >= size)]
    if bad.numel():
        raise IndexError(f"{what} holds index {int(bad[0])}, outside 0..{size - 1} (the SAE has {size} latents).")
    unique, counts = index.unique(return_counts=True)
    if bool((counts > 1).any()):
        raise ValueError(f"{what} holds index {int(unique[counts > 1][0])} more than once; list each latent once.")
    return index


# ---------------------------------------------------------------------------- stitching
@torch.no_grad()
def moved_latents(sae: SAE, latents: LatentIndices, b_dec: Tensor) -> dict[str, Tensor]:
    """The per-latent parameters of ``latents`` of ``sae``, bias-corrected for decoder bias ``b_dec``.

    With these parameters and ``b_dec`` each latent's activation equals its activation in
    ``sae``: every pre-activation bias gains ``(b_dec - sae.b_dec) . W_j`` times the scale of
    the encoder column it sees (``exp(r_mag)`` for a Gated SAE's magnitude path).
    """
    index = _indices(latents, sae.d_sae, "latents")
    params = sae.select_latents(index.to(sae.device))
    shift = (b_dec.double().to(sae.device) - sae.b_dec.double()) @ params["W_enc"].double()
    for bias, log_scale in sae.encoder_biases.items():
        scale = 1.0 if log_scale is None else params[log_scale].double().exp()
        params[bias] = (params[bias].double() + scale * shift).to(params[bias].dtype)
    return params


def _provenance(small: SAE, large: SAE, add: Tensor, remove: Tensor, b_dec: str | float) -> dict[str, Any]:
    def describe(sae: SAE) -> dict[str, Any]:
        return {"d_sae": sae.d_sae, **{f: sae.metadata.get(f) for f in (*SITE_FIELDS, "trained_as")}}

    return {"small": describe(small), "large": describe(large), "b_dec": b_dec,
            "added": add.tolist(), "removed": remove.tolist()}


@torch.no_grad()
def stitch(small: SAE, large: SAE, add: LatentIndices = (), remove: LatentIndices = (), *,
           b_dec: str | float = "small") -> SAE:
    """A new SAE holding ``small``'s latents minus ``remove`` plus ``large``'s latents ``add``.

    Parameters
    ----------
    small, large
        SAEs of one site and architecture (``relu``, ``gated``, ``jumprelu``; BatchTopK SAEs
        are used in their JumpReLU inference form). ``topk`` is refused (see the module
        docstring).
    add
        Latent indices of ``large`` to insert (distinct, in range); they come after the kept
        latents, in the order given.
    remove
        Latent indices of ``small`` to drop (distinct, in range); the kept latents keep
        their order.
    b_dec
        ``"small"`` (default): the result keeps ``small.b_dec`` and the added latents are
        bias-corrected; ``"large"``: it takes ``large.b_dec`` and the kept latents are
        corrected; a number ``t`` in [0, 1]: the blend ``(1 - t) b_dec_S + t b_dec_L`` and every
        latent corrected. Either way every latent's activation equals its activation in its
        own SAE; the reconstruction differs by a constant multiple of ``b_dec_L - b_dec_S``.

    Returns
    -------
    SAE
        A normal SAE of ``small``'s class, dtype and device (it saves, loads and evaluates
        like any other), with ``small``'s metadata plus ``metadata["stitched"]`` recording
        the widths, the added and removed indices and the decoder bias used.
    """
    small, large = prepare(small), prepare(large)
    check_compatible(small, large)
    if isinstance(b_dec, str):
        if b_dec not in ("small", "large"):
            raise ValueError(f"b_dec must be 'small', 'large' or a blend weight in [0, 1], got {b_dec!r}.")
    elif not 0.0 <= float(b_dec) <= 1.0:
        raise ValueError(f"b_dec as a blend weight must lie in [0, 1], got {b_dec!r}.")
    add_idx, remove_idx = _indices(add, large.d_sae, "add"), _indices(remove, small.d_sae, "remove")
    keep = torch.ones(small.d_sae, dtype=torch.bool)
    keep[remove_idx] = False
    keep_idx = keep.nonzero().flatten()
    n = len(keep_idx) + len(add_idx)
    if n == 0:
        raise ValueError("The stitched SAE would have no latents: add at least one latent or remove fewer.")
    if isinstance(b_dec, str):
        target = (small if b_dec == "small" else large).b_dec.detach()
    else:
        target = torch.lerp(small.b_dec.detach(), large.b_dec.detach().to(small.b_dec), float(b_dec))
    kept, added = moved_latents(small, keep_idx, target), moved_latents(large, add_idx, target)
    added = {name: value.to(device=small.device, dtype=small.dtype) for name, value in added.items()}
    extra = {name for name, _ in small.named_parameters()} - set(small.latent_axes) - {"b_dec"}
    if extra:
        raise NotImplementedError(f"{small.architecture} SAEs have parameters {sorted(extra)} that are "
                                  "neither per latent nor b_dec; stitching cannot place them.")
    metadata = {**small.metadata, "stitched": _provenance(small, large, add_idx, remove_idx, b_dec)}
    out = type(small)(small.d_in, n, dtype=small.dtype, device=small.device, metadata=metadata,
                      **small.hyperparameter_values())
    for name, axis in small.latent_axes.items():
        getattr(out, name).copy_(torch.cat([kept[name], added[name]], dim=axis))
    out.b_dec.copy_(target)
    return out
