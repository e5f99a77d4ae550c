"""The book's figures: one function per figure kind (matplotlib + seaborn).

Each function draws on the ``ax`` it is given (or a new one) and returns the axes,
so notebooks compose them into figures and keep the inline backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes

from .evaluation.metrics import log10_density_histogram

ARCH_LABELS = {"relu": "Baseline (ReLU + L1)", "gated": "Gated", "topk": "TopK", "batchtopk": "BatchTopK",
               "jumprelu": "JumpReLU"}
ARCH_COLORS = {"relu": "#d95f02", "gated": "#1b9e77", "jumprelu": "#7570b3", "topk": "#e7298a",
               "batchtopk": "#66a61e"}
METRIC_LABELS = {
    "l0": "L0 (active latents per token)",
    "fvu": "Fraction of variance unexplained",
    "explained_variance": "Explained variance",
    "relative_reconstruction_bias": r"Relative reconstruction bias $\gamma$",
    "mmcs": "MMCS (feature recovery)",
    "dead_fraction": "Dead fraction",
    "loss_recovered": "Loss recovered",
    "delta_lm_loss": r"$\Delta$ LM loss (nats/token)",
    "kl": "KL(clean || spliced) (nats/token)",
}


def use_book_style() -> None:
    """The seaborn theme used by every chapter."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def _ax(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(5, 3.6))[1]


def plot_metric_tradeoff(
    results: pd.DataFrame, x: str = "l0", y: str = "fvu", hue: str = "arch", ax: Axes | None = None,
    logx: bool = False,
) -> Axes:
    """One line per architecture through its runs, e.g. L0 against FVU."""
    ax = _ax(ax)
    for arch, group in results.sort_values(x).groupby(hue, sort=False):
        ax.plot(group[x], group[y], "o-", color=ARCH_COLORS.get(arch), label=ARCH_LABELS.get(arch, arch))
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    if logx:
        ax.set_xscale("log")
    if y == "relative_reconstruction_bias":
        ax.axhline(1.0, color="0.4", lw=1, ls="--")
    ax.legend(frameon=False)
    return ax


def plot_max_cosine_histogram(values: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
                              ax: Axes | None = None, bins: int = 30) -> Axes:
    """Histograms of max cosine similarities, one per named set."""
    ax = _ax(ax)
    edges = np.linspace(0, 1, bins + 1)
    for name, vals in values.items():
        ax.hist(np.asarray(vals, dtype=float), bins=edges, histtype="step", lw=2,
                color=ARCH_COLORS.get(name), label=ARCH_LABELS.get(name, name))
    ax.set_xlabel("Max cosine similarity to a learned decoder row")
    ax.set_ylabel("True features")
    ax.legend(frameon=False, loc="upper left")
    return ax


def plot_density_histogram(densities: Mapping[str, np.ndarray], ax: Axes | None = None, bins: int = 40) -> Axes:
    """log10 feature-density histograms; dead latents are reported in the legend."""
    ax = _ax(ax)
    all_alive = np.concatenate([np.asarray(d)[np.asarray(d) > 0] for d in densities.values()])
    lo = np.log10(all_alive.min()) if len(all_alive) else -7
    edges = np.linspace(lo, 0, bins + 1)
    for name, density in densities.items():
        counts, _, n_dead = log10_density_histogram(density, bins=bins)
        alive = np.asarray(density)[np.asarray(density) > 0]
        ax.hist(np.log10(alive), bins=edges, histtype="step", lw=2, color=ARCH_COLORS.get(name),
                label=f"{ARCH_LABELS.get(name, name)} ({n_dead} dead)")
    ax.set_xlabel(r"$\log_{10}$ firing frequency")
    ax.set_ylabel("Latents")
    ax.legend(frameon=False, loc="upper left")
    return ax


def plot_true_vs_latent(coefficients: torch.Tensor, activations: torch.Tensor, label: str = "",
                        ax: Axes | None = None, color: str | None = None, max_points: int = 3000) -> Axes:
    """Scatter of a feature's true coefficient against its matched latent's activation,
    on samples where the feature is present, with the identity line (no shrinkage)."""
    ax = _ax(ax)
    c = coefficients.double().cpu().numpy()
    a = activations.double().cpu().numpy()
    on = c > 0
    c, a = c[on][:max_points], a[on][:max_points]
    ax.scatter(c, a, s=6, alpha=0.35, color=color, label=label)
    top = max(float(c.max(initial=1.0)), float(a.max(initial=1.0)))
    ax.plot([0, top], [0, top], color="0.3", lw=1, ls="--", label="identity")
    ax.set_xlabel("True coefficient")
    ax.set_ylabel("Latent activation")
    ax.legend(frameon=False, loc="upper left")
    return ax


def plot_feature_cosines(features: torch.Tensor, ax: Axes | None = None) -> Axes:
    """Heat map of the cosine similarities between true features (superposition)."""
    ax = _ax(ax)
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sns.heatmap((f @ f.T).numpy(), ax=ax, cmap="RdBu_r", vmin=-1, vmax=1, square=True,
                xticklabels=False, yticklabels=False, cbar_kws={"label": "cosine"})
    ax.set_title(f"{f.shape[0]} features in {f.shape[1]} dimensions")
    return ax


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]],
                         metrics: Sequence[str] = ("loss", "l0", "fvu")) -> plt.Figure:
    """Training-log curves (one panel per metric, one line per named run)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        for name, log in logs.items():
            steps = [r["step"] for r in log]
            ax.plot(steps, [r[metric] for r in log], label=name, color=ARCH_COLORS.get(name.split()[0]))
        ax.set_xlabel("step")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if metric == "loss":
            ax.set_yscale("log")
    np.atleast_1d(axes)[0].legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_frontier(results: pd.DataFrame, x: str = "l0", y: str = "loss_recovered", hue: str = "arch",
                  ax: Axes | None = None, logx: bool = True, higher_is_better: bool = True) -> Axes:
    """Every run as a point, each architecture's Pareto frontier as a line."""
    from .evaluation.frontier import pareto_frontier

    ax = _ax(ax)
    frontier = pareto_frontier(results, x, y, hue, higher_is_better)
    for arch, group in results.groupby(hue, sort=False):
        color = ARCH_COLORS.get(arch)
        ax.scatter(group[x], group[y], color=color, alpha=0.45, s=28)
        line = frontier[frontier[hue] == arch]
        ax.plot(line[x], line[y], "o-", color=color, label=f"{ARCH_LABELS.get(arch, arch)} frontier")
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    if logx:
        ax.set_xscale("log")
    ax.legend(frameon=False)
    return ax
