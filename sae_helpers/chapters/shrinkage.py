"""Chapter 02, shrinkage: the architecture sweeps at each site, the claims read off them
(L0 at equal loss recovered, the contrast of γ), and the Gated-to-JumpReLU check."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from . import common
from .common import Summary

__all__ = ["CLEARLY_LOWER_L0", "RESULT_COLUMNS", "SAME_L0", "SETTINGS", "UNBIASED_WITHIN", "SiteSweep", "SiteVerdict",
           "equivalence_check", "render_equivalence", "render_verdict", "render_verdicts", "results_display",
           "site_verdict", "summary", "sweep_configs", "sweep_site"]

CLEARLY_LOWER_L0 = 0.8
"""A median Gated/baseline L0 ratio below this is "clearly lower L0"."""
SAME_L0 = 1.25
"""... below this (and at least :data:`CLEARLY_LOWER_L0`) "about the same L0", else "higher L0"."""
UNBIASED_WITHIN = 0.02
"""The Gated SAE "does not shrink" when all its ``|γ - 1|`` are at most this."""

RESULT_COLUMNS = ["site", "arch", "l1_coefficient", "k", "l0_coefficient", "l0", "fvu", "relative_reconstruction_bias",
                  "loss_recovered", "delta_lm_loss", "dead_fraction"]
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
        "dead %": (results["dead_fraction"] * 100).round(1),
    })


def sweep_configs(gated_width: int, relu_width_factor: float, l1_relu: list[float], l1_gated: list[float],
                  k_topk: list[int], l0_jumprelu: list[float], jumprelu_threshold_lr_scale: float,
                  **common_settings: Any) -> list[dict]:
    """Every architecture and sparsity setting of one site's sweep (the baseline
    ``relu_width_factor`` times wider: equal compute); ``common_settings`` for all."""
    relu_width = int(round(relu_width_factor * gated_width))
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


def sweep_site(model: Any, site: str, train_cache: Any, eval_cache: Any, configs: list[dict], *, data_root: str,
               n_splice_tokens: int) -> SiteSweep:
    """Train ``configs`` in one pass at ``site``, evaluate them on held-out activations and splice
    them into ``model``."""
    from ..evaluation import health_table
    from ..models import splice_eval
    from ..training import train_saes

    sweep = train_saes(train_cache, configs, out_dir=common.run_dir(data_root, "02_shrinkage", site),
                       eval_activations=eval_cache)
    spliced = splice_eval(model, sweep.saes, n_splice_tokens)
    rows = []
    for config_row, splice_row in zip(sweep.results.to_dict("records"), spliced, strict=True):
        setting = {name: config_row.get(name) for name in ("l1_coefficient", "k", "l0_coefficient")}
        rows.append({"site": site, "arch": config_row["arch"], "width": config_row["width"], **setting, **splice_row})
    names = [f"{site.split('.hook_')[-1]}: {name}" for name in sweep.results["name"]]
    evaluations = dict(zip(names, sweep.results.to_dict("records"), strict=True))
    health = health_table(dict(zip(names, sweep.saes, strict=True)), evaluations=evaluations)
    gated = next(sae for sae, cfg in zip(sweep.saes, configs, strict=True) if cfg["arch"] == "gated")
    return SiteSweep(rows, health, gated)


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


def site_verdict(at_site: pd.DataFrame, site: str) -> SiteVerdict:
    """Claim (a), claim (b) and the other architectures' γ at one site (rows of that site)."""
    from ..evaluation import compare_at_equal_fidelity

    comparison = compare_at_equal_fidelity(at_site, "relu", "gated")
    ratios = comparison["l0_ratio"].dropna()
    relu_gamma = at_site[at_site.arch == "relu"]["relative_reconstruction_bias"]
    gated_gamma = at_site[at_site.arch == "gated"]["relative_reconstruction_bias"]
    others = {arch: (g.min(), g.max())
              for arch, g in at_site.groupby("arch", sort=False)["relative_reconstruction_bias"]
              if arch not in ("relu", "gated")}
    return SiteVerdict(site, comparison, ratios.median() if len(ratios) else None, len(ratios),
                       (relu_gamma.min(), relu_gamma.max()), (gated_gamma.min(), gated_gamma.max()),
                       bool((gated_gamma - 1).abs().max() <= UNBIASED_WITHIN), others)


def render_verdict(v: SiteVerdict) -> str:
    """One site's line (markdown list item)."""
    from ..plotting import ARCH_LABELS

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
    return f"- **{v.site}**: {claim_a} {claim_b} {claim_c}"


def render_verdicts(verdicts: list[SiteVerdict]) -> str:
    """Every site's line."""
    return "\n".join(render_verdict(v) for v in verdicts)


def equivalence_check(model: Any, gated: Any, eval_cache: Any, n_samples: int, seed: int,
                      n_splice_tokens: int) -> dict[str, float]:
    """A Gated SAE against its :meth:`~sae_helpers.GatedSAE.to_jumprelu` conversion on ``n_samples``
    held-out activations (drawn with ``seed``) and in the spliced loss."""
    import torch

    from ..data import as_source
    from ..models import splice_eval

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
    return Summary(headline, numbers)
