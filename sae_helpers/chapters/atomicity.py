"""Chapter 04, atomicity: meta-SAEs on the widest SAE's decoder rows beside their nulls, the
decompositions read, the comparison with a smaller SAE, and the sentences that report them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import common
from .common import Summary

__all__ = ["MATCH_ABOVE", "MIN_COSINE_CAP", "MIN_COSINE_QUANTILE", "READABLE_DENSITY", "Decompositions",
           "FveComparison", "Similarity", "decomposition_text", "decompositions", "family_overview",
           "fve_comparison", "meta_health", "meta_widths", "points", "render_decompositions", "render_fve",
           "render_scope", "render_similarity", "render_training", "run_dir", "similarity", "similarity_table",
           "smaller_width", "strong_meta_latents", "summary", "summary_table", "train_metas"]

READABLE_DENSITY = (1e-3, 0.05)
"""Base latents read are those firing on 0.1% to 5% of the held-out tokens (both ends included)."""
MIN_COSINE_CAP = 0.6
"""... and reconstructed with a cosine of at least this, or of the readable latents' 90th percentile if lower."""
MIN_COSINE_QUANTILE = 0.9
MATCH_ABOVE = 0.7
"""A decoder row "has a match" in another SAE when its max cosine there exceeds this."""


def points(x: float) -> str:
    """A difference of fractions in percentage points, signed: ``+1.2 points``."""
    return f"{100 * x:+.1f} points"


def family_overview(family: Any) -> tuple[dict[int, Any], pd.DataFrame, pd.DataFrame]:
    """The family (a :func:`~sae_helpers.train_saes` result) by width, its table (with each SAE's
    median decoder cosine to its initialisation, ``cos_to_init``: near 1, barely trained) and its
    health table."""
    from ..evaluation import health_table
    from ..training import decoder_drift

    saes = {sae.d_sae: sae for sae in family.saes}
    table = family.results[["arch", "width", "k", "l0", "fvu", "dead_fraction"]].copy()
    table["cos_to_init"] = [float(decoder_drift(sae).median()) for sae in family.saes]
    evaluations = {f"width {w}": e for w, e in zip(saes, family.results.to_dict("records"), strict=True)}
    return saes, table, health_table({f"width {w}": sae for w, sae in saes.items()}, evaluations=evaluations)


def meta_widths(base_width: int, meta_width: int | None, meta_comparison_width: int | None) -> dict[str, int]:
    """The two meta-SAE widths: the paper's ratio (``meta.default_width``) and ``d_sae / 4``, unless given."""
    from .. import meta

    return {"paper ratio": meta_width if meta_width is not None else meta.default_width(base_width),
            "d_sae / 4": meta_comparison_width if meta_comparison_width is not None else base_width // 4}


def train_metas(base: Any, base_run: str, widths: dict[str, int], run_dir: Path, **settings: Any
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A meta-SAE of each width on ``base``'s decoder rows, checkpointed under
    ``run_dir/meta-of-<base_run>-<fingerprint>``, and its null (kept beside it in ``null``).

    ``settings``: ``k``, ``epochs``, ``seed``, ``lr``, ``batch_size``, ``min_steps``. Returns
    ``{name: meta_sae}``, ``{name: null}``, ``{name: MetaSAEResult}``.
    """
    from .. import meta

    metas, nulls, results = {}, {}, {}
    for name, width in widths.items():
        options = dict(width=width, **settings)
        meta_dir = run_dir / f"meta-of-{base_run}-{meta.meta_config(base.d_sae, **options).fingerprint()[:8]}"
        metas[name], results[name] = meta.train_meta_sae(base, **options, checkpoint_dir=meta_dir)
        # the null was trained (and kept in meta_dir / "null") by train_meta_sae: this returns it at once
        nulls[name], _ = meta.train_null_meta_sae(base.d_sae, base.d_in, **options, checkpoint_dir=meta_dir / "null",
                                                  progress=False)
    return metas, nulls, results


def meta_health(metas: dict[str, Any], nulls: dict[str, Any], rows: Any, null_rows: Any
                ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The health table of every meta-SAE (on the decoder rows) and null (on the random rows);
    returns the SAEs by display name and the table."""
    from ..evaluation import evaluate, health_table

    saes = {**{f"meta-SAE, {name}": metas[name] for name in metas}, **{f"null, {name}": nulls[name] for name in nulls}}
    evaluations = {**{f"meta-SAE, {name}": evaluate(metas[name], rows) for name in metas},
                   **{f"null, {name}": evaluate(nulls[name], null_rows) for name in nulls}}
    return saes, health_table(saes, evaluations=evaluations)


def _health_word(health: pd.DataFrame, name: str) -> str:
    return "passes" if health.loc[name, "passes"] else health.loc[name, "failing"]


def summary_table(metas: dict[str, Any], results: dict[str, Any], health: pd.DataFrame, base_width: int
                  ) -> pd.DataFrame:
    """One row per meta-SAE (FVE, its null, L0, dead fraction, health) and the paper's row."""
    from ..meta import PAPER

    summary = pd.DataFrame({
        name: {"base latents per meta-latent": base_width / metas[name].d_sae, "meta-latents": metas[name].d_sae,
               "FVE": r.fve, "FVE null": r.fve_null, "FVE - null": r.fve - r.fve_null, "inference L0": r.l0,
               "dead fraction": r.dead_fraction, "health": _health_word(health, f"meta-SAE, {name}"),
               "null health": _health_word(health, f"null, {name}")}
        for name, r in results.items()
    }).T
    summary.loc["paper (Bussmann et al.)"] = {"base latents per meta-latent": PAPER["base_width"] / PAPER["width"],
                                              "meta-latents": PAPER["width"], "FVE": PAPER["fve"]}
    summary.index.name = "meta-SAE"
    return summary.infer_objects()


def render_training(meta_sae: Any, base_width: int, meta_lr: float) -> str:
    """How long every meta-SAE trained, against the paper."""
    from ..meta import PAPER

    steps, batch = meta_sae.training_config["steps"], meta_sae.training_config["batch_size"]
    return (f"Every meta-SAE and null trains {steps:,} optimiser steps of {batch:,} rows at learning rate "
            f"{meta_lr:g} ({steps * batch / base_width:,.0f} passes over the {base_width:,} rows); the paper "
            f"trains {PAPER['steps']:,} steps at {PAPER['lr']:g}.")


class FveComparison(NamedTuple):
    """The two meta-SAEs against their nulls."""

    paper: Any
    """The paper-ratio meta-SAE's result (``fve``, ``fve_null``, ``l0``, ``dead_fraction``)."""
    comparison: Any
    """The ``d_sae / 4`` meta-SAE's result."""
    paper_width: int
    comparison_width: int
    base_width: int
    k: int
    null_gains_as_much: bool
    """Going to the wider meta-SAE, the null's FVE gains at least as much as the meta-SAE's."""
    gap_shrinks: bool
    """FVE - null is smaller for the wider meta-SAE."""


def fve_comparison(metas: dict[str, Any], results: dict[str, Any], base_width: int, k: int) -> FveComparison:
    """Compare the paper-ratio and the ``d_sae / 4`` meta-SAE, each beside its null."""
    p, c = results["paper ratio"], results["d_sae / 4"]
    gap_p, gap_c = p.fve - p.fve_null, c.fve - c.fve_null
    return FveComparison(p, c, metas["paper ratio"].d_sae, metas["d_sae / 4"].d_sae, base_width, k,
                         bool(c.fve_null - p.fve_null >= c.fve - p.fve), bool(gap_c < gap_p))


def render_fve(v: FveComparison) -> str:
    """The meta-SAEs' paragraph."""
    from ..meta import PAPER

    p, c, wp, wc, base_width = v.paper, v.comparison, v.paper_width, v.comparison_width, v.base_width
    gap_p, gap_c = p.fve - p.fve_null, c.fve - c.fve_null
    return (
        f"At the paper's ratio ({wp:,} meta-latents, one per {base_width / wp:.1f} base latents) the meta-SAE explains "
        f"**{p.fve:.1%}** of the variance of the {base_width:,} decoder directions; the same configuration explains "
        f"{p.fve_null:.1%} of as many random unit directions, so the decoder directions' shared structure adds "
        f"**{points(gap_p)}**. With {wc:,} meta-latents (one per {base_width / wc:.1f}) the meta-SAE explains "
        f"{c.fve:.1%} against {c.fve_null:.1%} for its null ({points(gap_c)}). "
        f"Going from {wp:,} to {wc:,} meta-latents changes the FVE by {points(c.fve - p.fve)} and the null by "
        f"{points(c.fve_null - p.fve_null)}: "
        + ("the null gains at least as much as the meta-SAE, so the difference to the null "
           + ("shrinks" if v.gap_shrinks else "stays") + f" ({points(gap_p)} to {points(gap_c)}): the extra "
           "meta-latents explain random directions as well as decoder directions, not more of the decoder's "
           "structure. "
           if v.null_gains_as_much else
           f"the meta-SAE gains more than its null, so the difference to the null grows ({points(gap_p)} to "
           f"{points(gap_c)}): the extra meta-latents find structure in the decoder directions that random ones "
           "lack. ")
        + f"At inference the meta-SAEs use {p.l0:.2f} and {c.l0:.2f} meta-latents per base latent (trained with "
        f"k = {v.k}); {p.dead_fraction:.1%} and {c.dead_fraction:.1%} of their meta-latents are active on no row. "
        f"The paper reports {PAPER['fve']:.1%} at its ratio ({PAPER['width']:,} meta-latents for "
        f"{PAPER['base_width']:,} base latents), without a null; this run's FVE at the same ratio is "
        f"{100 * abs(p.fve - PAPER['fve']):.1f} points {'below' if p.fve < PAPER['fve'] else 'above'} it, and its "
        f"null alone explains {p.fve_null:.1%}."
    )


class Decompositions(NamedTuple):
    """The base latents picked for reading and the counts that describe the choice."""

    chosen: list[int]
    readable: np.ndarray
    """Base latents whose density lies in :data:`READABLE_DENSITY`."""
    min_cosine: float
    n_candidates: int
    """Readable latents reconstructed with at least ``min_cosine``."""
    median_cosine: float
    n_strong: np.ndarray
    """Per base latent: meta-latents with a coefficient of at least ``min_coefficient``."""
    min_coefficient: float
    table: pd.DataFrame
    """One row per chosen latent."""


def decomposition_text(meta_result: Any, i: int) -> str:
    """Base latent ``i``'s meta-latents with their coefficients."""
    return ", ".join(f"{m} ({c:.2f})" for m, c in meta_result.decompositions[i])


def decompositions(meta_result: Any, density: np.ndarray, n: int, min_coefficient: float) -> Decompositions:
    """Pick ``n`` readable, well reconstructed base latents (:func:`~sae_helpers.meta.pick_decompositions`)
    and tabulate their decompositions."""
    from ..meta import pick_decompositions

    low, high = READABLE_DENSITY
    readable = (density >= low) & (density <= high)
    readable_cosines = meta_result.reconstruction_cosine[readable]
    min_cosine = (min(MIN_COSINE_CAP, float(np.quantile(readable_cosines, MIN_COSINE_QUANTILE)))
                  if len(readable_cosines) else MIN_COSINE_CAP)
    chosen = pick_decompositions(meta_result, n=n, min_coefficient=min_coefficient, candidates=readable,
                                 min_cosine=min_cosine)
    strong_column = f"with coefficient >= {min_coefficient}"
    rows = [{"base latent": i, "density": density[i], "meta-latents": len(meta_result.decompositions[i]),
             strong_column: len(strong_meta_latents(meta_result, i, min_coefficient)),
             "reconstruction cosine": meta_result.reconstruction_cosine[i],
             "decomposition": decomposition_text(meta_result, i)} for i in chosen]
    table = pd.DataFrame(rows, columns=["base latent", "density", "meta-latents", strong_column,
                                        "reconstruction cosine", "decomposition"])
    n_strong = np.array([sum(c >= min_coefficient for _, c in pairs) for pairs in meta_result.decompositions])
    return Decompositions(list(chosen), readable, min_cosine,
                          int((readable & (meta_result.reconstruction_cosine >= min_cosine)).sum()),
                          float(np.median(meta_result.reconstruction_cosine)), n_strong, min_coefficient, table)


def strong_meta_latents(meta_result: Any, i: int, min_coefficient: float, limit: int = 4) -> list[tuple[int, float]]:
    """Base latent ``i``'s first ``limit`` meta-latents with a coefficient of at least ``min_coefficient``."""
    return [(m, c) for m, c in meta_result.decompositions[i] if c >= min_coefficient][:limit]


def render_decompositions(d: Decompositions, n_base: int) -> str:
    """How the latents were picked and how many meta-latents the base latents need."""
    column = f"with coefficient >= {d.min_coefficient}"
    return (
        f"The latents were picked from {d.n_candidates:,} "
        f"base latents that fire on 0.1% to 5% of the held-out tokens and are reconstructed with a cosine of at least "
        f"{d.min_cosine:.2f} ({int(d.readable.sum()):,} fire in that range; the median reconstruction cosine over all "
        f"base latents is {d.median_cosine:.2f}). Over all {n_base:,} base latents, "
        f"{(d.n_strong >= 2).mean():.1%} have two or more meta-latents with a coefficient of at least "
        f"{d.min_coefficient}, {(d.n_strong == 1).mean():.1%} exactly one and {(d.n_strong == 0).mean():.1%} none; "
        + (f"the picked latents have {', '.join(str(n) for n in d.table[column])}."
           if len(d.table) else "no latent qualified to be read.")
    )


def smaller_width(widths: list[int], base_width: int, meta_width: int) -> int:
    """The family's width (other than the base's) closest to the meta-SAE's (the smaller on a tie)."""
    return min((w for w in widths if w != base_width), key=lambda w: (abs(w - meta_width), w))


class Similarity(NamedTuple):
    """Max cosine of decoder rows to a smaller SAE's: medians and the fraction above :data:`MATCH_ABOVE`."""

    medians: dict[str, float]
    above: dict[str, float]
    rows: dict[str, int]
    meta_closer: bool
    """Meta-decoder rows' median is higher than the base rows'."""


def similarity(values: dict[str, np.ndarray]) -> Similarity:
    """Summarise :func:`~sae_helpers.meta.similarity_to_smaller_sae`."""
    medians = {name: float(np.median(v)) for name, v in values.items()}
    above = {name: float((v > MATCH_ABOVE).mean()) for name, v in values.items()}
    return Similarity(medians, above, {name: len(v) for name, v in values.items()},
                      medians["meta → smaller"] > medians["base → smaller"])


def similarity_table(s: Similarity, labels: dict[str, str]) -> pd.DataFrame:
    """The summary as a table (rows relabelled with ``labels``)."""
    return pd.DataFrame({"rows": s.rows, "median max cosine": s.medians,
                         f"fraction above {MATCH_ABOVE}": s.above}).rename(index=labels)


def render_similarity(s: Similarity, smaller: int) -> str:
    """Do meta-latents resemble the smaller SAE's latents more than the base latents do?"""
    m = s.medians
    return (
        f"**Meta-latents {'resemble' if s.meta_closer else 'do not resemble'} the {smaller:,}-latent SAE's latents "
        f"more than the base latents do**: the median max cosine of a meta-decoder row to that SAE is "
        f"{m['meta → smaller']:.3f}, against {m['base → smaller']:.3f} for a base decoder row "
        f"(a difference of {m['meta → smaller'] - m['base → smaller']:+.3f}); "
        f"{s.above['meta → smaller']:.1%} of meta-latents and {s.above['base → smaller']:.1%} of base latents have a "
        f"match above {MATCH_ABOVE}. For reference, a base latent's closest other base latent has a median cosine of "
        f"{m['base → other base']:.3f}."
    )


def render_scope(base_width: int, paper_result: Any) -> str:
    """What the chapter's scale allows to conclude, against the paper's."""
    from ..meta import PAPER

    return (
        f"The paper's numbers come from a base SAE {PAPER['base_width'] / base_width:.1f} times wider than this "
        f"chapter's ({PAPER['base_width']:,} latents against {base_width:,}), trained on far more tokens, and a "
        f"meta-SAE trained for {PAPER['steps']:,} steps; this chapter's runs on a smaller model test the pipeline and "
        f"the direction of the effects, not their size. Of the meta-SAE's FVE at the paper's ratio "
        f"({paper_result.fve:.1%}), its null accounts for {paper_result.fve_null:.1%}; "
        f"the family's health table above says how many of the base SAE's latents left their random start."
    )


def run_dir(data_root: str, site: str) -> Path:
    """Where the chapter's meta-SAEs are checkpointed."""
    return common.run_dir(data_root, "04_atomicity", site)


def summary(v: FveComparison) -> Summary:
    """The chapter's headline and key numbers: each meta-SAE's FVE beside its null's (the same
    configuration trained on as many random unit directions)."""
    p, c = v.paper, v.comparison
    headline = (f"A meta-SAE at the paper's ratio ({v.paper_width:,} meta-latents for {v.base_width:,} base latents) "
                f"explains {p.fve:.1%} of the variance of the decoder directions, against {p.fve_null:.1%} for its "
                f"null on as many random directions ({points(p.fve - p.fve_null)}; with {v.comparison_width:,} "
                f"meta-latents: {c.fve:.1%} against {c.fve_null:.1%}).")
    return Summary(headline, {
        "fve_paper_ratio": p.fve, "fve_null_paper_ratio": p.fve_null, "fve_minus_null_paper_ratio": p.fve - p.fve_null,
        "fve_quarter": c.fve, "fve_null_quarter": c.fve_null, "fve_minus_null_quarter": c.fve - c.fve_null,
        "meta_width_paper_ratio": v.paper_width, "meta_width_quarter": v.comparison_width,
        "null_gains_as_much": v.null_gains_as_much,
    })
