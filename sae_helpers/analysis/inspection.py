"""Reading latents through the text that activates them.

``top_activating_contexts`` streams an activation cache (the token ids are stored
beside the activations) and keeps, per latent, the ``k`` tokens on which it fires
hardest; ``contexts_html`` renders them as an HTML table with the token highlighted.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from .._progress import tqdm
from ..data.cache import CacheSource
from ..saes.base import SAE


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
