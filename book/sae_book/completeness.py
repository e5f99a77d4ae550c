"""Chapter 03, completeness: the BatchTopK family and its control, the novel-latent analysis of
each neighbouring pair, the stitching curves, and what the numbers say."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import common
from .common import Summary

__all__ = ["ABOVE_NULL_FACTOR", "AGREEMENT_COSINE", "CONTROL_LIKE_SHARE", "CURVE_COLUMNS", "NEAR_PAPER",
           "PAIR_COLUMNS", "PAPER_NOVEL", "PUBLISHED_AGREEMENT", "TRAINING_METRICS", "AgreementVerdict",
           "CurveVerdict", "Family", "Verdict", "agreement", "agreement_verdict", "analyze_pairs", "curve_verdict",
           "curves", "family_pairs", "family_with_control", "render_agreement", "render_verdict", "save_results",
           "summary", "training_length", "verdict"]

PAPER_NOVEL = 0.35
"""The paper's fraction of novel latents (~35%)."""
NEAR_PAPER = 0.10
"""The family's mean novel fraction is "close to" the paper's within this (absolute)."""
ABOVE_NULL_FACTOR = 2.0
"""The family's novel fractions are "well above" the control's when all exceed this multiple of it."""
CONTROL_LIKE_SHARE = 0.5
"""The control's rise "costs about as much" when it is at least this share of the family's smallest rise."""
AGREEMENT_COSINE = 0.7
"""Two latents are "the same" when their decoder rows have a cosine above this (Paulo & Belrose 2025)."""
PUBLISHED_AGREEMENT = (0.30, 0.53)
"""Paulo & Belrose 2025: 30-53% of latents shared at cosine > 0.7 between seeds, SAEs trained on billions of tokens."""
TRAINING_METRICS = {"frac_novel": "novel fraction", "shared_fraction": "shared at cos > 0.7",
                    "rising_share": "rising share of the walk"}
"""The numbers :func:`training_length` follows over the snapshots, with their names in the text."""

PAIR_COLUMNS = ["n_latents", "n_dead", "n_trained", "frac_novel", "frac_novel_trained", "threshold", "random p99",
                "initial p99", "proxy_accuracy", "majority_accuracy", "largest group share (threshold)",
                "largest group share (cos > 0.7)", "largest group share (best_match)"]
CURVE_COLUMNS = ["pair", "step", "kind", "n_latents", "l0", "fvu", "predicted_delta_mse", "delta_mse",
                 "loss_recovered"]


class Family(NamedTuple):
    """The family (``{width: sae}``), the control SAE (``None`` for published SAEs), their table and
    health table."""

    saes: dict[int, Any]
    control: Any | None
    table: pd.DataFrame
    health: pd.DataFrame


def _family_table(model: Any, saes: dict[int, Any], evaluations: list[dict], n_splice_tokens: int) -> pd.DataFrame:
    """One row per SAE: width, L0, FVU, MSE, dead fraction, the spliced losses and (for SAEs
    trained here) the median decoder cosine to the initial rows."""
    from sae_helpers.evaluation import splice_eval
    from sae_helpers.training import decoder_drift

    spliced = splice_eval(model, list(saes.values()), n_splice_tokens)
    return pd.DataFrame([{"width": w, "arch": sae.architecture, **{key: row[key] for key in ("l0", "fvu", "mse",
                                                                                   "dead_fraction")},
                          "loss_recovered": s["loss_recovered"], "delta_lm_loss": s["delta_lm_loss"],
                          "cos_to_init": float(decoder_drift(sae).median()) if sae.training_config else np.nan}
                         for (w, sae), row, s in zip(saes.items(), evaluations, spliced, strict=True)])


def family_with_control(model: Any, site: str, train_cache: Any, eval_cache: Any, widths: list[int], *, k: int,
                        steps: int, batch_size: int, lr: float, seed: int, control_seed: int, data_root: str,
                        n_splice_tokens: int, plateau_tolerance: float | None = None,
                        n_snapshots: int = 0) -> Family:
    """Every width trained in one pass (one init seed per width, the same data order), the
    control (the smallest width again from ``control_seed``), the family spliced into ``model``."""
    if control_seed == seed:
        raise ValueError(f"control_seed = seed = {seed}: the control pair would be one SAE compared with itself. "
                         "Choose another control_seed (the notebook's None means seed + 1).")
    from sae_helpers.training import health_table

    settings = dict(k=k, steps=steps, batch_size=batch_size, lr=lr, seed=seed, data_root=data_root,
                    plateau_tolerance=plateau_tolerance, n_snapshots=n_snapshots)
    sweep = common.train_family(site, train_cache, eval_cache, widths, **settings)
    control_run = common.train_family(site, train_cache, eval_cache, widths[:1], family_seed=control_seed, **settings)
    control = control_run.saes[0]
    saes = dict(zip(widths, sweep.saes, strict=True))
    table = _family_table(model, saes, sweep.results.to_dict("records"), n_splice_tokens)
    named = {f"width {w}": sae for w, sae in saes.items()} | {f"width {widths[0]}, seed {control_seed} (control)":
                                                              control}
    evaluations = dict(zip(named, [*sweep.results.to_dict("records"), *control_run.results.to_dict("records")],
                           strict=True))
    return Family(saes, control, table, health_table(named, evaluations=evaluations))


def published_family(model: Any, site: str, names: list[str], eval_cache: Any, n_splice_tokens: int) -> Family:
    """Published SAEs of one site instead of a trained family (:func:`~.common.published_saes`),
    evaluated on ``eval_cache`` and spliced into ``model``; no control pair (no second seed of one
    width is given)."""
    from sae_helpers import evaluate
    from sae_helpers.training import health_table

    saes = common.published_saes(model, site, names)
    evaluations = [evaluate(sae, eval_cache) for sae in saes.values()]
    table = _family_table(model, saes, evaluations, n_splice_tokens)
    named = {f"width {w}": sae for w, sae in saes.items()}
    return Family(saes, None, table, health_table(named, evaluations=dict(zip(named, evaluations, strict=True))))


def family_pairs(family: Family, control_seed: int) -> tuple[dict[str, tuple[Any, Any]], str | None]:
    """Each neighbouring pair ``"small -> large"`` and the control pair; returns them and the control's
    name (``None``, and no control pair, for a published family)."""
    widths = list(family.saes)
    pairs = {f"{small_w} -> {large_w}": (family.saes[small_w], family.saes[large_w])
             for small_w, large_w in zip(widths[:-1], widths[1:], strict=True)}
    if family.control is None:
        return pairs, None
    control_name = f"control: {widths[0]} -> {widths[0]} (seed {control_seed})"
    pairs[control_name] = (family.saes[widths[0]], family.control)
    return pairs, control_name


def analyze_pairs(pairs: dict[str, tuple[Any, Any]], eval_cache: Any, threshold: float | None,
                  seed: int) -> tuple[dict, dict, pd.DataFrame]:
    """:func:`~sae_helpers.stitching.analyze`, the cosine nulls and the grouping report of each pair.

    Returns ``{pair: (table, summary)}``, ``{pair: nulls}`` and the pairs' summary (a row per pair).
    """
    from sae_helpers import stitching

    analyses, nulls, rows = {}, {}, []
    for name, (small_sae, large_sae) in pairs.items():
        table, summary = stitching.analyze(small_sae, large_sae, eval_cache, threshold=threshold)
        nulls[name] = stitching.cosine_nulls(small_sae, large_sae, seed=seed)
        groups = stitching.grouping_report(small_sae, large_sae, table, summary["threshold"])
        paper_rule = stitching.grouping_report(small_sae, large_sae, table, AGREEMENT_COSINE)  # the paper's graph
        analyses[name] = (table, summary)
        rows.append({"pair": name, **summary, "initial p99": np.nan,  # stays NaN without training records
                     **{f"{null} p99": float(np.quantile(values, 0.99)) for null, values in nulls[name].items()
                        if null != "trained"},
                     **{f"largest group share ({g})": groups.loc[g, "largest_share"] for g in groups.index},
                     "largest group share (cos > 0.7)": paper_rule.loc["threshold", "largest_share"]})
    return analyses, nulls, pd.DataFrame(rows).set_index("pair")


def curves(pairs: dict[str, tuple[Any, Any]], analyses: dict, eval_cache: Any, model: Any, **options: Any) -> dict:
    """:func:`~sae_helpers.stitching.curve` of each pair, with its analysis's table and threshold;
    ``options``: ``grouping``, ``n_points``, ``n_splice_points``, ``n_splice_tokens``, ``splice_chunk``."""
    from sae_helpers import stitching

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


def agreement(pairs: dict[str, tuple[Any, Any]], seed: int) -> pd.DataFrame:
    """Per pair and null (``trained``, ``random``, ``initial``): the share of the larger SAE's latents
    whose best match among the smaller SAE's decoder rows has a cosine above :data:`AGREEMENT_COSINE`,
    and the median best match (:func:`~sae_helpers.evaluation.agreement_nulls`)."""
    from sae_helpers.evaluation import agreement_nulls

    rows = [{"pair": name, "null": null, "shared_fraction": a.shared_fraction, "median_best": a.median_best}
            for name, (small, large) in pairs.items()
            for null, a in agreement_nulls(large, small, AGREEMENT_COSINE, seed).items()]
    return pd.DataFrame(rows).set_index(["pair", "null"])


def _stages(family: Family, data_root: str, site: str) -> dict[str, tuple[dict[int, Any], Any]]:
    """Each SAE's snapshots by step (its final SAE included), under the family's SAE names."""
    saes = [*family.saes.values(), family.control]
    snapshots = common.family_snapshots(data_root, site, saes)
    return dict(zip([*map(str, family.saes), "control"], snapshots, strict=True))


def training_length(family: Family, control_seed: int, eval_cache: Any, data_root: str, site: str, *,
                    n_points: int = 12) -> pd.DataFrame:
    """The chapter's numbers at every snapshot step all SAEs reached, and at the end: per pair,
    ``frac_novel`` (:func:`~sae_helpers.stitching.analyze`), ``shared_fraction`` and ``median_best``
    (:func:`agreement`, trained) and ``rising_share``, the share of a walk's evaluated intervals
    (``n_points`` points, no splicing) on which FVU rises. ``tokens``: activations the less trained
    SAE of the pair had seen; ``stage``: the step, or ``"final"``."""
    from sae_helpers import stitching
    from sae_helpers.evaluation import dictionary_agreement
    from sae_helpers.evaluation.dose_response import training_tokens

    by_name = _stages(family, data_root, site)
    finals = {name: max(steps) for name, steps in by_name.items()}
    common_steps = sorted(set.intersection(*(set(steps) for steps in by_name.values())) - set(finals.values()))
    stages: list[tuple[str, dict[str, Any]]] = [
        (str(step), {name: steps[step] for name, steps in by_name.items()}) for step in common_steps]
    stages.append(("final", {name: steps[finals[name]] for name, steps in by_name.items()}))
    rows = []
    for stage, saes in stages:
        widths = [name for name in saes if name != "control"]
        pairs = {f"{a} -> {b}": (saes[a], saes[b]) for a, b in zip(widths[:-1], widths[1:], strict=True)}
        pairs[f"control: {widths[0]} -> {widths[0]} (seed {control_seed})"] = (saes[widths[0]], saes["control"])
        for name, (small, large) in pairs.items():
            table, summary_ = stitching.analyze(small, large, eval_cache)
            walk = stitching.curve(small, large, eval_cache, threshold=summary_["threshold"], table=table,
                                   n_points=n_points)
            rises, intervals, _ = stitching.count_rises(walk.points["fvu"])
            shared = dictionary_agreement(large, small, AGREEMENT_COSINE)
            rows.append({"stage": stage, "name": name, "tokens": min(training_tokens(small), training_tokens(large)),
                         "frac_novel": summary_["frac_novel"], "shared_fraction": shared.shared_fraction,
                         "median_best": shared.median_best, "rising_share": rises / intervals if intervals else np.nan})
    return pd.DataFrame(rows)


class AgreementVerdict(NamedTuple):
    """How far two seeds of one width agree, against the random null and the published range."""

    shared: float
    """The control pair's shared fraction (cos > :data:`AGREEMENT_COSINE`)."""
    median_best: float
    random_shared: float
    random_median: float
    initial_shared: float
    family_shared: pd.Series
    """Each family pair's shared fraction (the larger SAE's latents with a match in the smaller)."""
    below_published: bool
    trend: float
    """Relative change of the control's shared fraction over its last doubling of training (NaN: one stage)."""
    tokens: int


def agreement_verdict(table: pd.DataFrame, control_name: str | None, tokens: int,
                      length: pd.DataFrame | None = None) -> AgreementVerdict:
    """The verdict from :func:`agreement`'s table, the activations the SAEs saw (``tokens``) and, for the
    trend, :func:`training_length`'s table. Without a control pair (``control_name=None``: published
    SAEs) the control's numbers are NaN and the random null is the first family pair's."""
    from sae_helpers.evaluation.dose_response import training_trend

    if control_name is None:
        trained = table.xs("trained", level="null")["shared_fraction"]
        first = table.loc[trained.index[0]]
        nan = float("nan")
        return AgreementVerdict(nan, nan, float(first.loc["random", "shared_fraction"]),
                                float(first.loc["random", "median_best"]), nan, trained, False, nan, int(tokens))
    control = table.loc[control_name]
    family_ = table.drop(index=control_name, level="pair").xs("trained", level="null")["shared_fraction"]
    trend = training_trend(length[length.name == control_name], "shared_fraction") if length is not None else []
    return AgreementVerdict(
        float(control.loc["trained", "shared_fraction"]), float(control.loc["trained", "median_best"]),
        float(control.loc["random", "shared_fraction"]), float(control.loc["random", "median_best"]),
        float(control.loc["initial", "shared_fraction"]) if "initial" in control.index else float("nan"),
        family_, bool(control.loc["trained", "shared_fraction"] < PUBLISHED_AGREEMENT[0]),
        float(trend["change"].iloc[0]) if len(trend) else float("nan"), int(tokens))


def render_agreement(v: AgreementVerdict) -> str:
    """The agreement paragraph, and what it allows the rest of the chapter to conclude."""
    low, high = PUBLISHED_AGREEMENT
    if np.isnan(v.shared):
        return (f"These SAEs include no second seed of one width, so the chapter has no control pair. Neighbouring "
                f"widths share {', '.join(f'{x:.1%} ({p})' for p, x in v.family_shared.items())} of the larger "
                f"SAE's latents (best match above cosine {AGREEMENT_COSINE}), against {v.random_shared:.1%} for "
                f"random directions (median best match {v.random_median:.2f}). Between two seeds of one width, "
                f"Paulo & Belrose (2025) report {low:.0%}-{high:.0%} for SAEs trained on billions of tokens.")
    trend = ("" if np.isnan(v.trend) else
             f" Over the last doubling of training it changed by {v.trend:+.0%}, so it is "
             + ("still growing." if v.trend > 0.02 else "no longer growing much." if v.trend > -0.02 else "falling."))
    text = (f"Two seeds of the smallest width share {v.shared:.1%} of their latents (best match above cosine "
            f"{AGREEMENT_COSINE}; median best match {v.median_best:.2f}), against {v.random_shared:.1%} (median "
            f"{v.random_median:.2f}) for random directions and {v.initial_shared:.1%} for the two SAEs at "
            f"initialisation. Paulo & Belrose (2025) report {low:.0%}-{high:.0%} for SAEs trained on billions of "
            f"tokens; these saw at most {v.tokens:,} activations.{trend} Neighbouring widths share "
            f"{', '.join(f'{x:.1%} ({p})' for p, x in v.family_shared.items())}.")
    if v.below_published:
        text += (" **The dictionaries agree less than published SAEs do**, so every comparison below between two "
                 "SAEs, novel fractions and walks included, is read at this budget: part of what separates two "
                 "widths here also separates two seeds, and the control pair measures that part.")
    return text


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
    from sae_helpers.stitching import count_rises

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
    paper_rule_group_share: pd.Series | None
    """The largest group's share under the paper's fixed threshold graph (cosine above 0.7)."""
    best_match_group_share: float
    family_fvu: dict[int, float]
    family_falls: bool
    curves: dict[str, CurveVerdict]
    control_name: str | None
    """``None`` without a control pair (published SAEs): the control's numbers are then NaN."""
    control_like: bool
    """The control's excess is at least :data:`CONTROL_LIKE_SHARE` of the family's smallest."""


def verdict(pair_summary: pd.DataFrame, control_name: str | None, family_table: pd.DataFrame,
            curves_by_pair: dict) -> Verdict:
    """Compute the verdict from the pairs' summary, the family table and the curves."""
    family_pairs_ = pair_summary.drop(index=[] if control_name is None else [control_name])
    control_novel = np.nan if control_name is None else float(pair_summary.loc[control_name, "frac_novel"])
    fractions = family_pairs_["frac_novel"]
    near = ("close to" if abs(fractions.mean() - PAPER_NOVEL) <= NEAR_PAPER
            else ("above" if fractions.mean() > PAPER_NOVEL else "below"))
    fvu_by_width = family_table.sort_values("width")["fvu"].to_numpy()
    per_curve = {name: curve_verdict(c) for name, c in curves_by_pair.items()}
    family_excess = [v.excess for name, v in per_curve.items() if name != control_name]
    return Verdict(
        novel=fractions, novel_trained=family_pairs_["frac_novel_trained"], n_dead=int(family_pairs_["n_dead"].sum()),
        control_novel=control_novel, near_paper=near,
        above_null=bool(fractions.min() > ABOVE_NULL_FACTOR * control_novel),
        threshold_fitted=bool(family_pairs_["threshold_fitted"].all()), thresholds=family_pairs_["threshold"],
        proxy_accuracy=family_pairs_["proxy_accuracy"], majority_accuracy=family_pairs_["majority_accuracy"],
        thresholds_below_random=bool((family_pairs_["threshold"] <= family_pairs_["random p99"]).all()),
        random_p99=family_pairs_["random p99"], initial_p99=family_pairs_["initial p99"],
        threshold_group_share=family_pairs_["largest group share (threshold)"],
        paper_rule_group_share=family_pairs_.get("largest group share (cos > 0.7)"),
        best_match_group_share=family_pairs_["largest group share (best_match)"].max(),
        family_fvu=dict(zip(family_table.width, family_table.fvu, strict=True)),
        family_falls=bool((np.diff(fvu_by_width) < 0).all()), curves=per_curve, control_name=control_name,
        control_like=(control_name is not None
                      and bool(per_curve[control_name].excess >= CONTROL_LIKE_SHARE * min(family_excess))),
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
        f"live latents are novel (mean {v.novel.mean():.1%}), {v.near_paper} the paper's ~{PAPER_NOVEL:.0%}"
        + ("" if v.novel_trained.isna().all() else
           f"; among the latents that left their initial direction: {', '.join(f'{x:.1%}' for x in v.novel_trained)}")
        + f" ({v.n_dead} dead latents left out). "
        + ("There is no control pair (two seeds of one width) to hold them against." if v.control_name is None
           else f"The control pair (same width, another seed) has {v.control_novel:.1%} novel latents: "
           + ("the family's novel fractions are well above this null." if v.above_null
              else "the family's novel fractions are not clearly above this null.")),
        f"- **Cosine proxy**: with the {'fitted' if v.threshold_fitted else 'given'} threshold "
        f"({', '.join(f'{t:.2f}' for t in v.thresholds)}), 'max cosine below the threshold' predicts the measured "
        f"class for {', '.join(f'{a:.1%}' for a in v.proxy_accuracy)} of live latents, against "
        f"{', '.join(f'{m:.1%}' for m in v.majority_accuracy)} for always predicting the more common class "
        f"(a gain of {', '.join(f'{g:+.1%}' for g in v.proxy_accuracy - v.majority_accuracy)}). The thresholds lie "
        + ("below or at" if v.thresholds_below_random else "partly above")
        + f" the 99th percentile of random directions' max cosine "
        f"({', '.join(f'{x:.2f}' for x in v.random_p99)}"
        + ("" if v.initial_p99.isna().all() else
           f"; the SAEs at initialisation: {', '.join(f'{x:.2f}' for x in v.initial_p99)}")
        + f"), and their graph joins "
        f"{', '.join(f'{x:.0%}' for x in v.threshold_group_share)} of all latents into one group"
        + ("" if v.paper_rule_group_share is None else
           f" (at the paper's fixed cosine of {AGREEMENT_COSINE}: "
           f"{', '.join(f'{x:.0%}' for x in v.paper_rule_group_share)})")
        + f"; the best-match groups hold at most {v.best_match_group_share:.1%}.",
        f"- **Family**: FVU {'falls' if v.family_falls else 'does not fall'} with width "
        f"({', '.join(f'{w}: {f:.3f}' for w, f in v.family_fvu.items())}).",
    ]
    lines += [_curve_line(name, c) for name, c in v.curves.items()]
    family_excess = [c.excess for name, c in v.curves.items() if name != v.control_name]
    if v.control_name is None:
        lines.append(
            f"- **Why the walks rise**: the order takes, at every evaluated point, the remaining steps that help the "
            f"current stitched SAE most; yet the swap phase raises FVU above both ends by "
            f"{', '.join(f'{x:.3f}' for x in family_excess)}. Without a control pair (two seeds of one width) this "
            f"chapter cannot say how much of that rise two runs of one width would show as well.")
        return "\n".join(lines)
    control_curve = v.curves[v.control_name]
    lines.append(
        f"- **Why the walks rise**: the order takes, at every evaluated point, the remaining steps that help the "
        f"current stitched SAE most; yet the swap phase raises FVU above both ends by "
        f"{', '.join(f'{x:.3f}' for x in family_excess)} for the family's pairs and by {control_curve.excess:.3f} "
        f"for the control pair, whose two SAEs have the same width ({v.control_novel:.1%} novel latents). "
        + ("Swapping latents between two independently trained dictionaries costs about as much between two "
           "seeds of one width as between two widths: at this budget the rise measures how differently two runs "
           "carve up the activations (their latents work together, not one by one) at least as much as anything "
           "a larger SAE adds. How much of it remains between dictionaries that agree as published ones do is "
           "not measured here (see the agreement of the two seeds above)."
           if v.control_like else
           "The control's rise is much smaller, so most of the family's rise is specific to the width change."))
    return "\n".join(lines)


def summary(v: Verdict, agreement: AgreementVerdict | None = None) -> Summary:
    """The chapter's headline and key numbers: the novel fraction of each family pair beside the
    control pair's (two seeds of one width), and the swap phase's excess FVU of both; with the
    ``agreement`` verdict, how far two seeds agree and what that allows."""
    pairs = ", ".join(f"{x:.1%} ({p})" for p, x in v.novel.items())
    numbers: dict = {f"novel_fraction: {p}": x for p, x in v.novel.items()}
    family_excess = {f"swap_excess_fvu: {name}": c.excess for name, c in v.curves.items() if name != v.control_name}
    if v.control_name is None:
        headline = (f"Of a larger published SAE's live latents, {pairs} are novel (not explained by the next "
                    f"smaller SAE); the paper reports about {PAPER_NOVEL:.0%}. No control pair: the published SAEs "
                    "include no second seed of one width.")
        numbers |= {"novel_fraction: mean": v.novel.mean(), **family_excess}
        if agreement is not None:
            numbers |= {f"shared_fraction: {p}": x for p, x in agreement.family_shared.items()}
            numbers |= {"shared_fraction: random": agreement.random_shared}
        return Summary(headline, numbers)
    headline = (f"Of a larger SAE's live latents, {pairs} are novel (not explained by the next smaller SAE), "
                f"against {v.control_novel:.1%} for the control pair (the smallest width from another seed); "
                f"the paper reports about {PAPER_NOVEL:.0%}.")
    numbers |= {"novel_fraction: control": v.control_novel, "novel_fraction: mean": v.novel.mean(),
                "above_null": v.above_null}
    numbers |= family_excess
    numbers |= {"swap_excess_fvu: control": v.curves[v.control_name].excess, "control_like": v.control_like}
    if agreement is not None:
        headline += (f" Two seeds of one width share {agreement.shared:.1%} of their latents at cosine > "
                     f"{AGREEMENT_COSINE} (random directions: {agreement.random_shared:.1%}; published SAEs: "
                     f"{PUBLISHED_AGREEMENT[0]:.0%}-{PUBLISHED_AGREEMENT[1]:.0%}), so these numbers describe "
                     + ("dictionaries that have not converged to a common one." if agreement.below_published
                        else "dictionaries that agree about as well as published ones."))
        numbers |= {"shared_fraction: control": agreement.shared, "shared_fraction: random": agreement.random_shared,
                    "shared_fraction: control trend": agreement.trend}
    return Summary(headline, numbers)
