"""Meta-SAEs: SAEs trained on the decoder directions of another SAE.

A meta-SAE (Bussmann et al. 2025, "Showing SAE latents are not atomic using meta-SAEs")
takes each unit-norm decoder row of a *base* SAE as one training example and learns a
sparse dictionary of *meta-latents* that reconstructs them. A base latent then reads as
a few meta-latents with coefficients ("Einstein" = scientist + Germany + famous person),
and a meta-latent as the base latents that activate it most. The paper's setting: a
BatchTopK meta-SAE with 2,304 meta-latents on a 49,152-latent SAE, ``k = 4``, Adam with
learning rate 1e-4, batches of 4,096 rows, 2,000 epochs; it explains 55.47% of the
variance of the decoder rows.

:func:`train_meta_sae` trains one with :func:`~sae_helpers.train_sae` on the rows (a
tensor source: every epoch visits each row once, in a fresh random order). What the
trainer's defaults, made for language-model activations, mean here:

* **no activation scaling** (``normalize_activations=False``): the rows already have unit
  norm, and the paper's learning rate refers to them as they are (the trainer would
  otherwise scale them to norm ``sqrt(d)``);
* **no resampling** (BatchTopK's default): dead meta-latents are revived by the aux-k loss,
  and a meta-latent counts as dead after one epoch without firing (``dead_after`` = the
  steps of one epoch; the trainer's default of 10M tokens means nothing for a few
  thousand rows);
* **Adam with momentum** (``adam_beta1=0.9``, PyTorch's default, as in the paper's code;
  the trainer's default of 0 follows the Gated SAE paper). The trainer's learning-rate
  warm-up and final linear decay are kept;
* **the inference threshold's moving average spans the last tenth of the run**
  (:func:`threshold_rate`; 0.01, the default, for runs of 1,000 steps and more);
* **a seed of its own** (``SEED_OFFSET + seed``): with the base SAE's seed, its initial
  meta-decoder would be the base SAE's initial first rows (see :func:`meta_config`).

Every one of these is a keyword option of :func:`train_meta_sae`. The returned meta-SAE
is an ordinary SAE (a BatchTopK SAE is saved as the JumpReLU SAE with its threshold), so
``save`` / ``load_sae`` work on it; :func:`analyse_meta_sae` computes the numbers of
:class:`MetaSAEResult` for any meta-SAE and base SAE.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .evaluation.metrics import max_cosine_similarity
from .saes.base import SAE
from .saes.topk import Selection, decode_selection
from .training.checkpoint import has_checkpoint, read_checkpoint
from .training.config import TrainConfig
from .training.trainer import train_sae

#: Added to ``seed`` to seed the meta-SAE's training (see :func:`meta_config`).
SEED_OFFSET = 1_000_000

#: The paper's meta-SAE settings (Bussmann et al. 2025).
PAPER = {"base_width": 49_152, "width": 2_304, "k": 4, "lr": 1e-4, "batch_size": 4_096, "epochs": 2_000,
         "fve": 0.5547}


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
    """

    fve: float
    l0: float
    dead_fraction: float
    decompositions: list[list[tuple[int, float]]]
    top_base_latents: list[list[tuple[int, float]]]
    reconstruction_cosine: np.ndarray


def decoder_directions(sae: SAE | Tensor) -> Tensor:
    """The base SAE's decoder rows ``[d_sae, d_in]`` scaled to unit norm (float32, CPU).

    A tensor is taken as the rows themselves."""
    rows = sae.W_dec if isinstance(sae, SAE) else sae
    rows = rows.detach().to("cpu", torch.float32)
    if rows.ndim != 2:
        raise ValueError(f"Decoder rows must be a 2-D [d_sae, d_in] tensor, got shape {tuple(rows.shape)}.")
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _sha256(rows: Tensor) -> str:
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def meta_config(
    n_rows: int,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = 1e-4,
    batch_size: int = 4_096,
    **options: Any,
) -> TrainConfig:
    """The :class:`~sae_helpers.TrainConfig` with which :func:`train_meta_sae` trains a meta-SAE
    on ``n_rows`` decoder rows (arguments as there).

    Its ``seed`` is ``SEED_OFFSET + seed``: the trainer draws the initial decoder row by row
    from its seed, so two SAEs of the same input width and seed start with the same first
    rows. A meta-SAE seeded like its base SAE would start with its meta-latents *equal* to
    the base SAE's first initial rows (and to those of every other SAE of that seed), which
    after a short base training are still close to the trained rows.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    batch_size = min(int(batch_size), n_rows)
    steps = math.ceil(epochs * n_rows / batch_size)
    sae_options = {"threshold_rate": threshold_rate(steps), **(options.pop("sae_options", None) or {})}
    settings = {"normalize_activations": False, "adam_beta1": 0.9, "dead_after": math.ceil(n_rows / batch_size),
                **options}
    return TrainConfig(arch="batchtopk", width=width if width is not None else max(1, n_rows // 4), k=k,
                       steps=steps, batch_size=batch_size, lr=lr, seed=SEED_OFFSET + seed, sae_options=sae_options,
                       **settings)


def threshold_rate(steps: int) -> float:
    """The rate of the BatchTopK threshold's moving average for a run of ``steps``:
    ``10 / steps`` clipped to [0.01, 0.1], so that the average spans about the last tenth
    of the run (inside the final learning-rate decay). Long runs keep the default 0.01
    (the paper's 24,000 steps do); with it, a run of about a hundred steps ends with a
    threshold that has not settled (one run of 113 steps: inference L0 8.4 for ``k = 4``)."""
    return min(0.1, max(0.01, 10 / steps))


def train_meta_sae(
    sae: SAE | Tensor,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = 1e-4,
    batch_size: int = 4_096,
    *,
    n_top: int = 10,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, MetaSAEResult]:
    """Train a BatchTopK meta-SAE on the unit-norm decoder rows of ``sae``.

    Parameters
    ----------
    sae : the base SAE (or its ``[d_sae, d_in]`` decoder rows).
    width : meta-latents; default ``d_sae // 4`` (SAEBench's choice; the paper's 2,304 for
        49,152 is about ``d_sae / 21``).
    k : active meta-latents per base latent, on average over a batch (paper: 4).
    epochs : passes over the rows; the run takes ``ceil(epochs * d_sae / batch_size)``
        optimiser steps (paper: 2,000 epochs).
    seed : initialisation and row order (the trainer gets ``SEED_OFFSET + seed``; see
        :func:`meta_config`).
    lr, batch_size : Adam learning rate and rows per step (paper: 1e-4, 4,096); a batch
        larger than ``d_sae`` is cut to ``d_sae`` rows. Batches are cut from the endless
        sequence of epochs, so the last batch of an epoch may continue into the next.
    n_top : base latents kept per meta-latent in ``result.top_base_latents``.
    checkpoint_dir : as for :func:`train_sae`: checkpoints, log and the final SAE go there,
        and a rerun resumes (or returns the finished run at once). The checkpoint records a
        hash of the decoder rows; another base SAE in the same directory is an error.
    device, progress : as for :func:`train_sae`.
    options : further :class:`~sae_helpers.TrainConfig` fields; they override the
        defaults of this module (``normalize_activations=False``, ``adam_beta1=0.9``,
        ``dead_after`` = one epoch, ``sae_options={"threshold_rate": threshold_rate(steps)}``).

    Returns
    -------
    (meta_sae, result)
        The trained meta-SAE (inference form: a JumpReLU SAE with the BatchTopK threshold)
        and its :class:`MetaSAEResult` on the rows.
    """
    rows = decoder_directions(sae)
    n = rows.shape[0]
    cfg = meta_config(n, width, k, epochs, seed, lr, batch_size, **options)
    digest = _sha256(rows)
    base_metadata = dict(sae.metadata) if isinstance(sae, SAE) else {}
    metadata = {
        "model_name": base_metadata.get("model_name"),
        "hook_name": None,  # inputs are decoder directions, not activations at a site
        "context_size": None,
        "meta_sae": {"base_d_sae": n, "base_metadata": base_metadata, "decoder_sha256": digest,
                     "epochs": epochs, "k": k},
    }
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and has_checkpoint(ckpt):
        _, info = read_checkpoint(ckpt)
        saved = (info.get("metadata") or {}).get("meta_sae", {}).get("decoder_sha256")
        if saved != digest:
            raise ValueError(
                f"{ckpt} holds a meta-SAE checkpoint trained on other decoder rows (another base SAE). "
                "Use a checkpoint_dir per base SAE, or delete this one to start over."
            )
    meta = train_sae(rows, **cfg.to_dict(), checkpoint_dir=ckpt, resume=ckpt is not None, device=device,
                     metadata=metadata, progress=progress)
    return meta, analyse_meta_sae(meta, sae, n_top=n_top)


@torch.no_grad()
def analyse_meta_sae(meta_sae: SAE, sae: SAE | Tensor, n_top: int = 10, batch_size: int = 4096) -> MetaSAEResult:
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
        r, c = f.nonzero(as_tuple=True)  # row-major: sorted by row
        v = f[r, c]
        # f @ W_dec + b_dec through the few active rows (f is sparse; the dense matmul costs as much as encoding)
        offsets = torch.searchsorted(r, torch.arange(len(x), device=r.device))
        x_hat = decode_selection(Selection(r, c, v, offsets), meta_sae.W_dec, meta_sae.b_dec).double().cpu()
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
    from .analysis.inspection import decoder_logit_tokens, latent_card_html, logit_tokens, tokens_html

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
