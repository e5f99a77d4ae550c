"""Cross-seed dictionary agreement: how many decoder directions two SAEs of one site share.

Paulo & Belrose (2025, "Sparse Autoencoders Trained on the Same Data Learn Different
Features") train SAEs that differ only in their seed and find 30-53% of the latents shared
at cosine > 0.7. They pair latents one-to-one (Hungarian algorithm on cosine similarity) and
require both the encoder and the decoder cosine of a pair to pass the threshold. Here a
latent's partner is simply its best-matching decoder row of the other SAE, several latents
may share one partner, and only decoders count. Each latent's best cosine is at least its
cosine under any one-to-one pairing, so :func:`dictionary_agreement`'s ``shared_fraction``
is an upper bound on the paper's measure for the same SAEs.

Cosines are signed, not absolute: a latent fires with positive activations only, so a
decoder row and its negation write opposite directions into the activation and are
different latents.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..saes.base import SAE
from ..saes.initial import initial_decoder
from .metrics import cosine_blocks

if TYPE_CHECKING:
    import pandas as pd


class Agreement(NamedTuple):
    """Decoder agreement of SAE ``a`` with SAE ``b`` (and back).

    ``shared_fraction``: fraction of ``a``'s latents whose best cosine to any of ``b``'s
    decoder rows is strictly above the threshold; ``shared_fraction_reverse``: the same from
    ``b`` to ``a``. ``median_best`` / ``median_best_reverse``: medians of those best cosines.
    ``best_cosine`` / ``best_cosine_reverse``: the best cosine of every latent of ``a`` /
    ``b`` (float64). Fractions and medians are NaN for an SAE without latents.
    """

    shared_fraction: float
    shared_fraction_reverse: float
    median_best: float
    median_best_reverse: float
    best_cosine: np.ndarray
    best_cosine_reverse: np.ndarray


def decoder_rows(sae: SAE | Tensor) -> Tensor:
    """An SAE's decoder rows ``[d_sae, d_in]`` (detached); a 2-D tensor is taken as the rows."""
    rows = sae.W_dec if isinstance(sae, SAE) else sae
    if not isinstance(rows, Tensor) or rows.ndim != 2:
        shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"Expected an SAE or a 2-D [d_sae, d_in] tensor of decoder rows, got {shape}.")
    return rows.detach()


def _fraction_above(best: np.ndarray, threshold: float) -> float:
    return float((best > threshold).mean()) if best.size else math.nan


def _median(best: np.ndarray) -> float:
    return float(np.median(best)) if best.size else math.nan


@torch.no_grad()
def dictionary_agreement(a: SAE | Tensor, b: SAE | Tensor, threshold: float = 0.7, *,
                         block: int = 4096) -> Agreement:
    """Best decoder cosine of every latent of ``a`` to ``b`` and of ``b`` to ``a``, and summaries.

    ``a`` and ``b`` are SAEs (their ``W_dec``) or 2-D tensors of decoder rows of the same
    ``d_in``; their widths may differ. A latent is shared when its best cosine is strictly
    greater than ``threshold``. One blockwise pass (:func:`cosine_blocks`, float64) gives both
    directions: memory about ``block * len(b)`` float64 values besides the normalised rows.
    A zero row has cosine 0 to everything.
    """
    rows_a, rows_b = decoder_rows(a), decoder_rows(b)
    if rows_a.shape[1] != rows_b.shape[1]:
        raise ValueError(f"The SAEs read different sites: d_in {rows_a.shape[1]} and {rows_b.shape[1]}. Compare "
                         "SAEs of one site.")
    best_a = torch.full((rows_a.shape[0],), -math.inf, dtype=torch.float64)
    best_b = torch.full((rows_b.shape[0],), -math.inf, dtype=torch.float64)
    if len(rows_a) and len(rows_b):
        for start, cos in cosine_blocks(rows_a, rows_b, block):
            best_a[start : start + len(cos)] = cos.max(dim=1).values.cpu()
            best_b = torch.maximum(best_b, cos.max(dim=0).values.cpu())
    best_a, best_b = best_a.numpy(), best_b.numpy()
    return Agreement(_fraction_above(best_a, threshold), _fraction_above(best_b, threshold),
                     _median(best_a), _median(best_b), best_a, best_b)


@torch.no_grad()
def agreement_nulls(a: SAE | Tensor, b: SAE | Tensor, threshold: float = 0.7, seed: int = 0, *,
                    block: int = 4096) -> dict[str, Agreement]:
    """:func:`dictionary_agreement` of ``a`` and ``b`` and of the same shapes under two nulls.

    ``"trained"``: the SAEs as they are; ``"random"``: as many random unit directions
    (Gaussian, ``torch.Generator().manual_seed(seed)``, ``a``'s drawn first) in ``d_in`` as
    each SAE has latents; ``"initial"``: the two SAEs' decoders at initialisation (redrawn from
    their ``training_config`` by :func:`~sae_helpers.saes.initial.initial_decoder`; left out
    when either is a tensor or has no ``training_config``). Agreement at or below the nulls'
    says nothing about what training found: two SAEs of one seed share their initial
    directions, and any two large dictionaries in few dimensions have close rows by chance.
    """
    rows_a, rows_b = decoder_rows(a), decoder_rows(b)
    generator = torch.Generator().manual_seed(seed)
    random_a = torch.randn(rows_a.shape, generator=generator, dtype=torch.float64)
    random_b = torch.randn(rows_b.shape, generator=generator, dtype=torch.float64)
    out = {"trained": dictionary_agreement(rows_a, rows_b, threshold, block=block),
           "random": dictionary_agreement(random_a, random_b, threshold, block=block)}
    if isinstance(a, SAE) and isinstance(b, SAE) and a.training_config and b.training_config:
        out["initial"] = dictionary_agreement(initial_decoder(a), initial_decoder(b), threshold, block=block)
    return out


def agreement_table(saes: Mapping[str, SAE | Tensor], pairs: Iterable[tuple[str, str]] | None = None,
                    threshold: float = 0.7, *, nulls: bool = False, seed: int = 0,
                    block: int = 4096) -> pd.DataFrame:
    """One row of agreement summaries per pair of named SAEs (default: every unordered pair).

    Columns ``shared_fraction``, ``shared_fraction_reverse``, ``median_best``,
    ``median_best_reverse``, indexed by ``(a, b)``; with ``nulls=True`` indexed by
    ``(a, b, null)`` with every null of :func:`agreement_nulls`.
    """
    import pandas as pd

    pairs = list(itertools.combinations(saes, 2) if pairs is None else pairs)
    records = []
    for name_a, name_b in pairs:
        if nulls:
            results = agreement_nulls(saes[name_a], saes[name_b], threshold, seed, block=block)
        else:
            results = {"trained": dictionary_agreement(saes[name_a], saes[name_b], threshold, block=block)}
        for null, result in results.items():
            records.append({"a": name_a, "b": name_b, "null": null, **{
                field: getattr(result, field) for field in Agreement._fields[:4]}})
    columns = ["a", "b", "null", *Agreement._fields[:4]]
    table = pd.DataFrame.from_records(records, columns=columns)
    if not nulls:
        table = table.drop(columns="null")
    return table.set_index(["a", "b", "null"] if nulls else ["a", "b"])
