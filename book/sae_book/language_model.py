"""Chapter 01, training on a language model: the two SAEs at equal compute, their spliced
losses and the sentence that reports them, and the latents read through their contexts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .common import Summary, plateau_settings

__all__ = ["LOSS_COLUMNS", "READABLE_DENSITY", "TREND_METRICS", "configs", "loss_table", "readable_latents",
           "render_losses", "snapshot_runs", "summary"]

LOSS_COLUMNS = ["arch", "width", "l0", "fvu", "relative_reconstruction_bias", "dead_fraction", "dense_fraction",
                "ce_clean", "ce_sae", "ce_zero_ablation", "loss_recovered", "delta_lm_loss", "kl"]
READABLE_DENSITY = (1e-3, 3e-2)
"""Latents read through their contexts fire on more than 0.1% and fewer than 3% of the held-out tokens."""


#: The numbers whose trend with training length the chapter reports, with their names in the text.
TREND_METRICS = {"l0": "L0", "fvu": "FVU", "delta_lm_loss": "ΔLM loss", "relative_reconstruction_bias": "γ"}


def configs(gated_width: int, relu_width_factor: float, l1_relu: float, l1_gated: float,
            plateau_tolerance: float | None = None, **common: Any) -> list[dict]:
    """A baseline (``relu_width_factor`` times wider: equal compute) and a Gated SAE; ``common``
    (steps, batch size, lr, seed) for both, at constant learning rate, each stopping at its plateau
    with ``plateau_tolerance`` (:func:`~.common.plateau_settings`)."""
    relu_width = int(round(relu_width_factor * gated_width))
    schedule = plateau_settings(plateau_tolerance)
    return [dict(arch="relu", width=relu_width, l1_coefficient=l1_relu, **schedule, **common),
            dict(arch="gated", width=gated_width, l1_coefficient=l1_gated, **schedule, **common)]


def snapshot_runs(out_dir: Any, configs: list[dict], saes: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """Each SAE's snapshots and its final SAE, by step, under the SAE's name (``{arch: sae}``)."""
    from sae_helpers.training import run_snapshots

    return dict(zip(saes, run_snapshots(out_dir, configs, list(saes.values())), strict=True))


def loss_table(saes: dict[str, Any], spliced: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per SAE (``{arch: sae}``): its width and its :func:`~sae_helpers.splice_eval` result."""
    return pd.DataFrame([{"arch": arch, "width": sae.d_sae, **row}
                         for (arch, sae), row in zip(saes.items(), spliced, strict=True)])


def render_losses(table: pd.DataFrame, hook_name: str) -> str:
    """The losses' paragraph: clean and zero-ablated loss, each SAE's loss recovered and γ."""
    relu_row, gated_row = (table.set_index("arch").loc[a] for a in ("relu", "gated"))
    return (
        f"On {int(relu_row['n_predictions']):,} held-out tokens the clean model's loss is "
        f"{relu_row['ce_clean']:.3f} nats/token and zero-ablating `{hook_name}` raises it to "
        f"{relu_row['ce_zero_ablation']:.3f}. The baseline SAE (L0 {relu_row['l0']:.1f}) recovers "
        f"{relu_row['loss_recovered']:.1%} of that loss (ΔLM loss {relu_row['delta_lm_loss']:.3f}); the Gated SAE "
        f"(L0 {gated_row['l0']:.1f}) recovers {gated_row['loss_recovered']:.1%} (ΔLM loss "
        f"{gated_row['delta_lm_loss']:.3f}). Relative reconstruction bias: baseline γ = "
        f"{relu_row['relative_reconstruction_bias']:.3f}, Gated γ = {gated_row['relative_reconstruction_bias']:.3f}."
    )


def readable_latents(density: Any, n: int, seed: int) -> list[int]:
    """Up to ``n`` latents drawn (with ``seed``) among those whose density lies strictly inside
    :data:`READABLE_DENSITY`."""
    density = pd.Series(density)
    low, high = READABLE_DENSITY
    candidates = density[(density > low) & (density < high)]
    return candidates.sample(min(n, len(candidates)), random_state=seed).index.tolist()


def summary(table: pd.DataFrame, hook_name: str) -> Summary:
    """The chapter's headline and key numbers: each SAE's loss recovered at its L0 (beside the
    zero-ablation it is measured against) and its γ."""
    relu_row, gated_row = (table.set_index("arch").loc[a] for a in ("relu", "gated"))
    headline = (f"At equal compute on `{hook_name}`, the Gated SAE recovers {gated_row['loss_recovered']:.1%} of the "
                f"language-model loss that zero-ablating the site costs (at L0 {gated_row['l0']:.1f}, γ = "
                f"{gated_row['relative_reconstruction_bias']:.3f}) and the baseline {relu_row['loss_recovered']:.1%} "
                f"(at L0 {relu_row['l0']:.1f}, γ = {relu_row['relative_reconstruction_bias']:.3f}).")
    numbers: dict = {}
    for arch, row in (("baseline", relu_row), ("gated", gated_row)):
        numbers |= {f"{name}_{arch}": row[column] for name, column in (
            ("l0", "l0"), ("loss_recovered", "loss_recovered"), ("delta_lm_loss", "delta_lm_loss"),
            ("gamma", "relative_reconstruction_bias"))}
    numbers |= {"ce_clean": relu_row["ce_clean"], "ce_zero_ablation": relu_row["ce_zero_ablation"]}
    return Summary(headline, numbers)
