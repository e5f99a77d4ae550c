"""The walk from a smaller SAE to a larger one: insert novel latents, swap groups of matching ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..evaluation.metrics import cosine_blocks, evaluate
from ..saes.base import SAE
from .novelty import _row_chunks, _small_error, analyze, decoder_match, fit_threshold
from .surgery import prepare, stitch

if TYPE_CHECKING:
    import pandas as pd


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
    return _groups_of_edges(large.d_sae, small.d_sae, torch.cat(large_edges), torch.cat(small_edges))


def _groups_of_edges(n_large: int, n_small: int, large_side: Tensor, small_side: Tensor) -> list[Group]:
    """The connected components (with at least one edge) of a bipartite graph given by its
    edges ``(large_side[e], small_side[e])``, ordered by their smallest larger-SAE latent."""
    u, v = large_side.long(), small_side.long() + n_large
    if u.numel() == 0:
        return []
    labels = _components(n_large + n_small, u, v)
    members: dict[int, tuple[list[int], list[int]]] = {}
    for node in torch.cat([u, v]).unique().tolist():
        large_members, small_members = members.setdefault(int(labels[node]), ([], []))
        if node < n_large:
            large_members.append(node)
        else:
            small_members.append(node - n_large)
    return sorted((Group(tuple(sorted(a)), tuple(sorted(b))) for a, b in members.values()), key=lambda g: g.large[0])


def best_match_groups(small: SAE, large: SAE, inserted: Sequence[int], block: int = 2048) -> list[Group]:
    """Groups of the best-match graph: every larger-SAE latent not in ``inserted`` is joined to
    its best-matching smaller-SAE latent (highest decoder cosine), and every smaller-SAE
    latent to its best-matching larger-SAE latent. Each latent thus joins the one latent of the
    other SAE it resembles most, whatever the cosine, and a group is a small chain of such
    matches (no threshold: see :func:`walk_groups`)."""
    keep = torch.ones(large.d_sae, dtype=torch.bool)
    keep[torch.as_tensor(list(inserted), dtype=torch.long)] = False
    to_small, to_large = decoder_match(large, small, block), decoder_match(small, large, block)
    attached = keep.nonzero().flatten()
    return _groups_of_edges(large.d_sae, small.d_sae, torch.cat([attached, to_large.argmax]),
                            torch.cat([to_small.argmax[attached], torch.arange(small.d_sae)]))


#: How :func:`walk_groups` forms the swap groups.
GROUPINGS = ("best_match", "threshold")


def walk_groups(small: SAE, large: SAE, table: pd.DataFrame, grouping: str = "best_match",
                threshold: float | None = None, block: int = 2048) -> tuple[list[int], list[Group]]:
    """The latents the walk inserts alone and the groups it swaps.

    ``"best_match"`` (default): the measured-novel latents (``table.novel``) that are no
    smaller-SAE latent's best match are inserted; the groups are :func:`best_match_groups`
    over the rest. ``"threshold"``: the novel latents with ``max_cos <= threshold`` are
    inserted, and the groups are the components of the "cosine above ``threshold``" graph
    plus a best-match edge for every latent that has no pair above it (the first walk of
    this book). Either way every latent of both SAEs is inserted or swapped, so the walk
    ends at ``large``. Why best matches by default: the fitted threshold of trained SAEs in
    576 dimensions sits at the level of random directions' cosines, and its graph is one
    component holding nearly every latent (see :func:`~sae_helpers.stitching.cosine_nulls`).
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}.")
    novel = torch.tensor(table["novel"].to_numpy(dtype=bool))
    if grouping == "best_match":
        someones_best = torch.zeros(large.d_sae, dtype=torch.bool)
        someones_best[decoder_match(small, large, block).argmax] = True
        inserted = (novel & ~someones_best).nonzero().flatten().tolist()
        return inserted, best_match_groups(small, large, inserted, block)
    if threshold is None:
        live = table[~table.dead]
        threshold, _ = fit_threshold(live.max_cos.to_numpy(), live.novel.to_numpy())
    threshold = float(threshold)
    unmatched = torch.tensor(table["max_cos"].to_numpy() <= threshold)
    attach = (unmatched & ~novel).nonzero().flatten()
    best_small = torch.tensor(table["argmax_cos"].to_numpy()).long()
    small_match = decoder_match(small, large, block)
    lonely_small = (small_match.max_cos <= threshold).nonzero().flatten()
    extra = (torch.cat([attach, small_match.argmax[lonely_small]]), torch.cat([best_small[attach], lonely_small]))
    groups = matching_groups(large, small, threshold, block, extra_edges=extra)
    grouped = {latent for group in groups for latent in group.large}
    return [j for j in range(large.d_sae) if j not in grouped], groups


class Step(NamedTuple):
    """One step of the walk: ``kind`` (``"insert"`` or ``"swap"``), a readable ``action``, the
    larger-SAE latents it adds, the smaller-SAE latents it removes, and ``delta_mse``: the
    change of MSE (``evaluate`` units) this step alone makes to the stitched SAE it was chosen
    on (the state at the start of its chunk; see :func:`plan`)."""

    kind: str
    action: str
    add: tuple[int, ...]
    remove: tuple[int, ...]
    delta_mse: float


def _names(prefix: str, latents: Sequence[int], limit: int = 4) -> str:
    shown = ",".join(str(i) for i in latents[:limit])
    return f"{prefix}[{shown}{',...' if len(latents) > limit else ''}]"


def b_dec_share(small: SAE, steps: Sequence[Step]) -> float:
    """The decoder-bias blend weight after ``steps``: the share of ``small``'s latents swapped
    out (0 while inserting, 1 once every group is swapped)."""
    return sum(len(step.remove) for step in steps) / small.d_sae


def state_after(small: SAE, large: SAE, steps: Sequence[Step]) -> SAE:
    """The stitched SAE after ``steps``: the kept smaller-SAE latents, then the added
    larger-SAE latents in their original order (so after a complete walk the parameters
    equal the larger SAE's exactly), with the decoder bias ``(1 - t) b_dec_S + t b_dec_L``,
    ``t`` = :func:`b_dec_share` (every latent bias-corrected, so activations are unchanged)."""
    add = sorted(j for step in steps for j in step.add)
    remove = [i for step in steps for i in step.remove]
    return stitch(small, large, add, remove, b_dec=b_dec_share(small, steps))


class Curve(NamedTuple):
    """What :func:`curve` returns: the evaluated points and the walk's step counts."""

    points: pd.DataFrame
    """One row per evaluated point (see :func:`curve`)."""
    steps: dict[str, int]
    """Steps of each kind: ``{"insert": n, "swap": m}``."""
    largest_group: int
    """The largest swap group's size (latents of both SAEs; 0 without swaps)."""


class _InContext:
    """In-context MSE changes of the walk's candidate steps against any stitched state.

    Every moved latent keeps its activation, so a step changes the state's error ``e`` by a
    fixed ``r`` per token: inserting ``j``: ``r = -f_j d_j``; swapping group ``g``:
    ``r = sum_s f_s d_s - sum_l f_l d_l - db_g`` with ``db_g`` the step's move of the decoder
    bias. ``sum_n ||e + r||^2 - ||e||^2 = 2 sum_n e.r + sum_n ||r||^2``: the quadratic part
    does not depend on the state (computed once, on the active (token, group) pairs); the
    linear part is ``sum`` over the step's latents of ``u_i = sum_n f_ni (e_n . d_i)``, one
    dense pass per state (:meth:`deltas`)."""

    def __init__(self, small: SAE, large: SAE, activations, inserts: Sequence[int], groups: Sequence[Group],
                 batch_size: int) -> None:
        self.small, self.large, self.activations, self.batch_size = small, large, activations, batch_size
        self.inserts, self.groups = list(inserts), list(groups)
        self.shift = (large.b_dec.detach().double() - small.b_dec.detach().double()).cpu()  # b_dec_L - b_dec_S
        self.db = torch.tensor([len(g.small) / small.d_sae for g in groups], dtype=torch.float64)
        self.width = max(small.d_sae, large.d_sae)
        self._quadratic_terms()

    @torch.no_grad()
    def _quadratic_terms(self) -> None:
        small, large, groups = self.small, self.large, self.groups
        n_groups = len(groups)
        group_of = [torch.full((sae.d_sae,), -1, dtype=torch.long) for sae in (small, large)]
        for g, group in enumerate(groups):
            group_of[0][list(group.small)] = g
            group_of[1][list(group.large)] = g
        square = torch.zeros(n_groups, dtype=torch.float64)
        sums = [torch.zeros(sae.d_sae, dtype=torch.float64) for sae in (small, large)]
        squares_large = torch.zeros(large.d_sae, dtype=torch.float64)
        n = 0
        for x in _row_chunks(self.activations, min(self.batch_size, 256), self.width):
            parts = []
            for side, (sae, sign) in enumerate(((small, 1.0), (large, -1.0))):
                f = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).double().cpu()
                sums[side] += f.sum(0)
                if side == 1:
                    squares_large += f.pow(2).sum(0)
                token, latent = (f != 0).nonzero(as_tuple=True)
                grouped = group_of[side][latent] >= 0
                token, latent = token[grouped], latent[grouped]
                rows = sae.W_dec.detach()[latent.to(sae.device)].double().cpu()
                parts.append((token, group_of[side][latent], sign * f[token, latent], rows))
            if n_groups:
                token, group, coeff, rows = (torch.cat(p) for p in zip(*parts, strict=True))
                keys, inverse = (token * n_groups + group).unique(return_inverse=True)
                r = torch.zeros(len(keys), x.shape[1], dtype=torch.float64).index_add_(0, inverse,
                                                                                       coeff[:, None] * rows)
                square.index_add_(0, keys % n_groups, r.pow(2).sum(1))
            n += x.shape[0]
        if n == 0:
            raise ValueError("No activations were given (the source was empty).")
        self.n = n
        norms = large.W_dec.detach().double().cpu().pow(2).sum(1)
        self.insert_square = (squares_large * norms)[self.inserts]
        # m_g = sum_n (sum_s f_s d_s - sum_l f_l d_l): its product with the bias move, sum_n r.db
        weighted = [sums[0][:, None] * small.W_dec.detach().double().cpu(),
                    -sums[1][:, None] * large.W_dec.detach().double().cpu()]
        self.group_sum = torch.stack([weighted[0][list(g.small)].sum(0) + weighted[1][list(g.large)].sum(0)
                                      for g in groups]) if groups else torch.zeros(0, small.d_in, dtype=torch.float64)
        self.group_square = square

    @torch.no_grad()
    def deltas(self, state: SAE, with_b_dec: bool = True) -> tuple[Tensor, Tensor]:
        """``(insert deltas, swap deltas)`` against ``state`` (``evaluate`` units). With
        ``with_b_dec``, a swap also moves the decoder bias by its share of smaller-SAE latents
        (as :func:`state_after` does)."""
        small, large = self.small, self.large
        u = [torch.zeros(sae.d_sae, dtype=torch.float64) for sae in (small, large)]
        error_sum = torch.zeros(small.d_in, dtype=torch.float64)
        for x in _row_chunks(self.activations, self.batch_size, max(self.width, state.d_sae)):
            error = _small_error(state, x).double().cpu()
            error_sum += error.sum(0)
            for side, sae in enumerate((small, large)):
                f = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).double().cpu()
                u[side] += (f * (error @ sae.W_dec.detach().double().cpu().T)).sum(0)
        scale = self.n * small.d_in
        inserts = (self.insert_square - 2 * u[1][self.inserts]) / scale
        linear = torch.tensor([float(u[0][list(g.small)].sum() - u[1][list(g.large)].sum()) for g in self.groups],
                              dtype=torch.float64)
        swaps = 2 * linear + self.group_square
        if with_b_dec and self.groups:
            db = self.db[:, None] * self.shift  # [groups, d]
            swaps += (-2 * db @ error_sum - 2 * (self.group_sum * db).sum(1) + self.n * db.pow(2).sum(1))
        return inserts, swaps / scale


def plan(small: SAE, large: SAE, activations, threshold: float | None = None, *, table: pd.DataFrame | None = None,
         grouping: str = "best_match", n_points: int | None = 20, block: int = 2048,
         batch_size: int = 1024) -> list[Step]:
    """The steps of the walk from ``small`` to ``large``, ordered by their effect in context.

    First the latents inserted alone, then the group swaps (:func:`walk_groups`). The order is
    chosen greedily in chunks: at about ``n_points`` evenly spaced points of the walk
    (:func:`evaluation_points`; ``None``: before every step) the MSE change of every remaining
    step of the current phase is measured against the stitched SAE reached so far
    (:class:`_InContext`, exact and in closed form), and the next chunk takes the most helpful
    ones. ``table`` is :func:`analyze`'s (computed when not given); ``threshold`` matters only
    for ``grouping="threshold"``.
    """
    if table is None:
        table, summary = analyze(small, large, activations, threshold, block, batch_size)
        threshold = summary["threshold"] if threshold is None else threshold
    small, large = prepare(small), prepare(large)
    inserts, groups = walk_groups(small, large, table, grouping, threshold, block)
    context = _InContext(small, large, activations, inserts, groups, batch_size)
    points = evaluation_points(len(inserts) + len(groups), n_points)
    remaining = [list(range(len(inserts))), list(range(len(groups)))]
    steps: list[Step] = []
    for end in points[1:]:
        while len(steps) < end:
            phase = 0 if remaining[0] else 1
            effects = context.deltas(state_after(small, large, steps) if steps else small)[phase]
            chosen = sorted(remaining[phase], key=lambda i: float(effects[i]))[: end - len(steps)]
            taken = set(chosen)
            remaining[phase] = [i for i in remaining[phase] if i not in taken]
            for i in chosen:
                if phase == 0:
                    j = inserts[i]
                    steps.append(Step("insert", f"insert L{j}", (j,), (), float(effects[i])))
                else:
                    g = groups[i]
                    steps.append(Step("swap", f"swap {_names('L', g.large)} for {_names('S', g.small)}", g.large,
                                      g.small, float(effects[i])))
    return steps


def swap_effects(small: SAE, large: SAE, groups: Sequence[Group], activations, batch_size: int = 1024) -> Tensor:
    """``delta_mse`` (``evaluate`` units) of swapping each group alone into ``small`` (the decoder
    bias kept: ``stitch(small, large, group.large, group.small)``). Closed form, as :class:`_InContext`."""
    small, large = prepare(small), prepare(large)
    return _InContext(small, large, activations, [], groups, batch_size).deltas(small, with_b_dec=False)[1]


def evaluation_points(n_steps: int, n_points: int | None) -> list[int]:
    """Step counts to evaluate: all of ``0..n_steps`` or ``n_points`` evenly spaced, ends included."""
    if n_points is None or n_points >= n_steps + 1:
        return list(range(n_steps + 1))
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2 (the two ends), got {n_points}.")
    return sorted({int(round(v)) for v in np.linspace(0, n_steps, n_points)})


def curve(small: SAE, large: SAE, activations, model: Any = None, *, threshold: float | None = None,
          table: pd.DataFrame | None = None, grouping: str = "best_match", n_points: int | None = 20,
          n_splice_points: int | None = None, n_splice_tokens: int = 4096, splice_chunk: int = 8, block: int = 2048,
          batch_size: int = 1024, progress: bool = False) -> Curve:
    """Walk from ``small`` to ``large`` by stitching, recording the metrics along the way.

    The walk (:func:`plan`): insert the novel latents that no smaller-SAE latent matches
    best, then swap groups of matching latents (:func:`walk_groups`), each phase ordered by
    the steps' effect on the stitched SAE reached so far, re-measured at every evaluated
    point. The decoder bias stays the smaller SAE's while inserting and moves toward the
    larger SAE's with the share of smaller-SAE latents swapped out (:func:`state_after`), so
    the last point is the larger SAE itself (same parameters, same function).

    Parameters
    ----------
    activations
        Evaluation activations (re-read once per evaluated point: a tensor, file or cache).
    model
        If given, ``loss_recovered`` (and ``delta_lm_loss``) via :func:`~sae_helpers.splice_eval`
        on ``n_splice_tokens`` held-out tokens (needs the SAEs' ``metadata["hook_name"]``),
        ``splice_chunk`` SAEs per pass (the clean and zero-ablation runs are shared).
    n_points
        Evaluate about this many evenly spaced steps (both ends always; the order is
        re-measured at each); ``None``: every step.
    n_splice_points
        With a model, splice only about this many evenly spaced evaluated points (both ends
        always; the others get ``nan``). ``None``: every point.

    Returns
    -------
    Curve
        ``points``: one row per evaluated point: ``step`` (steps applied), ``kind`` and ``action`` (the
        last step applied; ``"start"`` for the small SAE), ``n_latents``, ``n_added``,
        ``n_removed``, ``l0``, ``mse``, ``fvu``, ``predicted_delta_mse`` (the sum of the
        in-context ``delta_mse`` of the steps since the previous point) and ``delta_mse`` (the
        measured change of ``mse`` since the previous point), and with a model
        ``loss_recovered`` and ``delta_lm_loss``; ``steps`` counts the steps of each kind;
        ``largest_group`` is the largest swap group's size (latents of both SAEs).
    """
    import pandas as pd

    small_p, large_p = prepare(small), prepare(large)
    if table is None:
        table, summary = analyze(small_p, large_p, activations, threshold, block, batch_size)
        threshold = summary["threshold"] if threshold is None else threshold
    steps = plan(small_p, large_p, activations, threshold, table=table, grouping=grouping, n_points=n_points,
                 block=block, batch_size=batch_size)
    points = evaluation_points(len(steps), n_points)
    spliced = set(evaluation_points(len(points) - 1, n_splice_points)) if model is not None else set()
    rows, saes = [], []
    for i, point in enumerate(points):
        done = steps[:point]
        sae = small_p if point == 0 else state_after(small_p, large_p, done)
        metrics = evaluate(sae, activations, batch_size=batch_size)
        last = done[-1] if done else Step("start", "small SAE", (), (), 0.0)
        since = steps[points[i - 1] : point] if i else []
        rows.append({"step": point, "kind": last.kind, "action": last.action, "n_latents": sae.d_sae,
                     "n_added": sum(len(s.add) for s in done), "n_removed": sum(len(s.remove) for s in done),
                     **{k: metrics[k] for k in ("l0", "mse", "fvu")},
                     "predicted_delta_mse": sum(s.delta_mse for s in since)})
        if i in spliced:
            saes.append(sae)
    result = pd.DataFrame(rows)
    result.insert(result.columns.get_loc("predicted_delta_mse") + 1, "delta_mse", result.mse.diff().fillna(0.0))
    if model is not None:
        losses = _splice(model, saes, n_splice_tokens, splice_chunk, progress)
        result = result.join(losses.set_axis(sorted(spliced)))
    counts = {kind: sum(s.kind == kind for s in steps) for kind in ("insert", "swap")}
    sizes = {}
    for s in steps:
        if s.kind == "swap":
            sizes[s.action] = len(s.add) + len(s.remove)
    return Curve(result, counts, max(sizes.values(), default=0))


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
    import pandas as pd

    from ..evaluation.splice import splice_eval

    out = []
    for start in range(0, len(saes), max(1, chunk)):
        out.extend(splice_eval(model, list(saes[start : start + chunk]), n_tokens, progress=progress))
    return pd.DataFrame([{k: r[k] for k in ("loss_recovered", "delta_lm_loss")} for r in out])


def grouping_report(small: SAE, large: SAE, table: pd.DataFrame, threshold: float | None = None,
                    block: int = 2048) -> pd.DataFrame:
    """Per grouping rule of :func:`walk_groups`: the latents inserted alone, the swap groups, and
    the largest group's size and share of all latents of both SAEs (a rule whose largest group
    holds most latents swaps them in one jump)."""
    import pandas as pd

    rows = {}
    for grouping in GROUPINGS:
        inserts, groups = walk_groups(small, large, table, grouping, threshold, block)
        largest = max((len(g.large) + len(g.small) for g in groups), default=0)
        rows[grouping] = {"inserted": len(inserts), "groups": len(groups), "largest_group": largest,
                          "largest_share": largest / (small.d_sae + large.d_sae)}
    return pd.DataFrame.from_dict(rows, orient="index")
