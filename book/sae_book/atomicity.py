"""Chapter 04, atomicity: meta-SAEs on the widest SAE's decoder rows beside three nulls (random unit
rows, rows with the decoder rows' covariance, the base SAE's initial decoder rows), FVE minus each
null against the base SAE's training length, the decompositions read, the comparison with a smaller
SAE, and the sentences that report them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import common
from .common import Summary

__all__ = ["EXTRA_NULLS", "MATCH_ABOVE", "MIN_COSINE_CAP", "MIN_COSINE_QUANTILE", "NULL_LABELS", "READABLE_DENSITY",
           "TREND_TOLERANCE", "Decompositions", "FveComparison", "MetaTrend", "NullGaps", "Similarity",
           "decomposition_text", "decompositions", "family_overview", "fve_comparison", "meta_dir", "meta_health",
           "meta_trend", "meta_widths", "null_comparison", "null_dir", "null_gaps", "null_table", "nulls_health",
           "plot_trend", "points", "render_decompositions", "render_fve", "render_nulls", "render_scope",
           "render_similarity", "render_training", "render_trend", "run_dir", "similarity", "similarity_table",
           "smaller_width", "strong_meta_latents", "summary", "summary_table", "train_metas", "train_nulls", "trend",
           "trend_display"]

READABLE_DENSITY = (1e-3, 0.05)
"""Base latents read are those firing on 0.1% to 5% of the held-out tokens (both ends included)."""
MIN_COSINE_CAP = 0.6
"""... and reconstructed with a cosine of at least this, or of the readable latents' 90th percentile if lower."""
MIN_COSINE_QUANTILE = 0.9
MATCH_ABOVE = 0.7
"""A decoder row "has a match" in another SAE when its max cosine there exceeds this."""
NULL_LABELS = {"random": "random unit rows", "covariance": "covariance-matched rows",
               "initial": "the base SAE's initial decoder rows"}
"""The nulls (:data:`~sae_helpers.meta.NULLS`) as the text names them."""
EXTRA_NULLS = ("covariance", "initial")
"""The nulls :func:`train_nulls` trains (``train_meta_sae`` trains the random one with each meta-SAE)."""
TREND_TOLERANCE = 0.005
"""FVE - null "rises" or "falls" with training length when it changes by more than this (half a
percentage point of FVE) from the first to the last snapshot; otherwise it "stays"."""


def points(x: float) -> str:
    """A difference of fractions in percentage points, signed: ``+1.2 points`` (``+0.0 points``, never
    ``-0.0``, for a difference that rounds to zero)."""
    return f"{round(100 * x, 1) + 0.0:+.1f} points"


def family_overview(family: Any) -> tuple[dict[int, Any], pd.DataFrame, pd.DataFrame]:
    """The family (a :func:`~sae_helpers.train_saes` result) by width, its table (with each SAE's
    median decoder cosine to its initialisation, ``cos_to_init``: near 1, barely trained) and its
    health table."""
    from sae_helpers.training import decoder_drift, health_table

    saes = {sae.d_sae: sae for sae in family.saes}
    table = family.results[["arch", "width", "k", "l0", "fvu", "dead_fraction"]].copy()
    table["cos_to_init"] = [float(decoder_drift(sae).median()) for sae in family.saes]
    evaluations = {f"width {w}": e for w, e in zip(saes, family.results.to_dict("records"), strict=True)}
    return saes, table, health_table({f"width {w}": sae for w, sae in saes.items()}, evaluations=evaluations)


def published_overview(model: Any, site: str, names: list[str], eval_cache: Any
                       ) -> tuple[dict[int, Any], pd.DataFrame, pd.DataFrame]:
    """:func:`family_overview` of published SAEs (:func:`~.common.published_saes`; the widest is the
    base SAE), evaluated on ``eval_cache``; ``cos_to_init`` is NaN (no training record)."""
    from sae_helpers import evaluate
    from sae_helpers.training import health_table

    saes = common.published_saes(model, site, names)
    evaluations = {f"width {w}": evaluate(sae, eval_cache) for w, sae in saes.items()}
    table = pd.DataFrame([{"arch": sae.architecture, "width": w, "k": sae.hyperparameter_values().get("k", np.nan),
                           "l0": e["l0"], "fvu": e["fvu"], "dead_fraction": e["dead_fraction"], "cos_to_init": np.nan}
                          for (w, sae), e in zip(saes.items(), evaluations.values(), strict=True)])
    return saes, table, health_table({f"width {w}": sae for w, sae in saes.items()}, evaluations=evaluations)


def base_run_name(base: Any) -> str:
    """The name the base SAE's meta-SAEs are checkpointed under: its training run's name
    (:func:`~sae_helpers.training.train.run_name`), or for a published SAE ``published-w<d_sae>-``
    and the first 8 hex digits of the sha256 of its decoder."""
    import hashlib

    from sae_helpers import TrainConfig
    from sae_helpers.training.train import run_name

    if base.training_config:
        config = base.training_config
        return run_name(config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config))
    digest = hashlib.sha256(base.W_dec.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return f"published-w{base.d_sae}-{digest[:8]}"


def extra_nulls(base: Any) -> tuple[str, ...]:
    """The nulls beside the random one that ``base`` allows: :data:`EXTRA_NULLS`, without the initial
    decoder rows for an SAE without a training record (a published one)."""
    return EXTRA_NULLS if base.training_config else tuple(null for null in EXTRA_NULLS if null != "initial")


def meta_widths(base_width: int, meta_width: int | None, meta_comparison_width: int | None) -> dict[str, int]:
    """The two meta-SAE widths: the paper's ratio (``meta.default_width``) and ``d_sae / 4``, unless given."""
    from sae_helpers import meta

    return {"paper ratio": meta_width if meta_width is not None else meta.default_width(base_width),
            "d_sae / 4": meta_comparison_width if meta_comparison_width is not None else base_width // 4}


def train_metas(base: Any, base_run: str, widths: dict[str, int], run_dir: Path, **settings: Any
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A meta-SAE of each width on ``base``'s decoder rows, checkpointed under
    ``run_dir/meta-of-<base_run>-<fingerprint>``, and its null (kept beside it in ``null``).

    ``settings``: ``k``, ``epochs``, ``seed``, ``lr``, ``batch_size``, ``min_steps``. Returns
    ``{name: meta_sae}``, ``{name: null}``, ``{name: MetaSAEResult}``.
    """
    from sae_helpers import meta

    metas, nulls, results = {}, {}, {}
    for name, width in widths.items():
        options = dict(width=width, **settings)
        directory = meta_dir(run_dir, base_run, base.d_sae, options)
        metas[name], results[name] = meta.train_meta_sae(base, **options, checkpoint_dir=directory)
        # the null was trained (and kept in null_dir(directory, "random")) by train_meta_sae: this returns it at once
        nulls[name], _ = meta.train_null_meta_sae(base.d_sae, base.d_in, **options,
                                                  checkpoint_dir=null_dir(directory, "random"), progress=False)
    return metas, nulls, results


def meta_dir(run_dir: Path, base_run: str, n_rows: int, options: dict[str, Any], step: int | None = None) -> Path:
    """Where a meta-SAE of ``options`` (``width`` and the settings of :func:`train_metas`) on the decoder rows
    of the run ``base_run`` is checkpointed: ``run_dir/meta-of-<base_run>-<fingerprint>``, or
    ``run_dir/meta-of-<base_run>-step<step>-<fingerprint>`` for the run's snapshot at ``step``."""
    from sae_helpers import meta

    fingerprint = meta.meta_config(n_rows, **options).fingerprint()[:8]
    return run_dir / (f"meta-of-{base_run}-{fingerprint}" if step is None
                      else f"meta-of-{base_run}-step{step}-{fingerprint}")


def null_dir(directory: Path, null: str) -> Path:
    """Where the null ``null`` of the meta-SAE in ``directory`` is kept: ``null`` for the random one (as
    ``train_meta_sae`` keeps it), ``null-<null>`` for the others."""
    return directory / ("null" if null == "random" else f"null-{null}")


def train_nulls(base: Any, base_run: str, widths: dict[str, int], run_dir: Path, rows: dict[str, Any],
                **settings: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """Each meta-SAE configuration of :func:`train_metas` trained on the rows of each null in ``rows``
    (``{null: meta.null_rows(base, null, seed)}``, e.g. for :data:`EXTRA_NULLS`), checkpointed beside its
    meta-SAE (:func:`null_dir`).

    Returns ``{name: {null: null meta-SAE}}`` and ``{name: {null: its FVE on the null's rows}}``."""
    from sae_helpers import meta

    saes: dict[str, dict[str, Any]] = {}
    fves: dict[str, dict[str, float]] = {}
    for name, width in widths.items():
        options = dict(width=width, **settings)
        directory = meta_dir(run_dir, base_run, base.d_sae, options)
        saes[name], fves[name] = {}, {}
        for null, null_rows in rows.items():
            saes[name][null], fves[name][null] = meta.train_null_meta_sae(
                base.d_sae, base.d_in, **options, null=null, rows=null_rows, checkpoint_dir=null_dir(directory, null))
    return saes, fves


def meta_trend(snapshots: dict[int, Any], base_run: str, width: int, run_dir: Path, constant_nulls: dict[str, float],
               **settings: Any) -> pd.DataFrame:
    """The meta-SAE of ``width`` (settings as for :func:`train_metas`) on the decoder rows of each of the
    base SAE's snapshots (``{step: sae}``, :func:`~sae_book.common.family_snapshots`; the last
    step is the finished SAE), and its covariance null on the covariance-matched rows of that snapshot.

    Nulls that do not depend on the snapshot (the random rows, the initial decoder rows) are given as
    ``constant_nulls`` (``{null: FVE}``, trained once by :func:`train_metas` / :func:`train_nulls`, e.g.
    ``NullGaps.nulls``; a ``"covariance"`` entry is replaced by each snapshot's). The last
    step uses :func:`meta_dir` of the finished SAE, so its runs are those of :func:`train_metas` and
    :func:`train_nulls`; every other step has its own directory (:func:`meta_dir` with ``step``), and a rerun
    returns finished runs at once.

    Returns one row per step: ``step``, ``tokens`` (activations the base SAE had seen), ``fve``,
    ``null_<null>`` and ``gap_<null>`` (FVE - null) for each null, and the health (``passes`` or why not) of
    the meta-SAE (on the snapshot's rows) and of its covariance null (on its rows).
    """
    from sae_helpers import meta
    from sae_helpers.evaluation import evaluate
    from sae_helpers.evaluation.dose_response import training_tokens
    from sae_helpers.training import health_table

    seed = settings.get("seed", 0)
    options = dict(width=width, **settings)
    last = max(snapshots)
    out = []
    for step, sae in sorted(snapshots.items()):
        directory = meta_dir(run_dir, base_run, sae.d_sae, options, step=None if step == last else step)
        meta_sae, result = meta.train_meta_sae(sae, **options, null=False, checkpoint_dir=directory, progress=False)
        rows = meta.null_rows(sae, "covariance", seed)
        null_sae, null_fve = meta.train_null_meta_sae(sae.d_sae, sae.d_in, **options, null="covariance", rows=rows,
                                                      checkpoint_dir=null_dir(directory, "covariance"), progress=False)
        health = health_table({"meta": meta_sae, "null": null_sae},
                              evaluations={"meta": evaluate(meta_sae, meta.decoder_directions(sae)),
                                           "null": evaluate(null_sae, rows)})
        fves = {**constant_nulls, "covariance": null_fve}
        fves = {null: fves[null] for null in NULL_LABELS if null in fves}
        out.append({"step": int(step), "tokens": training_tokens(sae, step), "fve": result.fve,
                    **{f"null_{null}": value for null, value in fves.items()},
                    **{f"gap_{null}": result.fve - value for null, value in fves.items()},
                    "health": _health_word(health, "meta"), "null_health": _health_word(health, "null")})
    return pd.DataFrame(out)


def meta_health(metas: dict[str, Any], nulls: dict[str, Any], rows: Any, null_rows: Any
                ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The health table of every meta-SAE (on the decoder rows, as ``meta-SAE, <name>``) and random null (on
    the random rows, as ``random null, <name>``); returns the SAEs by display name and the table."""
    from sae_helpers.evaluation import evaluate
    from sae_helpers.training import health_table

    saes = {**{f"meta-SAE, {name}": metas[name] for name in metas},
            **{f"random null, {name}": nulls[name] for name in nulls}}
    evaluations = {**{f"meta-SAE, {name}": evaluate(metas[name], rows) for name in metas},
                   **{f"random null, {name}": evaluate(nulls[name], null_rows) for name in nulls}}
    return saes, health_table(saes, evaluations=evaluations)


def nulls_health(nulls: dict[str, dict[str, Any]], rows: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The health table of the nulls of :func:`train_nulls` (each on its null's ``rows[null]``), as
    ``<null> null, <name>``; returns the SAEs by display name and the table."""
    from sae_helpers.evaluation import evaluate
    from sae_helpers.training import health_table

    saes = {f"{null} null, {name}": sae for name, by_null in nulls.items() for null, sae in by_null.items()}
    evaluations = {f"{null} null, {name}": evaluate(sae, rows[null])
                   for name, by_null in nulls.items() for null, sae in by_null.items()}
    return saes, health_table(saes, evaluations=evaluations)


def _health_word(health: pd.DataFrame, name: str) -> str:
    return "passes" if health.loc[name, "passes"] else health.loc[name, "failing"]


def summary_table(metas: dict[str, Any], results: dict[str, Any], health: pd.DataFrame, base_width: int
                  ) -> pd.DataFrame:
    """One row per meta-SAE (FVE, its random null, L0, dead fraction, health) and the paper's row."""
    from sae_helpers.meta import PAPER

    summary = pd.DataFrame({
        name: {"base latents per meta-latent": base_width / metas[name].d_sae, "meta-latents": metas[name].d_sae,
               "FVE": r.fve, "FVE random null": r.fve_null, "FVE - random null": r.fve - r.fve_null,
               "inference L0": r.l0, "dead fraction": r.dead_fraction,
               "health": _health_word(health, f"meta-SAE, {name}"),
               "null health": _health_word(health, f"random null, {name}")}
        for name, r in results.items()
    }).T
    summary.loc["paper (Bussmann et al.)"] = {"base latents per meta-latent": PAPER["base_width"] / PAPER["width"],
                                              "meta-latents": PAPER["width"], "FVE": PAPER["fve"]}
    summary.index.name = "meta-SAE"
    return summary.infer_objects()


def render_training(meta_sae: Any, base_width: int, meta_lr: float) -> str:
    """How long every meta-SAE trained, against the paper."""
    from sae_helpers.meta import PAPER

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
    from sae_helpers.meta import PAPER

    p, c, wp, wc, base_width = v.paper, v.comparison, v.paper_width, v.comparison_width, v.base_width
    gap_p, gap_c = p.fve - p.fve_null, c.fve - c.fve_null
    return (
        f"At the paper's ratio ({wp:,} meta-latents, one per {base_width / wp:.1f} base latents) the meta-SAE explains "
        f"**{p.fve:.1%}** of the variance of the {base_width:,} decoder directions; the same configuration explains "
        f"{p.fve_null:.1%} of as many random unit directions, so the decoder directions' shared structure adds "
        f"**{points(gap_p)}**. With {wc:,} meta-latents (one per {base_width / wc:.1f}) the meta-SAE explains "
        f"{c.fve:.1%} against {c.fve_null:.1%} for its random null ({points(gap_c)}). "
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
        f"random null alone explains {p.fve_null:.1%}."
    )


class NullGaps(NamedTuple):
    """One meta-SAE's FVE against each of its nulls."""

    fve: float
    nulls: dict[str, float]
    """The FVE of each null (the same configuration on the null's rows), by null (:data:`NULL_LABELS`)."""
    gaps: dict[str, float]
    """FVE - null, by null."""
    strongest: str
    """The null with the largest FVE (the first in ``nulls``' order on a tie): FVE - this null is the
    smallest difference, what the meta-SAE explains beyond every null."""


def null_gaps(fve: float, nulls: dict[str, float]) -> NullGaps:
    """The meta-SAE's FVE against each null's FVE (NaN nulls, not computed, are left out)."""
    known = {null: value for null, value in nulls.items() if not np.isnan(value)}
    if not known:
        raise ValueError("null_gaps needs the FVE of at least one null.")
    strongest = max(known, key=lambda null: known[null])
    return NullGaps(fve, known, {null: fve - value for null, value in known.items()}, strongest)


def null_comparison(results: dict[str, Any], fves: dict[str, dict[str, float]]) -> dict[str, NullGaps]:
    """Each meta-SAE (``results``: ``{name: MetaSAEResult}``, with the random null's ``fve_null``) against
    the random null and the nulls of ``fves`` (``{name: {null: FVE}}``, :func:`train_nulls`)."""
    return {name: null_gaps(r.fve, {"random": r.fve_null, **fves.get(name, {})}) for name, r in results.items()}


def null_table(gaps: dict[str, NullGaps], meta_latents: dict[str, int], health: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per meta-SAE and null: the meta-SAE's FVE, the null's FVE, FVE - null, whether it is the
    strongest null, and the null's health (from the ``health`` tables, rows named ``<null> null, <name>``)."""
    health = pd.concat(health)
    rows = [{"meta-SAE": name, "null": _label(null), "meta-latents": meta_latents[name],
             "FVE": g.fve, "null FVE": g.nulls[null], "FVE - null": g.gaps[null], "strongest": null == g.strongest,
             "null health": _health_word(health, f"{null} null, {name}")}
            for name, g in gaps.items() for null in g.nulls]
    return pd.DataFrame(rows).set_index(["meta-SAE", "null"])


def _label(null: str) -> str:
    return NULL_LABELS.get(null, null)


def _clauses(items: list[str]) -> str:
    """``a``, ``a, and b``, ``a, b, and c``: clauses that may contain "and" themselves."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _the(null: str) -> str:
    """The null's label with a definite article: ``the random unit rows``."""
    label = _label(null)
    return label if label.startswith("the ") else f"the {label}"


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def render_nulls(gaps: dict[str, NullGaps], meta_latents: dict[str, int]) -> str:
    """Each meta-SAE against its nulls with the strongest named, and how far each other null's FVE lies
    from the random null's."""
    parts = []
    for name, g in gaps.items():
        against = ", ".join(f"{points(g.gaps[null])} against {_label(null)} ({g.nulls[null]:.1%})"
                            for null in g.nulls)
        gap = g.gaps[g.strongest]
        parts.append(f"With {meta_latents[name]:,} meta-latents ({name}) the meta-SAE's FVE of {g.fve:.1%} is "
                     f"{against}. The strongest null is {_the(g.strongest)}: FVE − null is **{points(gap)}**, "
                     + ("what the meta-SAE explains beyond every null." if gap > 0 else
                        "so the meta-SAE explains no more of the decoder rows than that null explains of its own."))
    text = " ".join(parts)
    others = [null for null in NULL_LABELS if null != "random"
              and all("random" in g.nulls and null in g.nulls for g in gaps.values())]
    if others and gaps:
        clauses = [f"{_the(null)}' FVE minus the random rows' is "
                   + _and([f"{points(g.nulls[null] - g.nulls['random'])} ({name})" for name, g in gaps.items()])
                   for null in others]
        text += (" Beside the random null, " + "; ".join(clauses) + ". What the covariance-matched rows explain "
                 "beyond random rows comes from the decoder rows' mean and covariance (their anisotropy) alone, "
                 "without any sparse structure; what the initial rows explain beyond them comes from the base "
                 "SAE's initialisation, before training.")
    return text


class MetaTrend(NamedTuple):
    """A meta-SAE's FVE and FVE - null against the base SAE's training length (its snapshots)."""

    tokens: list[int]
    """Training activations the base SAE had seen at each point, increasing."""
    fve: list[float]
    gaps: dict[str, list[float]]
    """FVE - null at each point, by null."""
    strongest: str
    """The strongest null at the last point."""
    directions: dict[str, str]
    """By null: ``"rises"``, ``"falls"`` or ``"stays"`` (within :data:`TREND_TOLERANCE`) from the first to
    the last point (``"stays"`` with a single point)."""


def trend(table: pd.DataFrame, tolerance: float = TREND_TOLERANCE) -> MetaTrend:
    """The trend of :func:`meta_trend`'s table (columns ``tokens``, ``fve``, ``null_<null>``, ``gap_<null>``)."""
    table = table.sort_values("tokens")
    nulls = [column.removeprefix("gap_") for column in table.columns if column.startswith("gap_")]
    gaps = {null: [float(x) for x in table[f"gap_{null}"]] for null in nulls}
    last = table.iloc[-1]
    strongest = null_gaps(float(last["fve"]), {null: float(last[f"null_{null}"]) for null in nulls}).strongest
    directions = {}
    for null, values in gaps.items():
        change = values[-1] - values[0]
        directions[null] = "rises" if change > tolerance else "falls" if change < -tolerance else "stays"
    return MetaTrend([int(t) for t in table["tokens"]], [float(x) for x in table["fve"]], gaps, strongest, directions)


def render_trend(t: MetaTrend, tolerance: float = TREND_TOLERANCE) -> str:
    """Which way FVE - null moves with the base SAE's training length, and how far the budget is from the
    paper's (:data:`~sae_book.common.PAPER_TOKENS`)."""
    from sae_helpers.meta import PAPER

    last, fve = t.tokens[-1], t.fve[-1]
    side = "below" if fve < PAPER["fve"] else "above"
    budget = (f"The base SAE saw {last:,} training activations, {common.PAPER_TOKENS / max(last, 1):,.0f} times "
              f"fewer than the papers' {common.PAPER_TOKENS / 1e9:.1f} billion tokens, and its meta-SAE's FVE "
              f"({fve:.1%}) is {100 * abs(PAPER['fve'] - fve):.1f} points {side} the paper's {PAPER['fve']:.2%} (on a "
              f"base SAE of {PAPER['base_width']:,} latents, without a null).")
    if len(t.tokens) < 2:
        return f"The base SAE kept no snapshots, so there is one point and no trend. {budget}"
    moves = {direction: [_label(null) for null, d in t.directions.items() if d == direction]
             for direction in ("rises", "falls", "stays")}
    words = {"rises": "rises", "falls": "falls", "stays": f"stays within {points(tolerance)[1:]}"}
    said = [f"{words[d]} against {_and(names) if len(names) < len(t.directions) else 'every null'}"
            for d, names in moves.items() if names]
    series = "; ".join(f"against {_label(null)} from {points(values[0])} to {points(values[-1])}"
                       for null, values in t.gaps.items())
    strongest = t.gaps[t.strongest]
    still = strongest[-1] - strongest[-2]
    return (
        f"From {t.tokens[0]:,} to {last:,} training activations of the base SAE ({len(t.tokens)} points), the "
        f"meta-SAE's FVE goes from {t.fve[0]:.1%} to {t.fve[-1]:.1%}, and **FVE − null {_clauses(said)}** with "
        f"training length ({series}). Between the last two points ({t.tokens[-2]:,} and {last:,} activations) "
        f"FVE − null against the strongest null at the end, {_the(t.strongest)}, "
        f"changed by {points(still)}"
        + (": it was still moving, and may move further with longer training. " if abs(still) > tolerance
           else ". ")
        + budget
    )


def trend_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`meta_trend`'s table as the page shows it: one row per base-SAE step, readable column names."""
    names = {"step": "base SAE step", "tokens": "training activations", "fve": "FVE",
             **{f"null_{null}": f"FVE, {null} null" for null in NULL_LABELS},
             **{f"gap_{null}": f"FVE - {null} null" for null in NULL_LABELS},
             "health": "meta-SAE health", "null_health": "covariance null health"}
    return table.rename(columns=names).set_index("base SAE step")


def plot_trend(table: pd.DataFrame) -> Any:
    """Two panels against the base SAE's training activations (log axis): the meta-SAE's and each null's
    FVE with the paper's FVE marked at the papers' budget, and FVE - each null."""
    from matplotlib.ticker import LogLocator

    from sae_helpers.meta import PAPER

    from . import plotting

    nulls = [column.removeprefix("gap_") for column in table.columns if column.startswith("gap_")]
    lines = [pd.DataFrame({"name": "meta-SAE", "tokens": table["tokens"], "FVE": table["fve"],
                           "FVE − null": np.nan})]
    lines += [pd.DataFrame({"name": f"{null} null", "tokens": table["tokens"], "FVE": table[f"null_{null}"],
                            "FVE − null": table[f"gap_{null}"]}) for null in nulls]
    fig = plotting.plot_dose_response(pd.concat(lines, ignore_index=True), ["FVE", "FVE − null"],
                                      paper_tokens=common.PAPER_TOKENS, paper_values={"FVE": PAPER["fve"]})
    fig.axes[0].set_ylabel("FVE (each on its own rows)")
    fig.axes[1].set_ylabel("meta-SAE FVE − null FVE")
    fig.axes[1].axhline(0, color="0.6", lw=0.8)  # below it, the null explains more of its rows
    for ax in fig.axes[:2]:  # the axis spans about six decades: label every other one, so the labels do not overlap
        ax.xaxis.set_major_locator(LogLocator(base=100))
    return fig


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
    from sae_helpers.meta import pick_decompositions

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


def render_scope(base_width: int, gaps: NullGaps, trained_here: bool = True) -> str:
    """What the chapter's scale allows to conclude, against the paper's (``gaps``: the paper-ratio meta-SAE's;
    ``trained_here``: the base SAE was trained by the chapter, not published)."""
    from sae_helpers.meta import PAPER

    if not trained_here:
        return (f"The base SAE is a published one ({base_width:,} latents; the paper's has "
                f"{PAPER['base_width']:,}), so its training is its authors'. Of the meta-SAE's FVE at the paper's "
                f"ratio ({gaps.fve:.1%}), its strongest null, {_the(gaps.strongest)}, accounts for "
                f"{gaps.nulls[gaps.strongest]:.1%}.")
    return (
        f"The paper's numbers come from a base SAE {PAPER['base_width'] / base_width:.1f} times wider than this "
        f"chapter's ({PAPER['base_width']:,} latents against {base_width:,}), trained on far more tokens, and a "
        f"meta-SAE trained for {PAPER['steps']:,} steps; this chapter's runs on a smaller model test the pipeline and "
        f"the direction of the effects, not their size. Of the meta-SAE's FVE at the paper's ratio "
        f"({gaps.fve:.1%}), its strongest null, {_the(gaps.strongest)}, accounts for "
        f"{gaps.nulls[gaps.strongest]:.1%}; the family's health table above says how many of the base SAE's latents "
        "left their random start."
    )


def run_dir(data_root: str, site: str) -> Path:
    """Where the chapter's meta-SAEs are checkpointed."""
    return common.run_dir(data_root, "04_atomicity", site)


def summary(v: FveComparison, gaps: dict[str, NullGaps], t: MetaTrend | None = None) -> Summary:
    """The chapter's headline and key numbers: the paper-ratio meta-SAE's FVE minus its strongest null
    (named), each FVE beside each null, and FVE - strongest null at the first and last point of the trend."""
    p, c = gaps["paper ratio"], gaps["d_sae / 4"]
    others = ", ".join(f"against {_label(null)} {points(gap)}" for null, gap in p.gaps.items() if null != p.strongest)
    headline = (f"A meta-SAE at the paper's ratio ({v.paper_width:,} meta-latents for {v.base_width:,} base latents) "
                f"explains {p.fve:.1%} of the variance of the decoder directions and its strongest null, "
                f"{_the(p.strongest)}, {p.nulls[p.strongest]:.1%} of its own: FVE − strongest null is "
                f"{points(p.gaps[p.strongest])}" + (f" ({others})" if others else "")
                + f"; with {v.comparison_width:,} meta-latents it is {points(c.gaps[c.strongest])} (against "
                f"{_the(c.strongest)})")
    if t is not None and len(t.tokens) > 1:
        strongest = t.gaps[t.strongest]
        which = "that null" if t.strongest == p.strongest else _the(t.strongest)
        headline += (f"; over the base SAE's training ({t.tokens[0]:,} to {t.tokens[-1]:,} activations), FVE minus "
                     f"{which} went from {points(strongest[0])} to {points(strongest[-1])}")
    headline += "."
    numbers: dict[str, Any] = {
        "fve_paper_ratio": v.paper.fve, "fve_null_paper_ratio": v.paper.fve_null,
        "fve_minus_null_paper_ratio": v.paper.fve - v.paper.fve_null,
        "fve_quarter": v.comparison.fve, "fve_null_quarter": v.comparison.fve_null,
        "fve_minus_null_quarter": v.comparison.fve - v.comparison.fve_null,
        "meta_width_paper_ratio": v.paper_width, "meta_width_quarter": v.comparison_width,
        "null_gains_as_much": v.null_gains_as_much,
    }
    for name, suffix in (("paper ratio", "paper_ratio"), ("d_sae / 4", "quarter")):
        g = gaps[name]
        for null in g.nulls:
            if null != "random":  # the random null's keys are above
                numbers[f"fve_null_{null}_{suffix}"] = g.nulls[null]
                numbers[f"fve_minus_null_{null}_{suffix}"] = g.gaps[null]
        numbers[f"strongest_null_{suffix}"] = g.strongest
        numbers[f"fve_strongest_null_{suffix}"] = g.nulls[g.strongest]
        numbers[f"fve_minus_strongest_null_{suffix}"] = g.gaps[g.strongest]
    if t is not None:
        numbers.update({"trend_tokens_first": t.tokens[0], "trend_tokens_last": t.tokens[-1],
                        "trend_strongest_null": t.strongest,
                        "trend_fve_minus_strongest_null_first": t.gaps[t.strongest][0],
                        "trend_fve_minus_strongest_null_last": t.gaps[t.strongest][-1]})
    return Summary(headline, numbers)
