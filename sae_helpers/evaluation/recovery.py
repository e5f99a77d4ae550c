"""Comparing an SAE with known ground truth, and SAEs with each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..saes.base import SAE
from .metrics import max_cosine_similarity

if TYPE_CHECKING:
    import pandas as pd


@torch.no_grad()
def best_matching_latents(true_features: Tensor, decoder: Tensor) -> tuple[Tensor, Tensor]:
    """For each true feature, the decoder row with the highest cosine: ``(index, cosine)``."""
    ref = torch.nn.functional.normalize(true_features.double(), dim=1)
    dic = torch.nn.functional.normalize(decoder.detach().double().to(ref.device), dim=1)
    cos = ref @ dic.T
    best = cos.max(dim=1)
    return best.indices.cpu(), best.values.cpu()


@torch.no_grad()
def magnitude_ratios(sae: SAE, x: Tensor, coefficients: Tensor, true_features: Tensor) -> pd.DataFrame:
    """Per true feature: how the best-matching latent's activation compares to the true
    coefficient on samples where both are non-zero.

    Returns a DataFrame with columns ``feature``, ``latent``, ``cosine``, ``ratio``
    (mean of latent / coefficient: 1 means no shrinkage) and ``recall`` (fraction of the
    feature's occurrences on which the latent fires).
    """
    import pandas as pd

    latent_idx, cosine = best_matching_latents(true_features, sae.W_dec)
    acts = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).double().cpu()[:, latent_idx]
    coeffs = coefficients.double().cpu()
    rows = []
    for j in range(coeffs.shape[1]):
        on = coeffs[:, j] > 0
        both = on & (acts[:, j] > 0)
        rows.append({
            "feature": j,
            "latent": int(latent_idx[j]),
            "cosine": float(cosine[j]),
            "ratio": float((acts[both, j] / coeffs[both, j]).mean()) if both.any() else float("nan"),
            "recall": float(both.sum() / on.sum()) if on.any() else float("nan"),
        })
    return pd.DataFrame(rows)


def match_by_l0(results: pd.DataFrame, reference: str, other: str, arch_column: str = "arch") -> pd.DataFrame:
    """Pair each ``other`` run with the ``reference`` run of nearest L0.

    ``results`` has one row per run with an ``l0`` column; the output has one row per
    ``other`` run with the reference's columns suffixed ``_<reference>`` and its own
    suffixed ``_<other>``, plus ``l0_ratio`` (other / reference).
    """
    import pandas as pd

    ref = results[results[arch_column] == reference].sort_values("l0")
    oth = results[results[arch_column] == other].sort_values("l0")
    if ref.empty or oth.empty:
        raise ValueError(f"Need runs of both {reference!r} and {other!r} to pair by L0.")
    pairs = pd.merge_asof(
        oth.add_suffix(f"_{other}"), ref.add_suffix(f"_{reference}"),
        left_on=f"l0_{other}", right_on=f"l0_{reference}", direction="nearest",
    )
    pairs["l0_ratio"] = pairs[f"l0_{other}"] / pairs[f"l0_{reference}"]
    return pairs


__all__ = ["best_matching_latents", "magnitude_ratios", "match_by_l0", "max_cosine_similarity"]
