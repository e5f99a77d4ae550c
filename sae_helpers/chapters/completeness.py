"""Chapter 03, completeness: the BatchTopK family and its control, the novel-latent analysis of
each neighbouring pair, the stitching curves, and what the numbers say."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import common
from .common import Summary

__all__ = ["ABOVE_NULL_FACTOR", "CONTROL_LIKE_SHARE", "CURVE_COLUMNS", "NEAR_PAPER", "PAIR_COLUMNS", "PAPER_NOVEL",
           "CurveVerdict", "Family", "Verdict", "analyze_pairs", "curve_verdict", "curves", "family_pairs",
           "render_verdict", "save_results", "summary", "train_family", "verdict"]

PAPER_NOVEL = 0.35
"""The paper's fraction of novel latents (~35%)."""
NEAR_PAPER = 0.10
"""The family's mean novel fraction is "close to" the paper's within this (absolute)."""
ABOVE_NULL_FACTOR = 2.0
"""The family's novel fractions are "well above" the control's when all exceed this multiple of it."""
CONTROL_LIKE_SHARE = 0.5
"""The control's rise "costs about as much" when it is at least this share of the family's smallest rise."""

PAIR_COLUMNS = ["n_latents", "n_dead", "n_trained", "frac_novel", "frac_novel_trained", "threshold", "random p99",
                "initial p99", "proxy_accuracy", "majority_accuracy", "largest group share (threshold)",
                "largest group share (best_match)"]
CURVE_COLUMNS = ["pair", "step", "kind", "n_latents", "l0", "fvu", "predicted_delta_mse", "delta_mse",
                 "loss_recovered"]


class Family(NamedTuple):
    """The family (``{width: sae}``), the control SAE, their table and health table."""

    saes: dict[int, Any]
    control: Any
    table: pd.DataFrame
    health: pd.DataFrame


def train_family(model: Any, site: str, train_cache: Any, eval_cache: Any, widths: list[int], *, k: int, steps: int,
                 batch_size: int, lr: float, seed: int, control_seed: int, data_root: str,
                 n_splice_tokens: int, plateau_tolerance: float | None = None, n_snapshots: int = 0) -> Family:
    """Every width trained in one pass (one init seed per width, the same data order), the
    control (the smallest width again from ``control_seed``), the family spliced into ``model``."""
    if control_seed == seed:
        raise ValueError(f"control_seed = seed = {seed}: the control pair would be one SAE compared with itself. "
                         "Choose another control_seed (the notebook's None means seed + 1).")
    from ..evaluation import health_table
    from ..models import splice_eval
    from ..training import decoder_drift

    settings = dict(k=k, steps=steps, batch_size=batch_size, lr=lr, seed=seed, data_root=data_root,
                    plateau_tolerance=plateau_tolerance, n_snapshots=n_snapshots)
    sweep = common.train_family(site, train_cache, eval_cache, widths, **settings)
    control_run = common.train_family(site, train_cache, eval_cache, widths[:1], family_seed=control_seed, **settings)
    control = control_run.saes[0]
    spliced = splice_eval(model, sweep.saes, n_splice_tokens)
    table = pd.DataFrame([{"width": w, "arch": "batchtopk", **{key: row[key] for key in ("l0", "fvu", "mse",
                                                                                          "dead_fraction")},
                           "loss_recovered": s["loss_recovered"], "delta_lm_loss": s["delta_lm_loss"],
                           "cos_to_init": float(decoder_drift(sae).median())}
                          for w, sae, row, s in zip(widths, sweep.saes, sweep.results.to_dict("records"), spliced,
                                                    strict=True)])
    saes = dict(zip(widths, sweep.saes, strict=True))
    named = {f"width {w}": sae for w, sae in saes.items()} | {f"width {widths[0]}, seed {control_seed} (control)":
                                                              control}
    evaluations = dict(zip(named, [*sweep.results.to_dict("records"), *control_run.results.to_dict("records")],
                           strict=True))
    return Family(saes, control, table, health_table(named, evaluations=evaluations))


def family_pairs(family: Family, control_seed: int) -> tuple[dict[str, tuple[Any, Any]], str]:
    """Each neighbouring pair ``"small -> large"`` and the control pair; returns them and the control's name."""
    widths = list(family.saes)
    pairs = {f"{small_w} -> {large_w}": (family.saes[small_w], family.saes[large_w])
             for small_w, large_w in zip(widths[:-1], widths[1:], strict=True)}
    control_name = f"control: {widths[0]} -> {widths[0]} (seed {control_seed})"
    pairs[control_name] = (family.saes[widths[0]], family.control)
    return pairs, control_name


def analyze_pairs(pairs: dict[str, tuple[Any, Any]], eval_cache: Any, threshold: float | None,
                  seed: int) -> tuple[dict, dict, pd.DataFrame]:
    """:func:`~sae_helpers.stitching.analyze`, the cosine nulls and the grouping report of each pair.

    Returns ``{pair: (table, summary)}``, ``{pair: nulls}`` and the pairs' summary (a row per pair).
    """
    from .. import stitching

    analyses, nulls, rows = {}, {}, []
    for name, (small_sae, large_sae) in pairs.items():
        table, summary = stitching.analyze(small_sae, large_sae, eval_cache, threshold=threshold)
        nulls[name] = stitching.cosine_nulls(small_sae, large_sae, seed=seed)
        groups = stitching.grouping_report(small_sae, large_sae, table, summary["threshold"])
        analyses[name] = (table, summary)
        rows.append({"pair": name, **summary,
                     **{f"{null} p99": float(np.quantile(values, 0.99)) for null, values in nulls[name].items()
                        if null != "trained"},
                     **{f"largest group share ({g})": groups.loc[g, "largest_share"] for g in groups.index}})
    return analyses, nulls, pd.DataFrame(rows).set_index("pair")


def curves(pairs: dict[str, tuple[Any, Any]], analyses: dict, eval_cache: Any, model: Any, **options: Any) -> dict:
    """:func:`~sae_helpers.stitching.curve` of each pair, with its analysis's table and threshold;
    ``options``: ``grouping``, ``n_points``, ``n_splice_points``, ``n_splice_tokens``, ``splice_chunk``."""
    from .. import stitching

    out = {}
    for name, (small_sae, large_sae) in pairs.items():
        table, summary = analyses[name]
        out[name] = stitching.curve(small_sae, large_sae, eval_cache, model, threshold=summary["threshold"],
                                    table=table, **options)
    return out


def save_results(curves_by_pair: dict, pair_summary: pd.DataFrame, data_root: str, model_name: str) -> pd.DataFrame:
    """Write every curve's points (one table, a ``pair`` column) and the pairs' summary to
    ``<data_root>/results`` (:func:`~.common.write_results`); returns the points."""
    all_curves = pd.concat({name: c.points for name, c in curves_by_pair.items()}, names=["pair", "row"])
    all_curves = all_curves.reset_index(level="row", drop=True).reset_index()
    common.write_results(all_curves, data_root, "03_completeness_curves", model_name, index=False)
    common.write_results(pair_summary, data_root, "03_completeness_pairs", model_name)
    return all_curves


class CurveVerdict(NamedTuple):
    """One stitching curve, counted."""

    n_steps: int
    inserts: int
    swaps: int
    largest_group: int
    n_points: int
    fvu_rises: int
    fvu_intervals: int
    largest_rise: float
    start: float
    end: float
    peak: float
    excess: float
    """The peak's FVU above the higher of the two ends."""
    lr_falls: int
    lr_intervals: int
    largest_lr_fall: float
    insert_from: float
    insert_to: float
    rising_by_phase: dict[str, int]


def curve_verdict(c: Any) -> CurveVerdict:
    """Count the rises of a :class:`~sae_helpers.stitching.Curve`'s FVU and falls of its loss recovered."""
    from ..stitching import count_rises

    p = c.points
    n_up, n_steps, worst = count_rises(p["fvu"])
    lr_down, lr_n, lr_worst = count_rises(-p["loss_recovered"].to_numpy())
    inserts = p[p.kind.isin(["start", "insert"])]
    rising = p.kind.iloc[1:].to_numpy()[np.diff(p.fvu.to_numpy()) > 1e-9 * p.fvu.max()]
    by_phase = {kind: int(n) for kind, n in pd.Series(rising).value_counts().items()}
    return CurveVerdict(int(p.step.iloc[-1]), c.steps["insert"], c.steps["swap"], c.largest_group, len(p), n_up,
                        n_steps, worst, p.fvu.iloc[0], p.fvu.iloc[-1], p.fvu.max(),
                        p.fvu.max() - max(p.fvu.iloc[0], p.fvu.iloc[-1]), lr_down, lr_n, lr_worst,
                        inserts.fvu.iloc[0], inserts.fvu.iloc[-1], by_phase)


class Verdict(NamedTuple):
    """What the chapter's numbers say."""

    novel: pd.Series
    """Novel fraction of each family pair."""
    novel_trained: pd.Series
    n_dead: int
    control_novel: float
    near_paper: str
    """``"close to"``, ``"above"`` or ``"below"`` the paper's :data:`PAPER_NOVEL`."""
    above_null: bool
    threshold_fitted: bool
    thresholds: pd.Series
    proxy_accuracy: pd.Series
    majority_accuracy: pd.Series
    thresholds_below_random: bool
    random_p99: pd.Series
    initial_p99: pd.Series
    threshold_group_share: pd.Series
    best_match_group_share: float
    family_fvu: dict[int, float]
    family_falls: bool
    curves: dict[str, CurveVerdict]
    control_name: str
    control_like: bool
    """The control's excess is at least :data:`CONTROL_LIKE_SHARE` of the family's smallest."""


def verdict(pair_summary: pd.DataFrame, control_name: str, family_table: pd.DataFrame,
            curves_by_pair: dict) -> Verdict:
    """Compute the verdict from the pairs' summary, the family table and the curves."""
    family_pairs_ = pair_summary.drop(index=control_name)
    control = pair_summary.loc[control_name]
    fractions = family_pairs_["frac_novel"]
    near = ("close to" if abs(fractions.mean() - PAPER_NOVEL) <= NEAR_PAPER
            else ("above" if fractions.mean() > PAPER_NOVEL else "below"))
    fvu_by_width = family_table.sort_values("width")["fvu"].to_numpy()
    per_curve = {name: curve_verdict(c) for name, c in curves_by_pair.items()}
    family_excess = [v.excess for name, v in per_curve.items() if name != control_name]
    return Verdict(
        novel=fractions, novel_trained=family_pairs_["frac_novel_trained"], n_dead=int(family_pairs_["n_dead"].sum()),
        control_novel=control["frac_novel"], near_paper=near,
        above_null=bool(fractions.min() > ABOVE_NULL_FACTOR * control["frac_novel"]),
        threshold_fitted=bool(family_pairs_["threshold_fitted"].all()), thresholds=family_pairs_["threshold"],
        proxy_accuracy=family_pairs_["proxy_accuracy"], majority_accuracy=family_pairs_["majority_accuracy"],
        thresholds_below_random=bool((family_pairs_["threshold"] <= family_pairs_["random p99"]).all()),
        random_p99=family_pairs_["random p99"], initial_p99=family_pairs_["initial p99"],
        threshold_group_share=family_pairs_["largest group share (threshold)"],
        best_match_group_share=family_pairs_["largest group share (best_match)"].max(),
        family_fvu=dict(zip(family_table.width, family_table.fvu, strict=True)),
        family_falls=bool((np.diff(fvu_by_width) < 0).all()), curves=per_curve, control_name=control_name,
        control_like=bool(per_curve[control_name].excess >= CONTROL_LIKE_SHARE * min(family_excess)),
    )


def _curve_line(name: str, v: CurveVerdict) -> str:
    fvu_text = ("falls monotonically" if v.fvu_rises == 0 else
                f"rises on {v.fvu_rises} of {v.fvu_intervals} intervals ({v.fvu_rises / v.fvu_intervals:.0%}; "
                f"largest rise {v.largest_rise:.4f}, peak {v.peak:.3f} against {v.start:.3f} at the start and "
                f"{v.end:.3f} at the end)")
    lr_text = ("loss recovered never falls between spliced points" if v.lr_falls == 0 else
               f"loss recovered falls on {v.lr_falls} of {v.lr_intervals} spliced intervals "
               f"(by up to {v.largest_lr_fall:.3f})")
    where = ", ".join(f"{n} in the {kind} phase" for kind, n in v.rising_by_phase.items())
    return (f"- **Curve {name}** ({v.n_steps} steps: {v.inserts} inserts, {v.swaps} group swaps, largest group "
            f"{v.largest_group} latents; {v.n_points} points): FVU {fvu_text}; {lr_text}. Inserting takes FVU from "
            f"{v.insert_from:.4f} to {v.insert_to:.4f}" + (f"; rising intervals: {where}." if where else "."))


def render_verdict(v: Verdict) -> str:
    """The verdict as a markdown list."""
    lines = [
        f"- **Novel latents**: {', '.join(f'{p}: {x:.1%}' for p, x in v.novel.items())} of the larger SAE's "
        f"live latents are novel (mean {v.novel.mean():.1%}), {v.near_paper} the paper's ~{PAPER_NOVEL:.0%}; among "
        f"the latents that left their initial direction: {', '.join(f'{x:.1%}' for x in v.novel_trained)} "
        f"({v.n_dead} dead latents left out). The control pair (same width, another seed) has "
        f"{v.control_novel:.1%} novel latents: "
        + ("the family's novel fractions are well above this null." if v.above_null
           else "the family's novel fractions are not clearly above this null."),
        f"- **Cosine proxy**: with the {'fitted' if v.threshold_fitted else 'given'} threshold "
        f"({', '.join(f'{t:.2f}' for t in v.thresholds)}), 'max cosine below the threshold' predicts the measured "
        f"class for {', '.join(f'{a:.1%}' for a in v.proxy_accuracy)} of live latents, against "
        f"{', '.join(f'{m:.1%}' for m in v.majority_accuracy)} for always predicting the more common class "
        f"(a gain of {', '.join(f'{g:+.1%}' for g in v.proxy_accuracy - v.majority_accuracy)}). The thresholds lie "
        + ("below or at" if v.thresholds_below_random else "partly above")
        + f" the 99th percentile of random directions' max cosine "
        f"({', '.join(f'{x:.2f}' for x in v.random_p99)}; the SAEs at initialisation: "
        f"{', '.join(f'{x:.2f}' for x in v.initial_p99)}), and their graph joins "
        f"{', '.join(f'{x:.0%}' for x in v.threshold_group_share)} of all latents into one group; the best-match "
        f"groups hold at most {v.best_match_group_share:.1%}.",
        f"- **Family**: FVU {'falls' if v.family_falls else 'does not fall'} with width "
        f"({', '.join(f'{w}: {f:.3f}' for w, f in v.family_fvu.items())}).",
    ]
    lines += [_curve_line(name, c) for name, c in v.curves.items()]
    control_curve = v.curves[v.control_name]
    family_excess = [c.excess for name, c in v.curves.items() if name != v.control_name]
    lines.append(
        f"- **Why the walks rise**: the order takes, at every evaluated point, the remaining steps that help the "
        f"current stitched SAE most; yet the swap phase raises FVU above both ends by "
        f"{', '.join(f'{x:.3f}' for x in family_excess)} for the family's pairs and by {control_curve.excess:.3f} "
        f"for the control pair, whose two SAEs have the same width ({v.control_novel:.1%} novel latents). "
        + ("Swapping latents between two independently trained dictionaries costs about as much between two "
           "seeds of one width as between two widths: the rise measures how differently two runs carve up "
           "the activations (their latents work together, not one by one), not missing or novel features."
           if v.control_like else
           "The control's rise is much smaller, so most of the family's rise is specific to the width change."))
    return "\n".join(lines)


def summary(v: Verdict) -> Summary:
    """The chapter's headline and key numbers: the novel fraction of each family pair beside the
    control pair's (two seeds of one width), and the swap phase's excess FVU of both."""
    pairs = ", ".join(f"{x:.1%} ({p})" for p, x in v.novel.items())
    control_excess = v.curves[v.control_name].excess
    headline = (f"Of a larger SAE's live latents, {pairs} are novel (not explained by the next smaller SAE), "
                f"against {v.control_novel:.1%} for the control pair (the smallest width from another seed); "
                f"the paper reports about {PAPER_NOVEL:.0%}.")
    numbers: dict = {f"novel_fraction: {p}": x for p, x in v.novel.items()}
    numbers |= {"novel_fraction: control": v.control_novel, "novel_fraction: mean": v.novel.mean(),
                "above_null": v.above_null}
    numbers |= {f"swap_excess_fvu: {name}": c.excess for name, c in v.curves.items() if name != v.control_name}
    numbers |= {"swap_excess_fvu: control": control_excess, "control_like": v.control_like}
    return Summary(headline, numbers)
