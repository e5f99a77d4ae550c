"""The walk from a smaller SAE to a larger one: insert novel latents, swap groups of matching ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..evaluation.metrics import cosine_blocks, evaluate
from ..saes.base import SAE
from .novelty import _row_chunks, _small_error, analyze, decoder_match, fit_threshold
from .surgery import prepare, stitch


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
    from ..models.splice import splice_eval

    out = []
    for start in range(0, len(saes), max(1, chunk)):
        out.extend(splice_eval(model, list(saes[start : start + chunk]), n_tokens, progress=progress))
    return pd.DataFrame([{k: r[k] for k in ("loss_recovered", "delta_lm_loss")} for r in out])
