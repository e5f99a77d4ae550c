"""Novel and reconstruction latents: what each latent of a larger SAE adds to a smaller one.

:func:`analyze` measures, for every larger-SAE latent at once, the change of MSE when it
alone is inserted into the smaller SAE (closed form, streamed over the data), its max
decoder cosine to the smaller SAE (blockwise, bounded memory), the class (``novel``:
inserting it lowers the MSE) and how well the cosine proxy predicts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..data.sources import as_source
from ..evaluation.metrics import cosine_blocks
from ..saes.base import SAE
from ..saes.initial import decoder_drift
from ..training.health import NEAR_INITIAL_COSINE
from .surgery import check_compatible, check_same_site, prepare

if TYPE_CHECKING:
    import pandas as pd

#: Elements of a [rows, latents] float32 matrix per streamed chunk (256 MiB).
CHUNK_ELEMENTS = 1 << 26


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


@torch.no_grad()
def cosine_nulls(small: SAE, large: SAE, seed: int = 0, block: int = 2048) -> dict[str, np.ndarray]:
    """Each larger-SAE latent's max decoder cosine to the smaller SAE, and the same under two nulls.

    ``"trained"``: the SAEs as they are; ``"random"``: as many random
    unit directions (Gaussian, ``torch.Generator().manual_seed(seed)``) in ``d_in`` as each SAE
    has latents; ``"initial"``: the two SAEs' decoders at initialisation (redrawn from their
    ``training_config``; left out when either SAE has none). A threshold on ``max_cos`` at or
    below the nulls' upper quantiles separates nothing that training made.
    """
    from ..evaluation.agreement import agreement_nulls

    return {null: result.best_cosine for null, result in agreement_nulls(large, small, seed=seed, block=block).items()}


def trained_latents(sae: SAE, near_initial_cosine: float = NEAR_INITIAL_COSINE) -> np.ndarray | None:
    """Per latent, whether its decoder row left its initial direction (cosine to it at most
    ``near_initial_cosine``, as in the health checks); ``None`` without a ``training_config``."""
    if not sae.training_config:
        return None
    return (decoder_drift(sae) <= near_initial_cosine).numpy()


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
        ``density`` (firing frequency on ``activations``), ``dead``, ``novel``
        (``delta_mse < 0``; dead latents are never novel) and ``trained`` (the latent left its
        initial direction: :func:`trained_latents`; missing when ``large`` has no
        ``training_config``).
    summary : dict
        ``n_latents``, ``n_dead``, ``n_novel``, ``frac_novel`` (of the live latents),
        ``n_trained`` and ``frac_novel_trained`` (of the live latents that left their initial
        direction; ``nan`` without a ``training_config``), ``threshold``, ``threshold_fitted``
        (bool), ``proxy_accuracy`` (on the live latents), ``majority_accuracy`` (the accuracy
        of always predicting the more common class, the proxy's baseline) and ``n_tokens``.
    """
    import pandas as pd

    trained = trained_latents(large)
    small, large = prepare(small), prepare(large)
    check_same_site(small, large)
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
    if trained is not None:
        table["trained"] = trained
    live = table[~table.dead]
    live_trained = live[live.trained] if trained is not None else live.iloc[:0]
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
        "n_trained": int(trained.sum()) if trained is not None else None,
        "frac_novel_trained": float(live_trained.novel.mean()) if len(live_trained) else math.nan,
        "threshold": float(threshold),
        "threshold_fitted": fitted,
        "proxy_accuracy": accuracy,
        "majority_accuracy": float(max(live.novel.mean(), 1 - live.novel.mean())) if len(live) else math.nan,
        "n_tokens": effect.n_tokens,
    }
    return table, summary
