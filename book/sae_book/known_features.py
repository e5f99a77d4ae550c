"""Chapter 00, known features: the sparsity sweep on synthetic data, the matched pair and
its verdict, and the Appendix F toy."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd
from torch import Tensor

from .common import Summary

__all__ = ["PAIR_COLUMNS", "SHRINKS_BELOW", "SWEEP_COLUMNS", "TOY_COLUMNS", "UNBIASED_WITHIN", "MatchedPair",
           "matched_pair", "render_matched_pair", "render_toy", "summary", "sweep", "toy_sweep"]

SHRINKS_BELOW = 0.95
"""The baseline "shrinks its reconstructions" when its γ (relative reconstruction bias) is below this."""
UNBIASED_WITHIN = 0.02
"""The Gated SAE "is unbiased" when ``|γ - 1|`` is at most this."""

SWEEP_COLUMNS = ["arch", "l1_coefficient", "l0", "fvu", "relative_reconstruction_bias", "mmcs", "dead_fraction"]
PAIR_COLUMNS = ["l1_coefficient_relu", "l0_relu", "l1_coefficient_gated", "l0_gated",
                "relative_reconstruction_bias_relu", "relative_reconstruction_bias_gated",
                "fvu_relu", "fvu_gated", "mmcs_relu", "mmcs_gated"]
TOY_COLUMNS = ["arch", "l0", "fvu", "relative_reconstruction_bias", "mmcs", "median_magnitude_ratio", "median_recall"]


def sweep(train: Tensor, held_out: Tensor, features: Tensor, l1: dict[str, list[float]], width: int, steps: int, *,
          batch_size: int, lr: float, seed: int) -> tuple[pd.DataFrame, dict[tuple[str, float], Any]]:
    """Train one SAE per architecture and coefficient of ``l1`` (``{"relu": [...], "gated": [...]}``)
    and evaluate it on ``held_out``, with its feature recovery (MMCS against ``features``).

    Returns the results (one row per SAE) and ``{(arch, l1): (sae, feature_density)}``.
    """
    from sae_helpers.evaluation import evaluate, mmcs
    from sae_helpers.training import train_sae

    rows, saes = [], {}
    for arch, coefficients in l1.items():
        for coefficient in coefficients:
            sae = train_sae(train, arch, width, coefficient, steps, batch_size=batch_size, lr=lr, seed=seed,
                            progress=False)
            metrics = evaluate(sae, held_out, return_density=True)
            saes[(arch, coefficient)] = (sae, metrics.pop("feature_density"))
            rows.append({"arch": arch, "l1_coefficient": coefficient, **metrics, "mmcs": mmcs(features, sae.W_dec)})
    return pd.DataFrame(rows), saes


class MatchedPair(NamedTuple):
    """The Gated run and the baseline run whose L0s are closest, and what their γ say."""

    pair: pd.Series
    """The row of :func:`~sae_helpers.evaluation.match_by_l0` (columns suffixed ``_relu`` / ``_gated``)."""
    baseline_gamma: float
    gated_gamma: float
    shrinks: bool
    """The baseline's γ is below :data:`SHRINKS_BELOW`."""
    unbiased: bool
    """The Gated SAE's ``|γ - 1|`` is at most :data:`UNBIASED_WITHIN`."""


def matched_pair(pairs: pd.DataFrame) -> MatchedPair:
    """The pair of :func:`~sae_helpers.evaluation.match_by_l0` whose L0 ratio is closest to 1, and its verdict."""
    best = pairs.iloc[(pairs["l0_ratio"] - 1).abs().argmin()]
    b_gamma, g_gamma = best["relative_reconstruction_bias_relu"], best["relative_reconstruction_bias_gated"]
    return MatchedPair(best, b_gamma, g_gamma, bool(b_gamma < SHRINKS_BELOW), bool(abs(g_gamma - 1) <= UNBIASED_WITHIN))


def render_matched_pair(m: MatchedPair) -> str:
    """The matched pair's paragraph (markdown)."""
    best, b_gamma, g_gamma = m.pair, m.baseline_gamma, m.gated_gamma
    return (
        f"**Matched pair.** Baseline (λ = {best['l1_coefficient_relu']}) L0 = {best['l0_relu']:.2f}; "
        f"Gated (λ = {best['l1_coefficient_gated']}) L0 = {best['l0_gated']:.2f}. "
        f"Relative reconstruction bias: baseline γ = {b_gamma:.3f}, Gated γ = {g_gamma:.3f}. "
        + ("The baseline shrinks its reconstructions" if m.shrinks else "The baseline does not shrink clearly here")
        + (f" and the Gated SAE is unbiased (|γ − 1| ≤ {UNBIASED_WITHIN}). " if m.unbiased else
           f" and the Gated SAE is off by |γ − 1| = {abs(g_gamma - 1):.3f}. ")
        + f"Fraction of variance unexplained: baseline {best['fvu_relu']:.3f}, Gated {best['fvu_gated']:.3f}. "
        f"Feature recovery (MMCS): baseline {best['mmcs_relu']:.3f}, Gated {best['mmcs_gated']:.3f}."
    )


def toy_sweep(toy: Any, n_train: int, n_eval: int, l1: float, steps: int, *, batch_size: int, lr: float,
              seed: int) -> tuple[Any, dict[str, Any], pd.DataFrame]:
    """A baseline and a Gated SAE (as many latents as features) on the toy ``toy``.

    Returns the held-out sample, ``{arch: sae}`` and one row per SAE: its metrics, the mean
    cosine of each feature's best latent (``mmcs``) and the median magnitude ratio and recall
    of the matched latents (:func:`~sae_helpers.evaluation.magnitude_ratios`).
    """
    from sae_helpers.evaluation import evaluate, magnitude_ratios
    from sae_helpers.training import train_sae

    toy_train, toy_eval = toy.sample(n_train, seed=seed), toy.sample(n_eval, seed=seed + 1)
    saes, rows = {}, []
    for arch in ("relu", "gated"):
        sae = train_sae(toy_train.x, arch, toy.n_features, l1, steps, batch_size=batch_size, lr=lr, seed=seed,
                        progress=False)
        saes[arch] = sae
        ratios = magnitude_ratios(sae, toy_eval.x, toy_eval.coefficients, toy.features)
        rows.append({"arch": arch, **evaluate(sae, toy_eval.x), "mmcs": ratios["cosine"].mean(),
                     "median_magnitude_ratio": ratios["ratio"].median(), "median_recall": ratios["recall"].median()})
    return toy_eval, saes, pd.DataFrame(rows)


def render_toy(toy_results: pd.DataFrame) -> str:
    """The toy's sentence: the matched latents' median magnitude ratio per architecture."""
    relu_row, gated_row = (toy_results.set_index("arch").loc[a] for a in ("relu", "gated"))
    return (
        f"On the toy the baseline's matched latents report a median **{relu_row['median_magnitude_ratio']:.2f}x** "
        f"the true coefficient, the Gated SAE's **{gated_row['median_magnitude_ratio']:.2f}x** "
        f"(γ = {relu_row['relative_reconstruction_bias']:.3f} vs {gated_row['relative_reconstruction_bias']:.3f}, "
        f"at L0 {relu_row['l0']:.2f} vs {gated_row['l0']:.2f})."
    )


def summary(m: MatchedPair, toy_results: pd.DataFrame) -> Summary:
    """The chapter's headline and key numbers: γ of the matched pair (beside γ = 1, no
    shrinkage) and the toy's median magnitude ratios."""
    best = m.pair
    toy = toy_results.set_index("arch")
    baseline = "shrinks its reconstructions" if m.shrinks else "does not clearly shrink its reconstructions"
    gated = (f"stays within {UNBIASED_WITHIN} of 1" if m.unbiased
             else f"is off by |γ − 1| = {abs(m.gated_gamma - 1):.3f}")
    headline = (f"On synthetic data with known features, at matched sparsity (L0 {best['l0_relu']:.2f} vs "
                f"{best['l0_gated']:.2f}) the baseline SAE {baseline} (γ = {m.baseline_gamma:.3f}) while the Gated "
                f"SAE's γ = {m.gated_gamma:.3f} {gated} (γ = 1: no shrinkage).")
    return Summary(headline, {
        "l0_baseline": best["l0_relu"], "l0_gated": best["l0_gated"],
        "gamma_baseline": m.baseline_gamma, "gamma_gated": m.gated_gamma,
        "mmcs_baseline": best["mmcs_relu"], "mmcs_gated": best["mmcs_gated"],
        "toy_magnitude_ratio_baseline": toy.loc["relu", "median_magnitude_ratio"],
        "toy_magnitude_ratio_gated": toy.loc["gated", "median_magnitude_ratio"],
    })
