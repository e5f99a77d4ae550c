"""SAE stitching: move latents between two SAEs of one site (the completeness chapter).

Two SAEs of different widths trained on the same site. For every latent ``j`` of the
larger SAE we ask whether it adds information the smaller SAE lacks:

* :func:`stitch` builds a new SAE of the smaller SAE's architecture holding some of its
  latents and some of the larger SAE's. A moved latent keeps its exact activation: its
  pre-activation biases are corrected for the different decoder bias,
  ``(x - b_dec_L) W_j + b_j = (x - b_dec_S) W_j + (b_j + (b_dec_S - b_dec_L) W_j)``.
* :func:`analyze` measures, for every larger-SAE latent at once, the change of MSE when
  it alone is inserted into the smaller SAE (closed form, streamed over the data), its
  max decoder cosine to the smaller SAE (blockwise, bounded memory), the class
  (``novel``: inserting it lowers the MSE) and how well the cosine proxy predicts it.
* :func:`curve` walks from the smaller SAE to the larger one (insert the novel latents,
  then swap groups of matching latents) and records L0, MSE, FVU and, with a model,
  loss recovered along the way.

Definitions (also in the book's methods page):

* ``delta_mse`` is in the units of :func:`~sae_helpers.evaluate`'s ``mse``: the mean over
  tokens **and dimensions** of the squared error, i.e. ``evaluate(stitched)["mse"] -
  evaluate(small)["mse"]``. With ``e = x - x_hat_S`` and ``f_j`` latent ``j``'s activation
  in the larger SAE (unchanged by the move), inserting ``j`` gives
  ``delta_j = mean_n(-2 f_nj (e_n . d_j) + f_nj^2 ||d_j||^2) / d_in``.
* A larger-SAE latent is **novel** when ``delta_mse < 0``. A latent that never fires on
  the data (**dead**: ``delta_mse == 0`` exactly) is *not* novel; dead latents are left
  out of the threshold fit, the proxy accuracy and ``frac_novel`` and counted as ``n_dead``.
* The **proxy** predicts "novel" when ``max_cos < threshold``; unless given, the threshold
  is the one that maximises the proxy's accuracy on the live latents (the midpoint
  between two neighbouring observed ``max_cos`` values).

Supported architectures: ``relu``, ``gated``, ``jumprelu`` and ``batchtopk`` (a trained
BatchTopK SAE *is* a JumpReLU SAE; a raw :class:`~sae_helpers.BatchTopKSAE` is converted
with ``for_inference()``, i.e. threshold inference). ``topk`` is refused: per-token
top-k couples the latents, so adding one changes which others fire.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .data.sources import as_source
from .evaluation.metrics import cosine_blocks, evaluate
from .saes.base import SAE
from .saes.topk import TopKSAE

#: Per architecture: the per-latent biases added to the encoder projection, and for each
#: the name of the per-latent log-scale of the encoder column it sees (``None``: scale 1).
#: Gated: ``pi_gate = u + b_gate`` and ``pi_mag = exp(r_mag) u + b_mag``.
ENCODER_BIASES: dict[str, dict[str, str | None]] = {
    "relu": {"b_enc": None},
    "jumprelu": {"b_enc": None},
    "gated": {"b_gate": None, "b_mag": "r_mag"},
}
#: Sites must agree on these metadata fields when both SAEs record them.
SITE_FIELDS = ("model_name", "hook_name")
#: Elements of a [rows, latents] float32 matrix per streamed chunk (256 MiB).
CHUNK_ELEMENTS = 1 << 26

LatentIndices = Sequence[int] | Tensor | np.ndarray


# ---------------------------------------------------------------------------- checks
def prepare(sae: SAE) -> SAE:
    """The inference form of ``sae`` if it can be stitched (BatchTopK -> JumpReLU), else an error."""
    if not isinstance(sae, SAE):
        raise TypeError(f"Expected an SAE, got {type(sae).__name__}.")
    sae = sae.for_inference()
    if isinstance(sae, TopKSAE):
        raise ValueError(
            "TopK SAEs cannot be stitched: a TopK SAE keeps the k largest pre-activations of each token, so "
            "adding or removing one latent changes which other latents fire, and a moved latent's activation "
            "is not preserved. Use ReLU, Gated, JumpReLU or BatchTopK SAEs (a trained BatchTopK SAE is a "
            "JumpReLU SAE with one threshold)."
        )
    if sae.architecture not in ENCODER_BIASES:
        raise ValueError(
            f"Stitching does not support architecture {sae.architecture!r}; supported: "
            f"{sorted(ENCODER_BIASES)} and batchtopk."
        )
    return sae


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
    for bias, log_scale in ENCODER_BIASES[sae.architecture].items():
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


# ---------------------------------------------------------------------------- analysis
class DecoderMatch(NamedTuple):
    """For each larger-SAE latent: its best cosine to a smaller-SAE decoder row and that row."""

    max_cos: Tensor
    argmax: Tensor


@torch.no_grad()
def decoder_match(large: SAE, small: SAE, block: int = 2048) -> DecoderMatch:
    """Max decoder cosine of every ``large`` latent to any ``small`` latent, blockwise.

    Memory: ``block * small.d_sae`` float64 values at a time (for 64k x 16k latents with
    ``block=2048`` about 256 MiB), never the full matrix.
    """
    max_cos = torch.empty(large.d_sae, dtype=torch.float64)
    argmax = torch.empty(large.d_sae, dtype=torch.long)
    for start, cos in cosine_blocks(large.W_dec, small.W_dec, block):
        best = cos.max(dim=1)
        max_cos[start : start + len(cos)] = best.values.cpu()
        argmax[start : start + len(cos)] = best.indices.cpu()
    return DecoderMatch(max_cos, argmax)


def _row_chunks(activations, batch_size: int, width: int) -> Iterator[Tensor]:
    """Every row of ``activations`` once, in chunks of at most ``batch_size`` rows and at most
    :data:`CHUNK_ELEMENTS` / ``width`` rows (bounded [rows, width] temporaries)."""
    rows = max(1, min(batch_size, CHUNK_ELEMENTS // max(1, width)))
    for batch in as_source(activations).in_order(batch_size):
        yield from batch.split(rows)


def _check_width(activations, sae: SAE) -> None:
    d = as_source(activations).d
    if d != sae.d_in:
        raise ValueError(f"SAE/activation width mismatch: the SAEs expect d_in={sae.d_in}, the activations have "
                         f"width {d}. Use activations from the site the SAEs were trained on.")


def _small_error(small: SAE, x: Tensor) -> Tensor:
    """``x - x_hat`` of ``small`` on ``x`` (in ``small``'s dtype)."""
    x = x.to(device=small.device, dtype=small.dtype)
    return x - small.decode(small.encode(x))


class InsertionEffect(NamedTuple):
    """Per larger-SAE latent: ``delta_mse`` of inserting it alone, firing ``density``; and ``n_tokens``."""

    delta_mse: Tensor
    density: Tensor
    n_tokens: int


@torch.no_grad()
def insertion_effects(small: SAE, large: SAE, activations, batch_size: int = 1024) -> InsertionEffect:
    """Closed-form ``delta_mse`` of inserting each ``large`` latent alone into ``small``.

    One streamed pass: ``e = x - x_hat_S``, ``f = large.encode(x)`` (exactly the moved
    latent's activation), ``sum_n f_nj (f_nj ||d_j||^2 - 2 e_n . d_j)`` accumulated in
    float64 and divided by ``n_tokens * d_in`` (:func:`evaluate`'s ``mse`` units).
    """
    small, large = prepare(small), prepare(large)
    check_compatible(small, large)
    _check_width(activations, small)
    sums = torch.zeros(large.d_sae, dtype=torch.float64)
    fires = torch.zeros(large.d_sae, dtype=torch.float64)
    norms = large.W_dec.detach().pow(2).sum(1)
    n = 0
    for x in _row_chunks(activations, batch_size, max(small.d_sae, large.d_sae)):
        error = _small_error(small, x).to(large.dtype).to(large.device)
        f = large.encode(x.to(device=large.device, dtype=large.dtype))
        overlap = error @ large.W_dec.T  # e_n . d_j
        sums += (f * (f * norms - 2 * overlap)).sum(0, dtype=torch.float64).cpu()
        fires += (f != 0).sum(0).double().cpu()
        n += x.shape[0]
    if n == 0:
        raise ValueError("No activations were given (the source was empty).")
    return InsertionEffect(sums / (n * small.d_in), fires / n, n)


def fit_threshold(max_cos: np.ndarray, novel: np.ndarray) -> tuple[float, float]:
    """The cosine threshold maximising the accuracy of "``max_cos < threshold`` => novel".

    Returns ``(threshold, accuracy)``. Candidate thresholds lie between neighbouring distinct
    values (their midpoint), just below the smallest (nothing predicted novel) and just above
    the largest (everything predicted novel), so no value equals the threshold and "no
    cosine above the threshold" (:func:`matching_groups`) means the same as "predicted
    novel". Ties go to the lowest threshold. ``(nan, nan)`` when there is nothing to fit.
    """
    max_cos, novel = np.asarray(max_cos, dtype=np.float64), np.asarray(novel, dtype=bool)
    if max_cos.size == 0:
        return math.nan, math.nan
    order = np.argsort(max_cos, kind="stable")
    values, labels = max_cos[order], novel[order]
    distinct = np.r_[values[1:] != values[:-1], True]  # cut after position i only between distinct values
    # Predict novel for the first i values: correct = novel among them + non-novel after them.
    correct = np.r_[0, np.cumsum(labels)] + np.r_[(~labels).sum(), (~labels).sum() - np.cumsum(~labels)]
    allowed = np.r_[True, distinct]
    best = int(np.argmax(np.where(allowed, correct, -1)))
    if best == 0:  # just below the smallest value, so no latent sits exactly on the threshold
        threshold = float(np.nextafter(values[0], -np.inf))
    elif best == len(values):
        threshold = float(np.nextafter(values[-1], np.inf))
    else:
        threshold = float((values[best - 1] + values[best]) / 2)
    return threshold, float(correct[best] / len(values))


def proxy_accuracy(max_cos: np.ndarray, novel: np.ndarray, threshold: float) -> float:
    """Accuracy of "``max_cos < threshold`` => novel" (``nan`` for no latents)."""
    max_cos, novel = np.asarray(max_cos, dtype=np.float64), np.asarray(novel, dtype=bool)
    return float(((max_cos < threshold) == novel).mean()) if max_cos.size else math.nan


def analyze(small: SAE, large: SAE, activations, threshold: float | None = None, block: int = 2048,
            batch_size: int = 1024) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Classify every latent of ``large`` as novel or not, and test the cosine proxy.

    Parameters
    ----------
    small, large
        SAEs of one site (see :func:`stitch`); ``large`` is usually the wider one.
    activations
        Held-out activations: a tensor, ``.safetensors`` file or cache directory (streamed,
        never loaded whole), as :func:`~sae_helpers.evaluate` accepts.
    threshold
        The proxy's cosine threshold; default: the one maximising its accuracy
        (:func:`fit_threshold`) on the live latents.
    block
        Larger-SAE latents per block of the cosine computation (memory ``block * small.d_sae``).
    batch_size
        Activation rows per streamed batch (also capped so ``rows * large.d_sae`` stays at
        :data:`CHUNK_ELEMENTS`).

    Returns
    -------
    table : DataFrame
        Indexed by larger-SAE latent (``latent``), columns ``max_cos``, ``argmax_cos`` (the
        best-matching smaller-SAE latent), ``delta_mse`` (in ``evaluate``'s ``mse`` units),
        ``density`` (firing frequency on ``activations``), ``dead`` and ``novel``
        (``delta_mse < 0``; dead latents are never novel).
    summary : dict
        ``n_latents``, ``n_dead``, ``n_novel``, ``frac_novel`` (of the live latents),
        ``threshold``, ``threshold_fitted`` (bool), ``proxy_accuracy`` (on the live latents)
        and ``n_tokens``.
    """
    small, large = prepare(small), prepare(large)
    match = decoder_match(large, small, block)
    effect = insertion_effects(small, large, activations, batch_size)
    dead = (effect.density == 0).numpy()
    delta = effect.delta_mse.numpy()
    table = pd.DataFrame({
        "max_cos": match.max_cos.numpy(),
        "argmax_cos": match.argmax.numpy(),
        "delta_mse": delta,
        "density": effect.density.numpy(),
        "dead": dead,
        "novel": (delta < 0) & ~dead,
    }, index=pd.RangeIndex(large.d_sae, name="latent"))
    live = table[~table.dead]
    fitted = threshold is None
    if fitted:
        threshold, accuracy = fit_threshold(live.max_cos.to_numpy(), live.novel.to_numpy())
    else:
        accuracy = proxy_accuracy(live.max_cos.to_numpy(), live.novel.to_numpy(), float(threshold))
    summary = {
        "n_latents": large.d_sae,
        "n_dead": int(dead.sum()),
        "n_novel": int(table.novel.sum()),
        "frac_novel": float(live.novel.mean()) if len(live) else math.nan,
        "threshold": float(threshold),
        "threshold_fitted": fitted,
        "proxy_accuracy": accuracy,
        "n_tokens": effect.n_tokens,
    }
    return table, summary


# ---------------------------------------------------------------------------- the walk
class Group(NamedTuple):
    """A connected component of the "cos > threshold" graph: its larger- and smaller-SAE latents."""

    large: tuple[int, ...]
    small: tuple[int, ...]


def _components(n_nodes: int, u: Tensor, v: Tensor) -> Tensor:
    """Connected-component label (smallest node id) of every node of an undirected graph."""
    labels = torch.arange(n_nodes)
    while True:
        low = torch.minimum(labels[u], labels[v])
        new = labels.scatter_reduce(0, u, low, "amin").scatter_reduce(0, v, low, "amin")
        new = new[new]  # pointer jumping
        if torch.equal(new, labels):
            return labels
        labels = new


@torch.no_grad()
def matching_groups(large: SAE, small: SAE, threshold: float, block: int = 2048,
                    extra_edges: tuple[Tensor, Tensor] | None = None) -> list[Group]:
    """Connected components of the bipartite graph of (large, small) latent pairs with cos > threshold.

    ``extra_edges`` (larger-SAE latents, smaller-SAE latents) adds further pairs to the
    graph (:func:`plan` adds best matches for latents that have no pair above the
    threshold). Only components with at least one edge are returned (each then holds
    latents of both SAEs), ordered by their smallest larger-SAE latent. Memory as
    :func:`decoder_match`.
    """
    large_edges, small_edges = [], []
    for start, cos in cosine_blocks(large.W_dec, small.W_dec, block):
        rows, cols = (cos > threshold).nonzero(as_tuple=True)
        large_edges.append(rows.cpu() + start)
        small_edges.append(cols.cpu())
    if extra_edges is not None:
        large_edges.append(extra_edges[0].cpu().long())
        small_edges.append(extra_edges[1].cpu().long())
    u, v = torch.cat(large_edges), torch.cat(small_edges) + large.d_sae
    if u.numel() == 0:
        return []
    labels = _components(large.d_sae + small.d_sae, u, v)
    members: dict[int, tuple[list[int], list[int]]] = {}
    for node in torch.cat([u, v]).unique().tolist():
        large_side, small_side = members.setdefault(int(labels[node]), ([], []))
        if node < large.d_sae:
            large_side.append(node)
        else:
            small_side.append(node - large.d_sae)
    return sorted((Group(tuple(sorted(a)), tuple(sorted(b))) for a, b in members.values()), key=lambda g: g.large[0])


@torch.no_grad()
def swap_effects(small: SAE, large: SAE, groups: Sequence[Group], activations, batch_size: int = 1024) -> Tensor:
    """``delta_mse`` (``evaluate`` units) of swapping each group alone into ``small``.

    Swapping group ``g`` (its smaller-SAE latents out, its larger-SAE latents in) turns the
    error ``e`` into ``e + r_g`` with ``r_g = sum_s f_s d_s - sum_l f_l d_l``, so
    ``delta_g = mean_n(2 e_n . r_gn + ||r_gn||^2) / d_in``. Computed in one streamed pass on
    the active (token, group) pairs only.
    """
    small, large = prepare(small), prepare(large)
    n_groups = len(groups)
    sums = torch.zeros(n_groups, dtype=torch.float64)
    if n_groups == 0:
        return sums
    group_of = [torch.full((sae.d_sae,), -1, dtype=torch.long) for sae in (small, large)]
    for g, group in enumerate(groups):
        group_of[0][list(group.small)] = g
        group_of[1][list(group.large)] = g
    n = 0
    for x in _row_chunks(activations, min(batch_size, 256), max(small.d_sae, large.d_sae)):
        error = _small_error(small, x).double().cpu()
        parts = []
        for side, (sae, sign) in enumerate(((small, 1.0), (large, -1.0))):
            f = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).double().cpu()
            token, latent = (f != 0).nonzero(as_tuple=True)
            grouped = group_of[side][latent] >= 0
            token, latent = token[grouped], latent[grouped]
            rows = sae.W_dec.detach()[latent.to(sae.device)].double().cpu()
            parts.append((token, group_of[side][latent], sign * f[token, latent], rows))
        token, group, coeff, rows = (torch.cat(p) for p in zip(*parts, strict=True))
        keys, inverse = (token * n_groups + group).unique(return_inverse=True)
        r = torch.zeros(len(keys), x.shape[1], dtype=torch.float64).index_add_(0, inverse, coeff[:, None] * rows)
        key_token = keys // n_groups
        value = 2 * (error[key_token] * r).sum(1) + r.pow(2).sum(1)
        sums.index_add_(0, keys % n_groups, value)
        n += x.shape[0]
    return sums / (n * small.d_in)


class Step(NamedTuple):
    """One step of the walk: ``kind`` (``"insert"``, ``"swap"``, ``"b_dec"``), a readable
    ``action``, the larger-SAE latents it adds, the smaller-SAE latents it removes, and the
    ``delta_mse`` measured for it alone on the small SAE (``nan`` for ``"b_dec"``)."""

    kind: str
    action: str
    add: tuple[int, ...]
    remove: tuple[int, ...]
    delta_mse: float


def _names(prefix: str, latents: Sequence[int], limit: int = 4) -> str:
    shown = ",".join(str(i) for i in latents[:limit])
    return f"{prefix}[{shown}{',...' if len(latents) > limit else ''}]"


def plan(small: SAE, large: SAE, activations, threshold: float | None = None, *, table: pd.DataFrame | None = None,
         adopt_large_b_dec: bool = True, block: int = 2048, batch_size: int = 1024) -> list[Step]:
    """The steps of the walk from ``small`` to ``large`` (see :func:`curve` for the order).

    ``table`` is :func:`analyze`'s table (computed when not given; its ``delta_mse`` orders
    the insertions). ``threshold`` defaults to the fitted one.
    """
    if table is None:
        table, summary = analyze(small, large, activations, threshold, block, batch_size)
        threshold = summary["threshold"]
    elif threshold is None:
        live = table[~table.dead]
        threshold, _ = fit_threshold(live.max_cos.to_numpy(), live.novel.to_numpy())
    small, large = prepare(small), prepare(large)
    threshold = float(threshold)
    # Larger-SAE latents above the threshold to nothing: the measured-novel ones are inserted
    # alone; the others (reconstruction latents the proxy misses, dead latents) join the
    # group of their best-matching smaller-SAE latent. Smaller-SAE latents above the
    # threshold to nothing join the group of their best-matching larger-SAE latent. So every
    # latent of both SAEs is in a group or inserted, and the walk ends at the larger SAE.
    unmatched = torch.tensor(table["max_cos"].to_numpy() <= threshold)
    novel = torch.tensor(table["novel"].to_numpy(dtype=bool))
    attach = (unmatched & ~novel).nonzero().flatten()
    best_small = torch.tensor(table["argmax_cos"].to_numpy()).long()
    small_match = decoder_match(small, large, block)
    lonely_small = (small_match.max_cos <= threshold).nonzero().flatten()
    extra = (torch.cat([attach, small_match.argmax[lonely_small]]), torch.cat([best_small[attach], lonely_small]))
    groups = matching_groups(large, small, threshold, block, extra_edges=extra)
    grouped = {latent for group in groups for latent in group.large}
    lone = table.loc[[j for j in range(large.d_sae) if j not in grouped], "delta_mse"]
    lone = lone.sort_values(kind="stable")
    steps = [Step("insert", f"insert L{j}", (int(j),), (), float(d)) for j, d in lone.items()]
    gains = swap_effects(small, large, groups, activations, batch_size).tolist()
    for g in sorted(range(len(groups)), key=lambda i: gains[i]):
        group = groups[g]
        action = f"swap {_names('L', group.large)} for {_names('S', group.small)}"
        steps.append(Step("swap", action, group.large, group.small, gains[g]))
    removed = sum(len(group.small) for group in groups)
    if adopt_large_b_dec and removed == small.d_sae:
        steps.append(Step("b_dec", "adopt the large SAE's b_dec", (), (), math.nan))
    return steps


def state_after(small: SAE, large: SAE, steps: Sequence[Step], blend_b_dec: bool = True) -> SAE:
    """The stitched SAE after ``steps``: the kept smaller-SAE latents, then the added
    larger-SAE latents in their original order (so after a complete walk the parameters
    equal the larger SAE's exactly).

    ``blend_b_dec`` (default): the decoder bias is the blend of the two SAEs' biases
    weighted by the share of latents taken from the larger SAE (every latent bias-corrected,
    so activations are unchanged); otherwise it stays the smaller SAE's until a ``"b_dec"``
    step adopts the larger SAE's. The blend spreads the constant offset between the two
    biases over the walk instead of carrying all of it to the last step.
    """
    add = sorted(j for step in steps for j in step.add)
    remove = [i for step in steps for i in step.remove]
    if any(step.kind == "b_dec" for step in steps):
        b_dec: str | float = "large"
    elif blend_b_dec:
        b_dec = len(add) / (small.d_sae - len(remove) + len(add))
    else:
        b_dec = "small"
    return stitch(small, large, add, remove, b_dec=b_dec)


def evaluation_points(n_steps: int, n_points: int | None) -> list[int]:
    """Step counts to evaluate: all of ``0..n_steps`` or ``n_points`` evenly spaced, ends included."""
    if n_points is None or n_points >= n_steps + 1:
        return list(range(n_steps + 1))
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2 (the two ends), got {n_points}.")
    return sorted({int(round(v)) for v in np.linspace(0, n_steps, n_points)})


def curve(small: SAE, large: SAE, activations, model: Any = None, *, threshold: float | None = None,
          table: pd.DataFrame | None = None, n_points: int | None = 20, n_splice_points: int | None = None,
          n_splice_tokens: int = 4096, adopt_large_b_dec: bool = True, blend_b_dec: bool = True,
          splice_chunk: int = 8, block: int = 2048,
          batch_size: int = 1024, progress: bool = False) -> pd.DataFrame:
    """Walk from ``small`` toward ``large`` by stitching, recording the metrics along the way.

    Groups are the connected components of the bipartite graph of (large, small) latent
    pairs with decoder cosine above ``threshold`` (default: :func:`analyze`'s fitted one),
    plus best-match pairs for the latents that have no pair above the threshold: a
    larger-SAE latent that is not novel (measured) is paired with its best-matching
    smaller-SAE latent, and a smaller-SAE latent with its best-matching larger-SAE latent.
    The remaining larger-SAE latents (no match above the threshold, measured novel) are
    inserted alone. Every latent is thus inserted or swapped, and the walk ends at the
    larger SAE. The order:

    1. insert the novel larger-SAE latents one at a time, most negative ``delta_mse``
       (from ``table``) first, so the ones that help most come first;
    2. swap each group (its smaller-SAE latents out, its larger-SAE latents in), in order of
       the ``delta_mse`` of that swap alone on the small SAE (:func:`swap_effects`), most
       helpful first;
    3. (every smaller-SAE latent has now been swapped out) if ``adopt_large_b_dec``, take the
       larger SAE's ``b_dec``: the final SAE then computes exactly the larger SAE's function
       (same latents, same reconstruction). Without this step the final SAE has exactly the
       larger SAE's latent activations, and its reconstruction is off by the constant
       ``b_dec_S - b_dec_L``. With ``blend_b_dec`` (default) the decoder bias moves along
       the walk instead: after each step it is the blend of the two biases weighted by the
       share of latents from the larger SAE (:func:`state_after`), so it is already the
       larger SAE's once the last group is swapped, and this step changes nothing.

    Parameters
    ----------
    activations
        Evaluation activations (re-read once per evaluated point: a tensor, file or cache).
    model
        If given, ``loss_recovered`` (and ``delta_lm_loss``) via :func:`~sae_helpers.splice_eval`
        on ``n_splice_tokens`` held-out tokens (needs the SAEs' ``metadata["hook_name"]``),
        ``splice_chunk`` SAEs per pass (the clean and zero-ablation runs are shared).
    n_points
        Evaluate about this many evenly spaced steps (both ends always); ``None``: every step.
    n_splice_points
        With a model, splice only about this many evenly spaced evaluated points (both ends
        always; the others get ``nan``): splicing costs a model forward pass per SAE and
        batch, the other metrics one pass over ``activations``. ``None``: every point.

    Returns
    -------
    DataFrame
        One row per evaluated point: ``step`` (steps applied), ``kind`` and ``action`` (the
        last step applied; ``"start"`` for the small SAE), ``n_latents``, ``n_added``,
        ``n_removed``, ``l0``, ``mse``, ``fvu`` and, with a model, ``loss_recovered`` and
        ``delta_lm_loss``. Row 0 is the small SAE itself, the last row the final stitched SAE.
        Evaluating a point rebuilds its SAE from the step list (:func:`state_after`).
    """
    steps = plan(small, large, activations, threshold, table=table, adopt_large_b_dec=adopt_large_b_dec,
                 block=block, batch_size=batch_size)
    points = evaluation_points(len(steps), n_points)
    spliced = set(evaluation_points(len(points) - 1, n_splice_points)) if model is not None else set()
    rows, saes = [], []
    for i, point in enumerate(points):
        done = steps[:point]
        sae = prepare(small) if point == 0 else state_after(small, large, done, blend_b_dec)
        metrics = evaluate(sae, activations, batch_size=batch_size)
        last = done[-1] if done else Step("start", "small SAE", (), (), 0.0)
        rows.append({"step": point, "kind": last.kind, "action": last.action, "n_latents": sae.d_sae,
                     "n_added": sum(len(s.add) for s in done), "n_removed": sum(len(s.remove) for s in done),
                     **{k: metrics[k] for k in ("l0", "mse", "fvu")}})
        if i in spliced:
            saes.append(sae)
    result = pd.DataFrame(rows)
    if model is not None:
        losses = _splice(model, saes, n_splice_tokens, splice_chunk, progress)
        result = result.join(losses.set_axis(sorted(spliced)))
    result.attrs["steps"] = {kind: sum(s.kind == kind for s in steps) for kind in ("insert", "swap", "b_dec")}
    return result


def count_rises(values: Sequence[float] | np.ndarray, tol: float = 1e-9) -> tuple[int, int, float]:
    """``(rises, intervals, largest rise)`` of a sequence, ignoring ``nan``.

    A rise is a step up by more than ``tol`` times the largest absolute value; a curve
    "falls monotonically" when it has none. Pass ``-values`` for a quantity that should rise.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return 0, 0, 0.0
    diffs = np.diff(v)
    return int((diffs > tol * np.abs(v).max()).sum()), len(diffs), float(diffs.max(initial=0.0))


def _splice(model: Any, saes: Sequence[SAE], n_tokens: int, chunk: int, progress: bool) -> pd.DataFrame:
    """``loss_recovered`` and ``delta_lm_loss`` of each SAE, ``chunk`` SAEs per shared splice pass."""
    from .models.splice import splice_eval

    out = []
    for start in range(0, len(saes), max(1, chunk)):
        out.extend(splice_eval(model, list(saes[start : start + chunk]), n_tokens, progress=progress))
    return pd.DataFrame([{k: r[k] for k in ("loss_recovered", "delta_lm_loss")} for r in out])


__all__ = [
    "DecoderMatch",
    "Group",
    "InsertionEffect",
    "Step",
    "analyze",
    "check_compatible",
    "count_rises",
    "curve",
    "decoder_match",
    "evaluation_points",
    "fit_threshold",
    "insertion_effects",
    "matching_groups",
    "moved_latents",
    "plan",
    "prepare",
    "proxy_accuracy",
    "state_after",
    "stitch",
    "swap_effects",
]
