"""Chapter 02, shrinkage: the architecture sweeps at each site, the claims read off them
(L0 at equal loss recovered, the contrast of γ), and the Gated-to-JumpReLU check."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from . import common
from .common import Summary, plateau_settings

__all__ = ["CLEARLY_LOWER_L0", "FIDELITY_METRICS", "RESULT_COLUMNS", "SAME_L0", "SETTINGS", "UNBIASED_WITHIN",
           "SiteSweep", "SiteVerdict", "equivalence_check", "fidelity_ratios", "ratio_trend", "render_equivalence",
           "render_verdict", "render_verdicts", "results_display", "site_verdict", "snapshot_results", "summary",
           "sweep_configs", "sweep_site"]

CLEARLY_LOWER_L0 = 0.8
"""A median Gated/baseline L0 ratio below this is "clearly lower L0"."""
SAME_L0 = 1.25
"""... below this (and at least :data:`CLEARLY_LOWER_L0`) "about the same L0", else "higher L0"."""
UNBIASED_WITHIN = 0.02
"""The Gated SAE "does not shrink" when all its ``|γ - 1|`` are at most this."""

RESULT_COLUMNS = ["site", "arch", "l1_coefficient", "k", "l0_coefficient", "l0", "fvu", "relative_reconstruction_bias",
                  "loss_recovered", "delta_lm_loss", "delta_lm_loss_se", "dead_fraction"]
#: The fidelities at which the Gated/baseline L0 ratio is read: (how the page names it, higher is better).
#: Loss recovered comes last: it is squeezed near 1 where zero-ablation costs far more than any SAE.
FIDELITY_METRICS = {"fvu": ("FVU", False), "delta_lm_loss": ("ΔLM loss", False),
                    "loss_recovered": ("loss recovered", True)}
#: The sparsity setting of each architecture: (column of the results, how the page names it).
SETTINGS = {"relu": ("l1_coefficient", "L1"), "gated": ("l1_coefficient", "L1"), "topk": ("k", "k"),
            "batchtopk": ("k", "k"), "jumprelu": ("l0_coefficient", "L0 coef.")}


def results_display(results: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """The sweeps' results as the page shows them: the site's short name, the architecture with its
    one sparsity setting (``L1 2``, ``k 32``, ``L0 coef. 0.3``) instead of a column per setting,
    then L0, FVU, gamma, loss recovered, delta LM loss and the dead latents in percent."""
    def setting(row: pd.Series) -> str:
        column, label = SETTINGS[row["arch"]]
        return f"{row['arch']}, {label} {row[column]:g}"

    return pd.DataFrame({
        "site": results["site"].str.rsplit(".", n=1).str[-1].str.removeprefix("hook_"),
        "SAE": results.apply(setting, axis=1),
        "L0": results["l0"].round(1),
        "FVU": results["fvu"].round(decimals),
        "γ": results["relative_reconstruction_bias"].round(decimals),
        "loss recovered": results["loss_recovered"].round(decimals),
        "ΔLM loss": results["delta_lm_loss"].round(decimals),
        "± (SE)": results["delta_lm_loss_se"].round(decimals) if "delta_lm_loss_se" in results else float("nan"),
        "dead %": (results["dead_fraction"] * 100).round(1),
    })


def sweep_configs(gated_width: int, relu_width_factor: float, l1_relu: list[float], l1_gated: list[float],
                  k_topk: list[int], l0_jumprelu: list[float], jumprelu_threshold_lr_scale: float,
                  plateau_tolerance: float | None = None, **common_settings: Any) -> list[dict]:
    """Every architecture and sparsity setting of one site's sweep (the baseline
    ``relu_width_factor`` times wider: equal compute); ``common_settings`` for all, at constant
    learning rate until each SAE's plateau (:func:`~.common.plateau_settings`)."""
    relu_width = int(round(relu_width_factor * gated_width))
    common_settings = {**plateau_settings(plateau_tolerance), **common_settings}
    return ([dict(arch="relu", width=relu_width, l1_coefficient=l1, **common_settings) for l1 in l1_relu]
            + [dict(arch="gated", width=gated_width, l1_coefficient=l1, **common_settings) for l1 in l1_gated]
            + [dict(arch=arch, width=gated_width, k=k, **common_settings) for arch in ("topk", "batchtopk")
               for k in k_topk]
            + [dict(arch="jumprelu", width=gated_width, l0_coefficient=l0,
                    sae_options={"threshold_lr_scale": jumprelu_threshold_lr_scale}, **common_settings)
               for l0 in l0_jumprelu])


class SiteSweep(NamedTuple):
    """One site's sweep: a row per SAE, its health table and the first Gated SAE."""

    rows: list[dict[str, Any]]
    health: pd.DataFrame
    gated: Any
    snapshots: list[dict[int, Any]]
    """Each SAE's snapshots and its final SAE, by step (in configuration order)."""


def sweep_site(model: Any, site: str, train_cache: Any, eval_cache: Any, configs: list[dict], *, data_root: str,
               n_splice_tokens: int, n_snapshots: int = 0) -> SiteSweep:
    """Train ``configs`` in one pass at ``site`` (with ``n_snapshots`` snapshots each, at halvings of
    ``steps``), evaluate them on held-out activations and splice them into ``model``."""
    from sae_helpers.evaluation import splice_eval
    from sae_helpers.training import health_table, run_snapshots, train_saes

    out_dir = common.run_dir(data_root, "02_shrinkage", site)
    steps = max(c["steps"] for c in configs)
    sweep = train_saes(train_cache, configs, out_dir=out_dir, eval_activations=eval_cache,
                       snapshots=common.snapshot_steps(steps, n_snapshots))
    spliced = splice_eval(model, sweep.saes, n_splice_tokens)
    rows = []
    for config_row, splice_row in zip(sweep.results.to_dict("records"), spliced, strict=True):
        setting = {name: config_row.get(name) for name in ("l1_coefficient", "k", "l0_coefficient")}
        rows.append({"site": site, "arch": config_row["arch"], "width": config_row["width"], **setting, **splice_row})
    names = [f"{site.split('.hook_')[-1]}: {name}" for name in sweep.results["name"]]
    evaluations = dict(zip(names, sweep.results.to_dict("records"), strict=True))
    health = health_table(dict(zip(names, sweep.saes, strict=True)), evaluations=evaluations)
    gated = next(sae for sae, cfg in zip(sweep.saes, configs, strict=True) if cfg["arch"] == "gated")
    return SiteSweep(rows, health, gated, run_snapshots(out_dir, configs, sweep.saes))


def snapshot_results(site: str, sweep: SiteSweep, eval_activations: Any, archs: tuple[str, ...] = ("relu", "gated"),
                     max_tokens: int | None = 8192) -> pd.DataFrame:
    """L0 and FVU on held-out activations (the first ``max_tokens``) of every snapshot of the ``archs``
    runs, a row per run and stage: ``stage`` (the step, or ``"final"``), ``tokens``, ``arch``, ``l0``,
    ``fvu``. Stages are the snapshot steps every run reached, then each run's end."""
    from sae_helpers.evaluation import evaluate
    from sae_helpers.evaluation.dose_response import training_tokens

    runs = [(row["arch"], by_step) for row, by_step in zip(sweep.rows, sweep.snapshots, strict=True)
            if row["arch"] in archs]
    if not runs:
        return pd.DataFrame(columns=["site", "stage", "tokens", "arch", "l0", "fvu"])
    shared = sorted(set.intersection(*(set(s) for _, s in runs)) - {max(s) for _, s in runs})
    rows = []
    for arch, by_step in runs:
        for stage, step in [*((str(step), step) for step in shared), ("final", max(by_step))]:
            sae = by_step[step]
            measured = evaluate(sae, eval_activations, max_tokens=max_tokens)
            rows.append({"site": site, "stage": stage, "tokens": training_tokens(sae, step), "arch": arch,
                         "l0": measured["l0"], "fvu": measured["fvu"]})
    return pd.DataFrame(rows)


def ratio_trend(snapshots: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """The Gated/baseline L0 ratio at the middle of the two sweeps' common FVU range, at every stage
    of :func:`snapshot_results` (a row per site and stage, with its bootstrap interval and the
    fewest activations any run of the stage had seen)."""
    from sae_helpers.evaluation.frontier import fidelity_targets, l0_ratio_at_fidelity

    rows = []
    for (site, stage), runs in snapshots.groupby(["site", "stage"], sort=False):
        targets = fidelity_targets(runs, "fvu", "relu", "gated", quantiles=(0.5,))
        if not targets:
            continue
        ratio = l0_ratio_at_fidelity(runs, targets, y="fvu", n_boot=n_boot, seed=seed).iloc[0]
        rows.append({"site": site, "stage": stage, "tokens": int(runs["tokens"].min()), "fvu": targets[0],
                     "l0_ratio": ratio["ratio"], "low": ratio["low"], "high": ratio["high"]})
    return pd.DataFrame(rows)


def fidelity_ratios(at_site: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The Gated/baseline L0 ratio at three fidelities (the quartiles of the two sweeps' common range)
    of each :data:`FIDELITY_METRICS`, with bootstrap intervals over runs (and seeds, when ``at_site``
    has a ``seed`` column with several values); a row per metric and fidelity."""
    from sae_helpers.evaluation.frontier import fidelity_targets, l0_ratio_at_fidelity

    frames = []
    for metric, (_, higher) in FIDELITY_METRICS.items():
        targets = fidelity_targets(at_site, metric, "relu", "gated")
        if targets:
            table = l0_ratio_at_fidelity(at_site, targets, y=metric, higher_is_better=higher, n_boot=n_boot, seed=seed)
            frames.append(table.assign(metric=metric))
    columns = ["metric", "target", "ratio", "low", "high", "resolved", "l0_relu", "l0_gated"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


class SiteVerdict(NamedTuple):
    """What one site's sweep says about the paper's claims."""

    site: str
    comparison: pd.DataFrame
    """:func:`~sae_helpers.evaluation.compare_at_equal_fidelity` of the Gated and baseline frontiers."""
    l0_ratio: float | None
    """The median Gated/baseline L0 ratio at equal loss recovered (``None``: the sweeps do not overlap)."""
    n_matched: int
    relu_gamma: tuple[float, float]
    """(min, max) of the baseline's γ."""
    gated_gamma: tuple[float, float]
    gated_unbiased: bool
    """All Gated ``|γ - 1|`` are at most :data:`UNBIASED_WITHIN`."""
    others: dict[str, tuple[float, float]]
    """(min, max) of γ of each architecture without an L1 penalty."""
    ratios: pd.DataFrame
    """:func:`fidelity_ratios`: the ratio at three fidelities of FVU, ΔLM loss and loss recovered."""
    delta_lm_se: tuple[float, float] | None = None
    """(min, max) standard error of the Gated and baseline runs' ΔLM loss (``None``: not measured)."""
    delta_lm: tuple[float, float] | None = None
    """(min, max) of those runs' ΔLM loss."""


def site_verdict(at_site: pd.DataFrame, site: str) -> SiteVerdict:
    """Claim (a), claim (b) and the other architectures' γ at one site (rows of that site)."""
    from sae_helpers.evaluation import compare_at_equal_fidelity

    comparison = compare_at_equal_fidelity(at_site, "relu", "gated")
    ratios = comparison["l0_ratio"].dropna()
    relu_gamma = at_site[at_site.arch == "relu"]["relative_reconstruction_bias"]
    gated_gamma = at_site[at_site.arch == "gated"]["relative_reconstruction_bias"]
    others = {arch: (g.min(), g.max())
              for arch, g in at_site.groupby("arch", sort=False)["relative_reconstruction_bias"]
              if arch not in ("relu", "gated")}
    return SiteVerdict(site, comparison, ratios.median() if len(ratios) else None, len(ratios),
                       (relu_gamma.min(), relu_gamma.max()), (gated_gamma.min(), gated_gamma.max()),
                       bool((gated_gamma - 1).abs().max() <= UNBIASED_WITHIN), others,
                       fidelity_ratios(at_site) if "fvu" in at_site.columns else pd.DataFrame(),
                       *_delta_lm_ranges(at_site))


def _delta_lm_ranges(at_site: pd.DataFrame) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    l1 = at_site[at_site.arch.isin(["relu", "gated"])]
    if "delta_lm_loss_se" not in l1.columns or not l1["delta_lm_loss_se"].notna().any():
        return None, None
    return ((l1["delta_lm_loss_se"].min(), l1["delta_lm_loss_se"].max()),
            (l1["delta_lm_loss"].min(), l1["delta_lm_loss"].max()))


def render_verdict(v: SiteVerdict) -> str:
    """One site's line (markdown list item)."""
    from .plotting import ARCH_LABELS

    if v.l0_ratio is not None:
        ratio = v.l0_ratio
        verdict = ("clearly lower L0" if ratio < CLEARLY_LOWER_L0 else "about the same L0" if ratio < SAME_L0
                   else "higher L0")
        claim_a = (f"(a) at equal loss recovered the Gated SAEs need a median {ratio:.2f}x the baseline's L0 "
                   f"({v.n_matched} matched point{'' if v.n_matched == 1 else 's'}): {verdict}.")
    else:
        claim_a = ("(a) the Gated and baseline sweeps do not overlap in loss recovered, so no L0 ratio can be "
                   "read off; widen the sweeps.")
    (relu_min, relu_max), (gated_min, gated_max) = v.relu_gamma, v.gated_gamma
    if relu_max < gated_min and v.gated_unbiased:
        contrast = f"the baseline shrinks and the Gated SAE does not (all its |γ − 1| ≤ {UNBIASED_WITHIN})"
    elif relu_max < gated_min:
        contrast = "both shrink here, the baseline more: every baseline γ lies below every Gated γ"
    else:
        contrast = "the two architectures' γ ranges overlap, so the shrinkage contrast is not clear here"
    claim_b = (f"(b) Gated γ ranges over {gated_min:.3f}-{gated_max:.3f}, baseline γ over "
               f"{relu_min:.3f}-{relu_max:.3f}: {contrast}.")
    others = "; ".join(f"{ARCH_LABELS.get(arch, arch)} {low:.3f}-{high:.3f}" for arch, (low, high) in v.others.items())
    claim_c = f"Without an L1 penalty, γ ranges over: {others}." if others else ""
    return f"- **{v.site}**: {claim_a} {_render_ratios(v.ratios)} {_render_delta_lm(v)} {claim_b} {claim_c}"


def _render_ratios(ratios: pd.DataFrame) -> str:
    """The ratio at matched FVU and ΔLM loss, with its intervals (loss recovered is in claim (a))."""
    parts = []
    for metric in ("fvu", "delta_lm_loss"):
        rows = ratios[ratios.metric == metric] if len(ratios) else ratios
        if not len(rows):
            continue
        label = FIDELITY_METRICS[metric][0]
        values = ", ".join(f"{r.target:.3g}: {r.ratio:.2f}x [{r.low:.2f}, {r.high:.2f}]" for r in rows.itertuples())
        parts.append(f"at {label} {values}")
    if not parts:
        return "The sweeps do not overlap in FVU or ΔLM loss, so no ratio can be read off there."
    return ("The Gated SAEs' L0 over the baseline's at matched fidelity (90% bootstrap intervals over the sweep's "
            "runs): " + "; ".join(parts) + ".")


def _render_delta_lm(v: SiteVerdict) -> str:
    if v.delta_lm_se is None or v.delta_lm is None:
        return ""
    (se_low, se_high), (low, high) = v.delta_lm_se, v.delta_lm
    return (f"ΔLM loss is measured to a standard error of {se_low:.3f}-{se_high:.3f} nats per token (over the "
            f"spliced sequences, each paired with the clean run), beside values of {low:.3f}-{high:.3f} across the "
            "Gated and baseline runs.")


def render_verdicts(verdicts: list[SiteVerdict]) -> str:
    """Every site's line."""
    return "\n".join(render_verdict(v) for v in verdicts)


def equivalence_check(model: Any, gated: Any, eval_cache: Any, n_samples: int, seed: int,
                      n_splice_tokens: int) -> dict[str, float]:
    """A Gated SAE against its :meth:`~sae_helpers.saes.GatedSAE.to_jumprelu` conversion on ``n_samples``
    held-out activations (drawn with ``seed``) and in the spliced loss."""
    import torch

    from sae_helpers.data import as_source
    from sae_helpers.evaluation import splice_eval

    jump = gated.to_jumprelu()
    x = as_source(eval_cache).sample(n_samples, seed)
    with torch.no_grad():
        f_gated, f_jump = gated.encode(x), jump.encode(x)
        x_hat_gated, x_hat_jump = gated.decode(f_gated), jump.decode(f_jump)
    spliced_gated, spliced_jump = splice_eval(model, [gated, jump], n_splice_tokens)
    return {
        "same active latents (fraction of tokens)": float(((f_gated > 0) == (f_jump > 0)).all(-1).float().mean()),
        "max |latent difference|": float((f_gated - f_jump).abs().max()),
        "max |reconstruction difference|": float((x_hat_gated - x_hat_jump).abs().max()),
        "max |activation|": float(x.abs().max()),
        "spliced CE, Gated": spliced_gated["ce_sae"],
        "spliced CE, JumpReLU": spliced_jump["ce_sae"],
        "n_samples": len(x),
    }


def render_equivalence(checks: pd.DataFrame) -> str:
    """The conversion's sentence from the per-site checks (a row per site)."""
    worst = checks["max |reconstruction difference|"].max() / checks["max |activation|"].min()
    return (
        f"On {int(checks['n_samples'].min()):,} held-out activations per site the converted JumpReLU SAE selects the "
        f"same active latents on {checks['same active latents (fraction of tokens)'].min():.2%} of tokens; its "
        f"reconstructions differ from the Gated SAE's by at most "
        f"{worst:.1e} of the largest activation, and the spliced losses differ by at most "
        f"{(checks['spliced CE, Gated'] - checks['spliced CE, JumpReLU']).abs().max():.1e} nats per token."
    )


def summary(verdicts: list[SiteVerdict]) -> Summary:
    """The chapter's headline and key numbers: per site the median Gated/baseline L0 ratio at equal
    loss recovered (beside 1, the same L0) and the γ ranges of both (beside 1, no shrinkage)."""
    clauses = [(f"{v.l0_ratio:.2f}x the baseline's" if v.l0_ratio is not None
                else "not comparable (no overlap in loss recovered)")
               + f" at `{v.site}` (baseline γ {v.relu_gamma[0]:.3f}-{v.relu_gamma[1]:.3f}, Gated "
               f"{v.gated_gamma[0]:.3f}-{v.gated_gamma[1]:.3f})" for v in verdicts]
    headline = (f"At equal loss recovered the Gated SAEs' median L0 is {', and '.join(clauses)}; a ratio of 1 "
                f"would be the same L0, and γ = 1 no shrinkage.")
    numbers: dict = {}
    for v in verdicts:
        numbers |= {f"{v.site}: l0_ratio_gated_to_baseline": v.l0_ratio, f"{v.site}: n_matched": v.n_matched,
                    f"{v.site}: gamma_baseline_min": v.relu_gamma[0], f"{v.site}: gamma_baseline_max": v.relu_gamma[1],
                    f"{v.site}: gamma_gated_min": v.gated_gamma[0], f"{v.site}: gamma_gated_max": v.gated_gamma[1]}
        middle = _middle(v.ratios, "fvu")
        if middle is not None:
            numbers |= {f"{v.site}: l0_ratio_at_fvu_{middle.target:.3g}": middle.ratio,
                        f"{v.site}: l0_ratio_at_fvu low": middle.low, f"{v.site}: l0_ratio_at_fvu high": middle.high}
    at_fvu = [f"{m.ratio:.2f}x [{m.low:.2f}, {m.high:.2f}] at `{v.site}` (FVU {m.target:.3g})"
              for v in verdicts for m in [_middle(v.ratios, "fvu")] if m is not None]
    if at_fvu:
        headline += f" At matched FVU the ratio is {', '.join(at_fvu)}."
    return Summary(headline, numbers)


def _middle(ratios: pd.DataFrame, metric: str) -> Any:
    """The row of :func:`fidelity_ratios` at the middle fidelity of ``metric`` (``None`` without one)."""
    rows = ratios[ratios.metric == metric] if len(ratios) else ratios
    return rows.iloc[len(rows) // 2] if len(rows) else None
