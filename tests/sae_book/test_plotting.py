"""The book's figures are legible at the column width: text at least FONT_SIZE points, at most
two panels per row, no wider than the column, legends off the axes, tick labels not overlapping."""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sae_book import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def book_style():
    with matplotlib.rc_context():
        plotting.use_book_style()
        yield
    plt.close("all")


def problems(fig: plt.Figure) -> list[str]:
    """What makes ``fig`` hard to read at the column width (empty: nothing)."""
    svg = io.StringIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    found = [f"SVG text at {size} px" for size in re.findall(r"font-size:\s*([\d.]+)px", svg.getvalue())
             if float(size) < plotting.FONT_SIZE - 1e-9]  # e.g. superscripts of 10^-3 tick labels
    width = float(re.search(r'width="([\d.]+)pt"', svg.getvalue()).group(1)) / 72
    if width > 7.0 + 1e-9:
        found.append(f"{width:.2f} in wide as shown")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, _ = fig.get_size_inches()
    if width > plotting.COLUMN_WIDTH + 1e-9:
        found.append(f"{width:.1f} in wide")
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_visible() and text.get_text().strip() and text.get_fontsize() < plotting.FONT_SIZE - 1e-9:
            found.append(f"text {text.get_text()!r} at {text.get_fontsize():.1f} pt")
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.axison:  # a colour bar, or an empty slot holding a legend
            continue
        area = ax.get_window_extent(renderer)
        legend = ax.get_legend()
        if legend is not None and legend.get_window_extent(renderer).overlaps(area):
            found.append(f"legend on the data of {ax.get_title()!r}")
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_ticklabels() + axis.get_ticklabels(minor=True)
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                found.append(f"overlapping tick labels in {ax.get_title()!r}")
        rows = {round(a.get_position().y0, 3) for a in fig.axes if a.get_label() != "<colorbar>"}
        per_row = max(sum(round(a.get_position().y0, 3) == y for a in fig.axes if a.get_label() != "<colorbar>")
                      for y in rows)
        if per_row > plotting.MAX_COLUMNS:
            found.append(f"{per_row} panels in a row")
    for legend in fig.legends:
        for ax in fig.axes:
            if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)):
                found.append("figure legend on a panel")
    return found


def results() -> pd.DataFrame:
    rows = []
    for arch, scale in (("relu", 1.0), ("gated", 0.7), ("topk", 0.8)):
        for l0 in (5.0, 20.0, 80.0):
            rows.append({"arch": arch, "l0": l0 * scale, "fvu": 0.5 / np.sqrt(l0), "loss_recovered": 1 - 0.3 / l0,
                         "relative_reconstruction_bias": 0.9 + 0.001 * l0, "delta_lm_loss": 1 / l0, "mmcs": 0.9})
    return pd.DataFrame(rows)


def stitching_table(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cos = rng.uniform(0, 1, n)
    # log-normal magnitudes over four decades, as measured: the linear part of the symlog axis is narrow
    delta = np.where(cos < 0.5, -1, 1) * 10 ** rng.uniform(-6, -2, n)
    return pd.DataFrame({"max_cos": cos, "delta_mse": delta, "novel": cos < 0.5, "dead": rng.uniform(0, 1, n) < 0.05})


def test_style_sets_readable_text_and_svg_text():
    assert matplotlib.rcParams["svg.fonttype"] == "none"
    for key in ("font.size", "xtick.labelsize", "ytick.labelsize", "legend.fontsize", "axes.labelsize"):
        assert matplotlib.rcParams[key] >= plotting.FONT_SIZE


def test_figure_refuses_three_panels_per_row():
    with pytest.raises(ValueError, match="at most 2 panels"):
        plotting.figure(1, 3)
    fig, axes = plotting.figure(2, 2)
    assert fig.get_size_inches()[0] == plotting.COLUMN_WIDTH and axes.shape == (2, 2)


def test_checker_catches_a_crowded_figure():
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    axes[0].plot([1, 2], [1, 2], label="a")
    axes[0].legend(fontsize="x-small")
    axes[0].set_xticks(np.linspace(0, 1, 60))
    axes[1].plot([3, 4, 5, 6], [1, 2, 3, 4])
    axes[1].set_xscale("log")  # minor labels 3x10^0, 4x10^0, ... collide, their superscripts are small
    found = " | ".join(problems(fig))
    for what in ("wide", "pt", "legend on the data", "overlapping tick labels", "4 panels in a row", "SVG text at 8.4"):
        assert what in found


def test_two_panel_rows_of_every_tradeoff_are_legible():
    table = results()
    fig, axes = plotting.figure(2, 2)
    plotting.plot_frontier(table, "l0", "loss_recovered", ax=axes[0, 0])
    plotting.plot_metric_tradeoff(table, "l0", "relative_reconstruction_bias", ax=axes[0, 1], logx=True)
    plotting.plot_frontier(table, "l0", "fvu", ax=axes[1, 0], higher_is_better=False)
    plotting.plot_frontier(table, "l0", "delta_lm_loss", ax=axes[1, 1], higher_is_better=False)
    plotting.shared_legend(fig)
    assert problems(fig) == []


@pytest.mark.parametrize("metrics", [("fvu",), ("loss", "l0", "fvu"), ("loss", "l0", "fvu", "dead_fraction")])
def test_training_curves_at_most_two_per_row(metrics):
    log = [{"step": s, "loss": 1 / (s + 1), "l0": 10.0, "fvu": 0.5, "dead_fraction": 0.0} for s in range(0, 100, 10)]
    fig = plotting.plot_training_curves({"relu": log, "gated": log}, metrics=metrics)
    assert sum(ax.axison for ax in fig.axes) == len(metrics)
    assert sum(ax.get_legend() is not None for ax in fig.axes) + len(fig.legends) == 1
    assert problems(fig) == []


def test_single_panel_figures_are_legible():
    rng = np.random.default_rng(0)
    draws = [
        lambda ax: plotting.plot_metric_tradeoff(results(), "l0", "fvu", ax=ax),
        lambda ax: plotting.plot_max_cosine_histogram({"relu": rng.uniform(0, 1, 64), "gated": rng.uniform(0, 1, 64)},
                                                      ax=ax),
        lambda ax: plotting.plot_density_histogram({"relu": rng.uniform(0, 0.1, 64), "gated": rng.uniform(0, 0.1, 64)},
                                                   ax=ax),
        lambda ax: plotting.plot_true_vs_latent(torch.rand(500), torch.rand(500), "Gated", ax=ax),
        lambda ax: plotting.plot_feature_cosines(torch.randn(16, 8), ax=ax),
        lambda ax: plotting.plot_cosine_by_class(stitching_table(), 0.5, ax=ax, name="1152 → 2304"),
        lambda ax: plotting.plot_proxy_scatter(stitching_table(), 0.5, ax=ax),
        lambda ax: plotting.plot_similarity_histograms({"meta → smaller": rng.uniform(0, 1, 100),
                                                        "base → smaller": rng.uniform(0, 1, 300)}, ax=ax),
    ]
    for draw in draws:
        fig, ax = plotting.figure()
        draw(ax)
        assert problems(fig) == [], draw


def test_stitching_curves_are_legible():
    curve = pd.DataFrame({"l0": [30.0, 31.0, 32.0], "fvu": [0.3, 0.28, 0.25], "n_latents": [1152, 2000, 2304]})
    family = pd.DataFrame({"width": [1152, 2304], "l0": [30.0, 32.0], "fvu": [0.3, 0.25]})
    fig, axes = plotting.figure(1, 2)
    plotting.plot_stitching_curves({"1152 → 2304": curve}, family, ax=axes[0])
    plotting.plot_stitching_curves({"1152 → 2304": curve}, family, "n_latents", "fvu", ax=axes[1])
    plotting.shared_legend(fig)
    assert problems(fig) == []


def test_symlog_labels_keep_their_sign():
    assert [plotting._signed_power(v) for v in (0.0, 1e-3, -1e-4, 10.0)] == ["0", "1e-3", "-1e-4", "1e1"]


@pytest.mark.parametrize(("low", "high", "expected"), [(20, 200, {"20", "50", "100", "200"}),
                                                       (0.3, 30, {"0.5", "1", "2", "5", "10", "20"}),
                                                       (1, 10_000, {"1", "10", "100", "1000", "10000"})])
def test_log_axes_have_plain_labels_enough_to_read_the_scale(low, high, expected):
    fig, ax = plotting.figure()
    ax.plot([low, high], [1, 2])
    plotting.log_x(ax)
    ax.set_xlim(low, high)
    fig.canvas.draw()
    shown = {t.get_text() for t in ax.xaxis.get_ticklabels() + ax.xaxis.get_ticklabels(minor=True)
             if t.get_text() and low <= t.get_position()[0] <= high}
    assert shown == expected
    assert problems(fig) == []
