"""What a meta-SAE found: its FVE, the decompositions of base latents, and the meta-latent cards."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..evaluation.metrics import max_cosine_similarity
from ..kernels.sparse import Support, embedding_decode
from ..saes.base import SAE
from .nulls import decoder_directions


class MetaSAEResult(NamedTuple):
    """What a meta-SAE makes of a base SAE's decoder rows (all from the inference encoder).

    ``fve``: fraction of variance explained, ``1 - sum_i ||d_i - d_hat_i||^2 / sum_i ||d_i - mean(d)||^2``
    over the unit-norm base decoder rows ``d_i`` (float64 sums).
    ``l0``: mean number of active meta-latents per base latent (a BatchTopK meta-SAE
    trained with ``k`` should give about ``k``).
    ``dead_fraction``: meta-latents active on no row.
    ``decompositions[i]``: base latent ``i``'s active meta-latents as ``(meta_latent,
    coefficient)`` pairs, largest coefficient first.
    ``top_base_latents[m]``: the (up to ``n_top``) base latents that activate meta-latent
    ``m`` most, as ``(base_latent, activation)`` pairs, largest first.
    ``reconstruction_cosine[i]``: cosine between base decoder row ``i`` and its reconstruction.
    ``fve_null``: the FVE of the same meta-SAE configuration (width, k, steps, learning rate,
    batch size, seed) trained on as many random unit rows of the same width
    (:func:`random_unit_rows`): what a meta-SAE of this size explains of rows that share no
    structure. NaN when not computed (``train_meta_sae(..., null=False)``,
    :func:`analyze_meta_sae`).
    """

    fve: float
    l0: float
    dead_fraction: float
    decompositions: list[list[tuple[int, float]]]
    top_base_latents: list[list[tuple[int, float]]]
    reconstruction_cosine: np.ndarray
    fve_null: float = math.nan


@torch.no_grad()
def analyze_meta_sae(meta_sae: SAE, sae: SAE | Tensor, n_top: int = 10, batch_size: int = 4096) -> MetaSAEResult:
    """The :class:`MetaSAEResult` of ``meta_sae`` on the unit-norm decoder rows of ``sae``.

    Rows go through ``meta_sae.encode`` / ``decode`` in batches; sums accumulate in float64.
    """
    rows = decoder_directions(sae)
    if rows.shape[1] != meta_sae.d_in:
        raise ValueError(f"The meta-SAE takes rows of width {meta_sae.d_in}; the decoder rows have width "
                         f"{rows.shape[1]}.")
    n = rows.shape[0]
    mean = rows.double().mean(0)
    sq_error = total = 0.0
    cosines = []
    all_rows, all_cols, all_vals = [], [], []
    for start in range(0, n, batch_size):
        x = rows[start : start + batch_size]
        f = meta_sae.encode(x.to(device=meta_sae.device, dtype=meta_sae.dtype))
        support = Support.from_dense(f)  # row-major: sorted by row
        r, c, v = support.rows, support.cols, support.gather(f)
        # f @ W_dec + b_dec through the few active rows (f is sparse; the dense matmul costs as much as encoding)
        x_hat = embedding_decode(support, v, meta_sae.W_dec, meta_sae.b_dec).double().cpu()
        sq_error += float((x.double() - x_hat).pow(2).sum())
        cosines.append(torch.nn.functional.cosine_similarity(x.double(), x_hat, dim=1))
        total += float((x.double() - mean).pow(2).sum())
        all_rows.append(r.cpu() + start)
        all_cols.append(c.cpu())
        all_vals.append(v.float().cpu())
    r, c, v = torch.cat(all_rows), torch.cat(all_cols), torch.cat(all_vals)
    # decompositions: by row, largest coefficient first
    order = torch.sort(v, descending=True, stable=True).indices
    order = order[torch.sort(r[order], stable=True).indices]
    decompositions = _group(r[order], c[order], v[order], n)
    # top base latents: by meta-latent, largest activation first
    order = torch.sort(v, descending=True, stable=True).indices
    order = order[torch.sort(c[order], stable=True).indices]
    top = [group[:n_top] for group in _group(c[order], r[order], v[order], meta_sae.d_sae)]
    active = torch.zeros(meta_sae.d_sae, dtype=torch.bool)
    active[c] = True
    return MetaSAEResult(
        fve=1.0 - sq_error / total if total > 0 else math.nan,
        l0=len(v) / n,
        dead_fraction=float((~active).double().mean()),
        decompositions=decompositions,
        top_base_latents=top,
        reconstruction_cosine=torch.cat(cosines).numpy(),
    )


def _group(keys: Tensor, items: Tensor, values: Tensor, n_groups: int) -> list[list[tuple[int, float]]]:
    """Split ``(item, value)`` pairs sorted by ``keys`` into one list per key ``0..n_groups-1``."""
    counts = torch.bincount(keys, minlength=n_groups).tolist()
    pairs = list(zip(items.tolist(), values.tolist(), strict=True))
    out, start = [], 0
    for count in counts:
        out.append(pairs[start : start + count])
        start += count
    return out


def pick_decompositions(
    result: MetaSAEResult, n: int = 3, min_coefficient: float = 0.2, candidates: Any = None,
    min_cosine: float | None = None,
) -> list[int]:
    """``n`` base latents worth reading: those split into the most meta-latents with a
    coefficient of at least ``min_coefficient``, ties broken by the summed coefficient of
    those meta-latents, then by the lower index. ``candidates`` (indices, or a boolean mask
    over base latents, e.g. latents that fire on held-out text) restricts the choice, and so
    does ``min_cosine``: only latents whose decomposition reconstructs their direction with
    at least that cosine (a direction the meta-SAE explains badly splits into many small,
    arbitrary pieces)."""
    allowed = range(len(result.decompositions))
    if candidates is not None:
        mask = np.asarray(candidates)
        allowed = np.flatnonzero(mask).tolist() if mask.dtype == bool else [int(i) for i in mask]
    if min_cosine is not None:
        allowed = [i for i in allowed if result.reconstruction_cosine[i] >= min_cosine]
    scored = []
    for i in allowed:
        strong = [c for _, c in result.decompositions[i] if c >= min_coefficient]
        scored.append((-len(strong), -sum(strong), i))
    return [i for *_, i in sorted(scored)[:n]]


@torch.no_grad()
def max_cosine_to_others(directions: Tensor, block: int = 4096) -> Tensor:
    """For every row, its max cosine similarity to any *other* row (float64)."""
    x = directions.detach().double().cpu()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], block):
        sims = x[start : start + block] @ x.T
        idx = torch.arange(start, min(start + block, x.shape[0]))
        sims[idx - start, idx] = -math.inf
        out[start : start + block] = sims.max(dim=1).values
    return out


def similarity_to_smaller_sae(meta_sae: SAE, base_sae: SAE, smaller_sae: SAE) -> dict[str, np.ndarray]:
    """Max cosine similarities that ask whether meta-latents resemble a smaller SAE's latents.

    ``"meta → smaller"``: each meta-decoder row against the smaller SAE's decoder rows;
    ``"base → smaller"``: each base decoder row against the smaller SAE's;
    ``"base → other base"``: each base decoder row against the other base rows.
    """
    return {
        "meta → smaller": max_cosine_similarity(meta_sae.W_dec, smaller_sae.W_dec).numpy(),
        "base → smaller": max_cosine_similarity(base_sae.W_dec, smaller_sae.W_dec).numpy(),
        "base → other base": max_cosine_to_others(base_sae.W_dec).numpy(),
    }


def meta_latent_cards(
    meta_sae: SAE,
    result: MetaSAEResult,
    meta_latents: Any,
    model: Any,
    base_sae: SAE,
    *,
    coefficients: dict[int, float] | None = None,
    n_base: int = 6,
    k_tokens: int = 6,
    ln_scale: bool = True,
) -> str:
    """HTML cards of meta-latents, read as the paper reads them.

    Each card gives the share of base latents whose decomposition uses the meta-latent,
    the tokens its meta-decoder direction promotes and suppresses through the
    unembedding (meta-decoder rows live in the base SAE's activation space), and the
    ``n_base`` base latents that activate it most, each with its own top tokens.
    ``coefficients[m]``, if given, is shown in the title (e.g. the meta-latent's
    coefficient in a decomposition being read).
    """
    from ..analysis.inspection import decoder_logit_tokens, latent_card_html, logit_tokens, tokens_html

    meta_latents = [int(m) for m in meta_latents]
    uses = np.zeros(meta_sae.d_sae, dtype=np.int64)
    for pairs in result.decompositions:
        for m, _ in pairs:
            uses[m] += 1
    meta_logits = logit_tokens(model, meta_sae.W_dec.detach()[meta_latents], k_tokens, ln_scale,
                               labels=meta_latents)
    base_ids = sorted({i for m in meta_latents for i, _ in result.top_base_latents[m][:n_base]})
    base_logits = decoder_logit_tokens(base_sae, model, base_ids, k_tokens, ln_scale) if base_ids else None
    cards = []
    for m in meta_latents:
        lines = []
        for i, activation in result.top_base_latents[m][:n_base]:
            assert base_logits is not None
            lines.append(f"<tr><td>{i}</td><td>{activation:.3f}</td>"
                         f"<td style='text-align:left'>{tokens_html(base_logits[base_logits.latent == i], 'top')}"
                         "</td></tr>")
        table = ("<table><tr><th>base latent</th><th>activation</th><th>its top tokens</th></tr>"
                 + "".join(lines) + "</table>") if lines else "<i>activated by no base latent</i>"
        title = f"Meta-latent {m}" + (f" (coefficient {coefficients[m]:.3f})" if coefficients and m in coefficients
                                      else "")
        share = f"{uses[m] / len(result.decompositions):.2%} of base latents ({uses[m]:,})"
        cards.append(latent_card_html(
            m, title=title, logits=meta_logits[meta_logits.latent == m],
            extra={"used by": share, "base latents that activate it most": table},
        ))
    return "\n".join(cards)
