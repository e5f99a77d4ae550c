"""Reading latents through the text that activates them and the tokens they promote.

``top_activating_contexts`` streams an activation cache (the token ids are stored
beside the activations) and keeps, per latent, the ``k`` tokens on which it fires
hardest; ``contexts_html`` renders them as an HTML table with the token highlighted.
``firing_density`` and ``latent_statistics`` (density and the histogram of activations
when firing) stream a cache too. ``logit_tokens`` / ``decoder_logit_tokens`` read a
residual-stream direction through the unembedding (``W_dec[j] @ W_U``, by default after the
final norm's scale: see :func:`unembedding`). ``latent_card_html`` puts these together as
one HTML table per latent, and ``latent_cards`` computes and renders them.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .._progress import tqdm
from ..data.cache import CacheSource
from ..saes.base import SAE

if TYPE_CHECKING:
    import pandas as pd


@torch.no_grad()
def top_activating_contexts(
    sae: SAE,
    cache: str | os.PathLike | CacheSource,
    latents: Sequence[int],
    k: int = 8,
    window: int = 12,
    batch_size: int = 8192,
    progress: bool = True,
) -> pd.DataFrame:
    """The ``k`` highest activations of each latent in ``latents`` over a cache.

    Returns a DataFrame with columns ``latent``, ``rank``, ``activation``, ``shard``,
    ``row``, ``token_id`` and ``context_ids`` (up to ``window`` tokens before the token
    and 3 after, as a list) and ``focus`` (the token's index in ``context_ids``).
    Memory holds one shard and ``k`` candidates per latent.
    """
    import pandas as pd

    source = cache if isinstance(cache, CacheSource) else CacheSource(cache)
    if source.d != sae.d_in:
        raise ValueError(f"SAE d_in={sae.d_in} does not match the cache's width {source.d}.")
    latents = list(latents)
    index = torch.as_tensor(latents, dtype=torch.long)
    best_vals = torch.full((len(latents), k), -float("inf"))
    best_where = torch.zeros(len(latents), k, 2, dtype=torch.long)  # (shard, row)
    for shard in tqdm(range(len(source.shards)), desc="top activations", disable=not progress, unit="shard"):
        acts = source.shard_activations(shard)
        for start in range(0, len(acts), batch_size):
            x = acts[start : start + batch_size].to(device=sae.device, dtype=sae.dtype)
            f = sae.encode(x)[:, index.to(sae.device)].float().cpu()  # [rows, n_latents]
            vals = torch.cat([best_vals, f.T], dim=1)
            rows = torch.arange(start, start + len(x))
            where = torch.cat([best_where, torch.stack([torch.full_like(rows, shard), rows], 1)
                               .expand(len(latents), -1, -1)], dim=1)
            top = vals.topk(k, dim=1)
            best_vals = top.values
            best_where = torch.gather(where, 1, top.indices[..., None].expand(-1, -1, 2))
    records: list[dict[str, Any]] = []
    token_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, latent in enumerate(latents):
        for rank in range(k):
            value = float(best_vals[i, rank])
            if value <= 0:
                break
            shard, row = (int(v) for v in best_where[i, rank])
            if shard not in token_cache:
                token_cache[shard] = source.tokens_of_rows(shard)
            token_ids, positions = token_cache[shard]
            context_size = token_ids.shape[1]
            flat = int(positions[row])
            w, pos = divmod(flat, context_size)
            lo, hi = max(0, pos - window), min(context_size, pos + 4)
            records.append({
                "latent": latent, "rank": rank, "activation": value, "shard": shard, "row": row,
                "token_id": int(token_ids[w, pos]), "context_ids": token_ids[w, lo:hi].tolist(), "focus": pos - lo,
            })
    return pd.DataFrame(records, columns=["latent", "rank", "activation", "shard", "row", "token_id",
                                          "context_ids", "focus"])


def contexts_html(table: pd.DataFrame, tokenizer: Any, max_rows_per_latent: int = 5) -> str:
    """An HTML table of top contexts, the activating token highlighted (opacity ~ activation)."""
    parts = ['<table class="sae-contexts"><tr><th>latent</th><th>activation</th><th>context</th></tr>']
    for latent, group in table.groupby("latent", sort=False):
        top = group["activation"].max()
        for _, row in group.head(max_rows_per_latent).iterrows():
            pieces = []
            for j, tok in enumerate(row["context_ids"]):
                text = html.escape(tokenizer.decode([tok])).replace("\n", "⏎")
                if j == row["focus"]:
                    alpha = 0.25 + 0.75 * row["activation"] / top
                    text = f'<b style="background: rgba(255,140,0,{alpha:.2f})">{text}</b>'
                pieces.append(text)
            parts.append(f"<tr><td>{latent}</td><td>{row['activation']:.2f}</td>"
                         f"<td style='text-align:left; font-family:monospace'>{''.join(pieces)}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- statistics
def _source(cache: str | os.PathLike | CacheSource, sae: SAE) -> CacheSource:
    source = cache if isinstance(cache, CacheSource) else CacheSource(cache)
    if source.d != sae.d_in:
        raise ValueError(f"SAE d_in={sae.d_in} does not match the cache's width {source.d}.")
    return source


def _encoded_batches(sae: SAE, source: CacheSource, batch_size: int, progress: bool, desc: str,
                     index: torch.Tensor | None = None):
    """``sae.encode`` of every cache row, in order, one batch at a time (columns ``index`` only)."""
    for shard in tqdm(range(len(source.shards)), desc=desc, disable=not progress, unit="shard"):
        acts = source.shard_activations(shard)
        for start in range(0, len(acts), batch_size):
            f = sae.encode(acts[start : start + batch_size].to(device=sae.device, dtype=sae.dtype))
            yield f if index is None else f[:, index.to(f.device)]


@torch.no_grad()
def firing_density(
    sae: SAE, cache: str | os.PathLike | CacheSource, batch_size: int = 8192, progress: bool = True
) -> np.ndarray:
    """Every latent's firing density: the fraction of the cache's tokens on which it is nonzero.

    One streaming pass (memory: one shard and one batch of latents)."""
    source = _source(cache, sae)
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    for f in _encoded_batches(sae, source, batch_size, progress, "density"):
        counts += (f != 0).sum(0).double().cpu()
    return (counts / source.n).numpy()


class LatentStatistics(NamedTuple):
    """Firing statistics of some latents over a cache (row ``i`` is ``latents[i]``).

    ``density``: fraction of tokens on which the latent is nonzero; ``histogram [n, bins]``:
    counts of its nonzero activations in ``bins`` equal bins over ``edges[i]`` (from
    ``min(0, smallest)`` to its largest activation; the last bin includes its right edge,
    as ``numpy.histogram``'s does).
    """

    latents: list[int]
    n_tokens: int
    density: np.ndarray
    max_activation: np.ndarray
    histogram: np.ndarray
    edges: np.ndarray


@torch.no_grad()
def latent_statistics(
    sae: SAE,
    cache: str | os.PathLike | CacheSource,
    latents: Sequence[int],
    bins: int = 20,
    batch_size: int = 8192,
    progress: bool = True,
) -> LatentStatistics:
    """Firing density and the histogram of activations when firing, for ``latents``.

    Two streaming passes over the cache: the first finds each latent's range, the second
    counts. Memory holds one shard and the counts.
    """
    source = _source(cache, sae)
    latents = [int(j) for j in latents]
    index = torch.as_tensor(latents, dtype=torch.long)
    n = len(latents)
    fires = torch.zeros(n, dtype=torch.float64)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.zeros(n, dtype=torch.float64)
    for f in _encoded_batches(sae, source, batch_size, progress, "latent ranges", index):
        f = f.double().cpu()
        active = f != 0
        fires += active.sum(0)
        lo = torch.minimum(lo, f.amin(0))  # inactive entries are 0, inside [min(0, lo), hi] anyway
        hi = torch.maximum(hi, f.amax(0))
    edges = torch.stack([torch.linspace(float(a), float(b), bins + 1, dtype=torch.float64)
                         for a, b in zip(lo, hi, strict=True)]) if n else torch.zeros(0, bins + 1)
    counts = torch.zeros(n * bins, dtype=torch.float64)
    for f in _encoded_batches(sae, source, batch_size, progress, "latent histograms", index):
        f = f.double().cpu()
        rows, cols = (f != 0).nonzero(as_tuple=True)
        if not len(rows):
            continue
        values = f[rows, cols]
        # numpy.histogram's rule: bin b holds edges[b] <= v < edges[b+1], the last bin also v == edges[-1]
        bucket = (values[:, None] >= edges[cols, 1:-1]).sum(1)
        counts += torch.bincount(cols * bins + bucket, minlength=n * bins).double()
    return LatentStatistics(latents, source.n, (fires / source.n).numpy(), hi.numpy(),
                            counts.view(n, bins).long().numpy(), edges.numpy())


# ----------------------------------------------------------------------------- logit lens
#: Sites whose activations are written into (or are) the residual stream, where the
#: unembedding applies. Others (``attn.hook_z``, ``mlp.hook_post`` ...) live in other bases.
RESIDUAL_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out",
                  "hook_embed", "hook_pos_embed")


def unembedding(model: Any, ln_scale: bool = True) -> torch.Tensor:
    """The matrix ``[d_model, d_vocab]`` through which a residual-stream direction is read
    as logits: ``W_U``, or with ``ln_scale`` ``diag(w) W_U`` for the final norm's scale ``w``.

    The final norm divides the residual stream by a positive scalar (its RMS, or standard
    deviation) and multiplies it elementwise by its learned scale ``w``. The scalar does not
    change which tokens a direction promotes; ``w`` does, so by default it is folded in
    (as TransformerLens's ``fold_ln`` does). For a LayerNorm model the norm also removes
    the mean across dimensions; apply :func:`direction_logits`, which centres directions
    first for such models. A model whose norm weights were already folded into ``W_U``
    has no ``ln_final.weight`` and is used as it is.
    """
    W_U = model.W_U.detach()
    weight = getattr(getattr(model, "ln_final", None), "weight", None)
    if ln_scale and weight is not None:
        W_U = weight.detach().to(W_U)[:, None] * W_U
    return W_U


@torch.no_grad()
def direction_logits(model: Any, directions: torch.Tensor, ln_scale: bool = True) -> torch.Tensor:
    """Logits ``[n, d_vocab]`` of residual-stream ``directions [n, d_model]`` (see :func:`unembedding`)."""
    W_U = unembedding(model, ln_scale)
    d = directions.detach().to(W_U)
    if d.ndim != 2 or d.shape[1] != W_U.shape[0]:
        raise ValueError(f"Directions must be [n, d_model={W_U.shape[0]}], got shape {tuple(d.shape)}.")
    if str(getattr(model.cfg, "normalization_type", "")).startswith("LN"):
        d = d - d.mean(1, keepdim=True)  # LayerNorm centres before scaling
    return d @ W_U


def logit_tokens(
    model: Any,
    directions: torch.Tensor,
    k: int = 10,
    ln_scale: bool = True,
    labels: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """The ``k`` tokens each direction promotes most (``side="top"``) and least (``"bottom"``).

    Returns a DataFrame with columns ``latent`` (``labels[i]``, default ``i``), ``side``,
    ``rank``, ``token_id``, ``token`` (the decoded string) and ``logit``.
    """
    import pandas as pd

    logits = direction_logits(model, directions, ln_scale).float().cpu()
    labels = list(range(len(logits))) if labels is None else list(labels)
    k = min(k, logits.shape[1])
    top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
    records = []
    for i, label in enumerate(labels):
        for side, result in (("top", top), ("bottom", bottom)):
            for rank, (value, tok) in enumerate(zip(result.values[i].tolist(), result.indices[i].tolist(),
                                                    strict=True)):
                records.append({"latent": label, "side": side, "rank": rank, "token_id": tok,
                                "token": model.tokenizer.decode([tok]), "logit": value})
    return pd.DataFrame(records, columns=["latent", "side", "rank", "token_id", "token", "logit"])


def decoder_logit_tokens(
    sae: SAE, model: Any, latents: Sequence[int], k: int = 10, ln_scale: bool = True
) -> pd.DataFrame:
    """:func:`logit_tokens` of the decoder rows ``W_dec[j]`` of ``latents``.

    Meaningful for SAEs on residual-stream sites (:data:`RESIDUAL_SITES`); an SAE whose
    ``metadata["hook_name"]`` names another site is refused.
    """
    hook = sae.metadata.get("hook_name")
    if hook is not None and not str(hook).endswith(RESIDUAL_SITES):
        raise ValueError(
            f"The SAE was trained on {hook!r}, which is not in the residual stream's basis, so its decoder "
            f"rows cannot be read through the unembedding. Residual sites end with one of {RESIDUAL_SITES}."
        )
    latents = [int(j) for j in latents]
    return logit_tokens(model, sae.W_dec.detach()[latents], k, ln_scale, labels=latents)


# ----------------------------------------------------------------------------- cards
def token_html(text: str) -> str:
    """A token as HTML: escaped, spaces shown as ``␣`` and newlines as ``⏎``."""
    return ("<code style='white-space:pre'>" + html.escape(text).replace(" ", "␣").replace("\n", "⏎")
            + "</code>")


def tokens_html(table: pd.DataFrame, side: str) -> str:
    """One line of the ``side`` (``"top"``/``"bottom"``) tokens of a :func:`logit_tokens` table."""
    rows = table[table.side == side].sort_values("rank")
    return " ".join(f"{token_html(r.token)}&nbsp;<small>{r.logit:+.2f}</small>" for r in rows.itertuples())


def histogram_svg(counts: Sequence[float], edges: Sequence[float], width: int = 180, height: int = 44) -> str:
    """A small inline SVG bar chart of a histogram, with its range written underneath."""
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return "<i>never fires</i>"
    bar = width / len(counts)
    top = counts.max()
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - h:.1f}" width="{max(bar - 1, 1):.1f}" height="{h:.1f}" '
        f'fill="#66a61e"/>' for i, h in enumerate(counts / top * height)
    )
    return (f'<svg width="{width}" height="{height}" style="background:#f6f6f6">{bars}</svg><br>'
            f"<small>{edges[0]:.3g} to {edges[-1]:.3g}; tallest bar {int(top):,}</small>")


def latent_card_html(
    latent: int,
    *,
    title: str | None = None,
    density: float | None = None,
    histogram: tuple[Sequence[float], Sequence[float]] | None = None,
    logits: pd.DataFrame | None = None,
    contexts: pd.DataFrame | None = None,
    tokenizer: Any = None,
    extra: dict[str, str] | None = None,
    max_contexts: int = 5,
) -> str:
    """A latent's "card": an HTML table with the parts that are given.

    ``density`` (fraction of tokens), ``histogram`` (``(counts, edges)`` of activations when
    firing), ``logits`` (a :func:`logit_tokens` table: its top and bottom tokens),
    ``contexts`` (a :func:`top_activating_contexts` table, rendered by :func:`contexts_html`
    with ``tokenizer``) and ``extra`` rows (label -> HTML). Show it with
    ``IPython.display.HTML``.
    """
    rows = []
    if density is not None:
        rows.append(("firing density", f"{density:.3%} of tokens"))
    if histogram is not None:
        rows.append(("activations when firing", histogram_svg(*histogram)))
    if logits is not None:
        rows.append(("promotes (top logits)", tokens_html(logits, "top")))
        rows.append(("suppresses (bottom logits)", tokens_html(logits, "bottom")))
    for label, value in (extra or {}).items():
        rows.append((label, value))
    if contexts is not None:
        if tokenizer is None:
            raise ValueError("Rendering contexts needs the tokenizer (model.tokenizer).")
        rows.append(("top contexts", contexts_html(contexts, tokenizer, max_contexts) if len(contexts)
                     else "<i>no activation in the cache</i>"))
    body = "".join(f"<tr><th style='text-align:left; vertical-align:top'>{html.escape(label)}</th>"
                   f"<td style='text-align:left'>{value}</td></tr>" for label, value in rows)
    heading = html.escape(title if title is not None else f"Latent {latent}")
    return (f"<table class='sae-latent-card' style='margin-bottom:1em; border:1px solid #ccc'>"
            f"<tr><th colspan='2' style='text-align:left; background:#eee'>{heading}</th></tr>{body}</table>")


def latent_cards(
    sae: SAE,
    model: Any,
    cache: str | os.PathLike | CacheSource,
    latents: Sequence[int],
    *,
    k_contexts: int = 5,
    k_tokens: int = 8,
    bins: int = 20,
    ln_scale: bool = True,
    window: int = 12,
    extra: dict[int, dict[str, str]] | None = None,
    batch_size: int = 8192,
    progress: bool = True,
    as_list: bool = False,
) -> str | list[str]:
    """The cards (:func:`latent_card_html`) of ``latents``, as one HTML string (``as_list``:
    one string per latent).

    Computes, streaming the cache: :func:`latent_statistics` (density and histogram, two
    passes) and :func:`top_activating_contexts` (one pass); and without the cache
    :func:`decoder_logit_tokens`. ``extra[latent]`` adds rows to a latent's card.
    """
    source = _source(cache, sae)
    latents = [int(j) for j in latents]
    stats = latent_statistics(sae, source, latents, bins, batch_size, progress)
    contexts = top_activating_contexts(sae, source, latents, k=k_contexts, window=window, batch_size=batch_size,
                                       progress=progress)
    logits = decoder_logit_tokens(sae, model, latents, k_tokens, ln_scale)
    cards = []
    for i, latent in enumerate(latents):
        cards.append(latent_card_html(
            latent, density=float(stats.density[i]), histogram=(stats.histogram[i], stats.edges[i]),
            logits=logits[logits.latent == latent], contexts=contexts[contexts.latent == latent],
            tokenizer=model.tokenizer, extra=(extra or {}).get(latent), max_contexts=k_contexts,
        ))
    return cards if as_list else "\n".join(cards)
