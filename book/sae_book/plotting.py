"""The book's figures: one function per figure kind (matplotlib + seaborn).

Each function draws on the ``ax`` it is given (or a new one) and returns the axes,
so notebooks compose them into figures and keep the inline backend.

The book's style (:func:`use_book_style`) is set for a text column of about 690 px: figures at
most :data:`COLUMN_WIDTH` inches wide (:func:`figure`: at most two panels per row), every text
at least :data:`FONT_SIZE` points, legends outside the axes (:func:`legend_below`,
:func:`shared_legend`), and inline figures as SVG whose text stays text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.legend import Legend
from matplotlib.ticker import Formatter, FuncFormatter, LogLocator, NullFormatter

from sae_helpers.evaluation.metrics import log10_density_histogram

ARCH_LABELS = {"relu": "Baseline (ReLU + L1)", "gated": "Gated", "topk": "TopK", "batchtopk": "BatchTopK",
               "jumprelu": "JumpReLU"}
ARCH_COLORS = {"relu": "#d95f02", "gated": "#1b9e77", "jumprelu": "#7570b3", "topk": "#e7298a",
               "batchtopk": "#66a61e"}
METRIC_LABELS = {
    "l0": "L0 (latents per token)",
    "fvu": "FVU (variance unexplained)",
    "explained_variance": "Explained variance",
    "relative_reconstruction_bias": r"Reconstruction bias $\gamma$",
    "mmcs": "MMCS (feature recovery)",
    "dead_fraction": "Dead fraction",
    "loss_recovered": "Loss recovered",
    "delta_lm_loss": r"$\Delta$ LM loss (nats/token)",
    "kl": "KL to clean (nats/token)",
    "mse": "MSE (per element)",
    "n_latents": "Latents",
    "loss": "Training loss",
    "heldout_fvu": "Held-out FVU",
    "heldout_l0": "Held-out L0",
    "tokens": "Training activations (tokens)",
    "l0_ratio": "Gated / baseline L0 at matched FVU",
    "frac_novel": "Novel fraction",
    "shared_fraction": "Shared latents (cos > 0.7)",
    "rising_share": "Rising share of the walk",
    "width": "Width (latents)",
    "max_cos": "Max cosine to the smaller SAE",
    "delta_mse": r"$\Delta$ MSE when inserted",
}
CLASS_COLORS = {"novel": "#1b9e77", "reconstruction": "#d95f02"}


COLUMN_WIDTH = 6.8
"""Width of a figure (inches): with the inline backend's 0.1-inch margins, the 7-inch text column
(about 690 px)."""
FONT_SIZE = 12
"""Smallest text in a figure (points): the page's body font when the figure is shown at column width."""
MAX_COLUMNS = 2
"""Panels per row at the column width."""
ROW_HEIGHT = {1: 4.0, 2: 3.0}
"""Default height (inches) of one row of panels, by panels per row."""
_LEGEND_GAP = 52
"""Points between an axes' bottom edge and a legend placed below it (clears tick labels and x label)."""

BOOK_RC: dict[str, object] = {
    "font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE, "ytick.labelsize": FONT_SIZE, "legend.fontsize": FONT_SIZE,
    "legend.title_fontsize": FONT_SIZE, "figure.titlesize": FONT_SIZE, "figure.labelsize": FONT_SIZE,
    "figure.figsize": (COLUMN_WIDTH, ROW_HEIGHT[1]), "figure.constrained_layout.use": True,
    "legend.frameon": False, "svg.fonttype": "none", "savefig.dpi": 150,
}
"""Matplotlib settings of the book (on top of seaborn's whitegrid theme)."""


def use_book_style() -> None:
    """The book's figure style, for every chapter: seaborn's whitegrid theme with :data:`BOOK_RC`,
    and, inside IPython, inline figures as SVG (text kept as text, so it scales with the page)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc=BOOK_RC)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: no inline backend to configure
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("svg")


def figure(nrows: int = 1, ncols: int = 1, height: float | None = None, **kwargs: object) -> tuple[plt.Figure, object]:
    """A figure of ``nrows`` x ``ncols`` panels at the column width (constrained layout).

    ``height`` is the height of one row (default :data:`ROW_HEIGHT`); ``kwargs`` go to
    :func:`matplotlib.pyplot.subplots`. Raises ``ValueError`` for more than :data:`MAX_COLUMNS` columns."""
    if not 1 <= ncols <= MAX_COLUMNS:
        raise ValueError(f"plotting.figure: ncols={ncols}; at most {MAX_COLUMNS} panels fit in a row of the "
                         f"{COLUMN_WIDTH:g}-inch column: use more rows")
    row = ROW_HEIGHT[ncols] if height is None else height
    return plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, row * nrows), layout="constrained", **kwargs)


def legend_below(ax: Axes, ncols: int = 1, **kwargs: object) -> Legend | None:
    """Place ``ax``'s legend under the axes, below its x label (off the data); ``None`` if nothing is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    below = mtransforms.offset_copy(ax.transAxes, fig=ax.figure, y=-_LEGEND_GAP, units="points")
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                     ncols=ncols, frameon=False, **kwargs)


def shared_legend(fig: plt.Figure, ncols: int = 2, slot: Axes | None = None, **kwargs: object) -> Legend | None:
    """One legend for all panels of ``fig`` (each label once); the panels' own legends go.

    Below the panels, or inside ``slot``, an unused panel of the grid (its axes are turned off)."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                entries.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not entries:
        return None
    if slot is not None:
        slot.axis("off")
        return slot.legend(list(entries.values()), list(entries), loc="center", ncols=1, frameon=False, **kwargs)
    return fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=ncols, frameon=False,
                      **kwargs)


def _log_tick(value: float, _position: object = None) -> str:
    """A log-axis tick label in plain text (``20``, ``0.05``, ``1e-05``): no superscripts, which would print
    below the book's font size."""
    return f"{value:g}"


class _SparseLogMinor(Formatter):
    """Minor log ticks labelled at 2 and 5 times a power of ten, when the axis spans at most two decades
    (a shorter axis has too few decades to read its scale from; more labels would collide)."""

    def __call__(self, value: float, pos: object = None) -> str:
        low, high = sorted(self.axis.get_view_interval())
        if value <= 0 or low <= 0 or math.log10(high / low) > 2:
            return ""
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return _log_tick(value) if any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (2, 5)) else ""


def _count_tick(value: float, _position: object = None) -> str:
    """A tick label for a count on a long log axis: ``10k``, ``1M``, ``1.2B`` (short, so six decades fit)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plain_log(axis: object) -> None:
    axis.set_major_formatter(FuncFormatter(_log_tick))
    axis.set_minor_formatter(_SparseLogMinor())


def log_x(ax: Axes) -> Axes:
    """A log x axis with plain-number labels at decades (and at 2 and 5 on short axes)."""
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    return ax


def log_y(ax: Axes) -> Axes:
    """A log y axis with plain-number labels at decades (and at 2 and 5 on short axes)."""
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    return ax


def _signed_power(value: float, _position: object = None) -> str:
    """A symlog tick label in plain text: ``0``, ``1e-3``, ``-1e-4`` (mathtext superscripts would be too small)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ax(ax: Axes | None) -> Axes:
    return ax if ax is not None else figure()[1]


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
        log_x(ax)
    if y == "relative_reconstruction_bias":
        ax.axhline(1.0, color="0.4", lw=1, ls="--")
    legend_below(ax)
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
    legend_below(ax)
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
    ax.set_xlabel("Firing frequency (log10)")
    ax.set_ylabel("Latents")
    legend_below(ax)
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
    ax.scatter(c, a, s=6, alpha=0.35, color=color, label=label, rasterized=True)
    top = max(float(c.max(initial=1.0)), float(a.max(initial=1.0)))
    ax.plot([0, top], [0, top], color="0.3", lw=1, ls="--", label="identity")
    ax.set_xlabel("True coefficient")
    ax.set_ylabel("Latent activation")
    legend_below(ax)
    return ax


def plot_feature_cosines(features: torch.Tensor, ax: Axes | None = None) -> Axes:
    """Heat map of the cosine similarities between true features (superposition)."""
    ax = _ax(ax)
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sns.heatmap((f @ f.T).numpy(), ax=ax, cmap="RdBu_r", vmin=-1, vmax=1, square=True, rasterized=True,
                xticklabels=False, yticklabels=False, cbar_kws={"label": "cosine"})
    ax.set_title(f"{f.shape[0]} features in {f.shape[1]} dimensions")
    return ax


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]],
                         metrics: Sequence[str] = ("loss", "l0", "fvu")) -> plt.Figure:
    """Training-log curves (one panel per metric, at most two per row; one line per named run;
    one legend, below or in the grid's empty slot)."""
    ncols = min(len(metrics), MAX_COLUMNS)
    nrows = -(-len(metrics) // ncols)
    fig, axes = figure(nrows, ncols, height=ROW_HEIGHT[2] if len(metrics) > 1 else None, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for name, log in logs.items():
            records = [r for r in log if r.get(metric) is not None]  # held-out metrics: evaluation steps only
            ax.plot([r["step"] for r in records], [r[metric] for r in records], label=ARCH_LABELS.get(name, name),
                    color=ARCH_COLORS.get(name.split()[0]))
        ax.set_xlabel("Step")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if metric == "loss":
            log_y(ax)
    shared_legend(fig, slot=axes.flat[-1] if len(metrics) < axes.size else None)
    return fig


def _decades(ax: Axes) -> float:
    low, high = ax.get_xlim()
    return math.log10(high / low) if low > 0 else 0.0


def plot_dose_response(table: pd.DataFrame, metrics: Sequence[str], *, paper_tokens: float | None = None,
                       paper_values: Mapping[str, float] | None = None, hue: str = "name") -> plt.Figure:
    """Each metric against the training activations a run had seen (its snapshots,
    :func:`~sae_helpers.evaluation.dose_response.snapshot_table`; log x axis), one line per run.
    ``paper_tokens`` draws the papers' training budget as a dotted line, and ``paper_values``
    (by metric) the papers' value at it as a star: the gap between the data and the star is how far
    this book's budget is from the papers' regime."""
    ncols = min(len(metrics), MAX_COLUMNS)
    nrows = -(-len(metrics) // ncols)
    fig, axes = figure(nrows, ncols, height=ROW_HEIGHT[2] if len(metrics) > 1 else None, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for name, group in table.sort_values("tokens").groupby(hue, sort=False):
            key = str(name).split()[0]
            ax.plot(group["tokens"], group[metric], "o-", label=ARCH_LABELS.get(str(name), str(name)),
                    color=ARCH_COLORS.get(key))
        if paper_tokens is not None:
            ax.axvline(paper_tokens, color="0.4", lw=1, ls=":", label="the papers' budget")
            if paper_values and metric in paper_values:
                ax.plot([paper_tokens], [paper_values[metric]], "*", color="0.2", ms=12, label="the papers' value")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=100.0 if _decades(ax) > 4 else 10.0))
        ax.xaxis.set_major_formatter(FuncFormatter(_count_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(METRIC_LABELS["tokens"])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    shared_legend(fig, slot=axes.flat[-1] if len(metrics) < axes.size else None)
    return fig


def plot_frontier(results: pd.DataFrame, x: str = "l0", y: str = "loss_recovered", hue: str = "arch",
                  ax: Axes | None = None, logx: bool = True, higher_is_better: bool = True) -> Axes:
    """Every run as a point, each architecture's Pareto frontier as a line (labelled with the architecture)."""
    from sae_helpers.evaluation.frontier import pareto_frontier

    ax = _ax(ax)
    frontier = pareto_frontier(results, x, y, hue, higher_is_better)
    for arch, group in results.groupby(hue, sort=False):
        color = ARCH_COLORS.get(arch)
        ax.scatter(group[x], group[y], color=color, alpha=0.45, s=28)
        line = frontier[frontier[hue] == arch]
        ax.plot(line[x], line[y], "o-", color=color, label=ARCH_LABELS.get(arch, arch))
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    if logx:
        log_x(ax)
    legend_below(ax)
    return ax


def plot_cosine_by_class(table: pd.DataFrame, threshold: float | None = None, ax: Axes | None = None,
                         bins: int = 40, name: str = "") -> Axes:
    """Histograms of the larger SAE's max cosine to the smaller SAE, novel vs reconstruction
    latents (``stitching.analyze``'s table; dead latents left out). The title gives ``name`` and
    the three counts; the legend (below) the classes and the threshold."""
    ax = _ax(ax)
    live = table[~table["dead"]]
    low = min(0.0, float(live["max_cos"].min())) if len(live) else 0.0
    edges = np.linspace(low, 1, bins + 1)
    parts = {"novel": live[live["novel"]], "reconstruction": live[~live["novel"]]}
    for label, part in parts.items():
        ax.hist(part["max_cos"], bins=edges, histtype="step", lw=2, color=CLASS_COLORS[label], label=label)
    if threshold is not None:
        ax.axvline(threshold, color="0.3", lw=1, ls="--", label="threshold")
    ax.set_xlabel(METRIC_LABELS["max_cos"])
    ax.set_ylabel("Latents")
    counts = (f"{len(parts['novel']):,} novel, {len(parts['reconstruction']):,} recon.,\n"
              f"{int(table['dead'].sum()):,} dead (not shown)")
    ax.set_title(f"{name}\n{counts}" if name else counts)
    legend_below(ax)
    return ax


def plot_proxy_scatter(table: pd.DataFrame, threshold: float | None = None, ax: Axes | None = None,
                       max_points: int = 5000) -> Axes:
    """Measured MSE change of inserting each live larger-SAE latent against its max cosine."""
    ax = _ax(ax)
    live = table[~table["dead"]].iloc[:max_points]
    colors = np.where(live["novel"], CLASS_COLORS["novel"], CLASS_COLORS["reconstruction"])
    ax.scatter(live["max_cos"], live["delta_mse"], s=5, alpha=0.4, c=colors, rasterized=True)
    ax.axhline(0.0, color="0.3", lw=1)
    if threshold is not None:
        ax.axvline(threshold, color="0.3", lw=1, ls="--")
    linthresh = max(1e-6, float(live["delta_mse"].abs().quantile(0.1)))
    ax.set_yscale("symlog", linthresh=linthresh)
    # Decades inside the linear part around 0 would print on top of the label 0.
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda value, _pos: "" if 0 < abs(value) <= 1.001 * linthresh else _signed_power(value)))
    ax.set_xlabel(METRIC_LABELS["max_cos"])
    ax.set_ylabel(METRIC_LABELS["delta_mse"])
    return ax


def plot_stitching_curves(curves: Mapping[str, pd.DataFrame], family: pd.DataFrame, x: str = "l0",
                          y: str = "fvu", ax: Axes | None = None) -> Axes:
    """Stitching curves (one line per named pair) against the family's own SAEs (stars,
    labelled by width). ``family`` has one row per SAE with ``width``, ``x`` and ``y``;
    for ``x="n_latents"`` the width is used."""
    ax = _ax(ax)
    palette = sns.color_palette("colorblind", len(curves))
    for color, (name, curve) in zip(palette, curves.items(), strict=True):
        ax.plot(curve[x], curve[y], ".-", color=color, lw=1.2, ms=5, label=name)
    fx = family["width"] if x == "n_latents" else family[x]
    ax.scatter(fx, family[y], marker="*", s=160, color="black", zorder=3, label="family SAEs")
    for xi, yi, width in zip(fx, family[y], family["width"], strict=True):
        ax.annotate(f"{width}", (xi, yi), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    legend_below(ax)
    return ax


def plot_similarity_histograms(values: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
                               ax: Axes | None = None, bins: int = 40,
                               xlabel: str = "Max cosine similarity", colors: Sequence[str] | None = None) -> Axes:
    """Histograms of max cosine similarities of sets of different sizes: each normalised to
    fractions of its set, its median marked with a dashed line and given in the legend."""
    ax = _ax(ax)
    arrays = {name: np.asarray(v, dtype=float) for name, v in values.items()}
    low = min(0.0, *(float(a.min()) for a in arrays.values() if len(a)))
    edges = np.linspace(low, 1, bins + 1)
    palette = list(colors) if colors is not None else sns.color_palette("colorblind", len(arrays))
    for color, (name, a) in zip(palette, arrays.items(), strict=True):
        median = float(np.median(a))
        ax.hist(a, bins=edges, weights=np.full(len(a), 1 / max(len(a), 1)), histtype="step", lw=2, color=color,
                label=f"{name} (n={len(a):,}, median {median:.2f})")
        ax.axvline(median, color=color, lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Fraction of rows")
    legend_below(ax)
    return ax
