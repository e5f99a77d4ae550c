import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sae_book import atomicity as ch
from sae_helpers.meta import MetaSAEResult


def result(fve, fve_null, l0=4.0, dead=0.1):
    return SimpleNamespace(fve=fve, fve_null=fve_null, l0=l0, dead_fraction=dead)


METAS = {"paper ratio": SimpleNamespace(d_sae=10), "d_sae / 4": SimpleNamespace(d_sae=50)}


def test_fve_comparison_when_the_null_gains_as_much():
    v = ch.fve_comparison(METAS, {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.40, 0.35)}, 200, 4)
    assert v.null_gains_as_much and v.gap_shrinks
    text = ch.render_fve(v)
    assert "the null gains at least as much as the meta-SAE, so the difference to the null shrinks " \
           "(+10.0 points to +5.0 points)" in text
    assert "one per 20.0 base latents" in text and "(trained with k = 4)" in text


def test_fve_comparison_when_the_meta_sae_gains_more():
    v = ch.fve_comparison(METAS, {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.50, 0.25)}, 200, 4)
    assert not v.null_gains_as_much and not v.gap_shrinks
    assert "the difference to the null grows (+10.0 points to +25.0 points)" in ch.render_fve(v)


def test_similarity_both_ways():
    values = {"meta → smaller": np.array([0.8, 0.9, 0.5]), "base → smaller": np.array([0.6, 0.4, 0.75]),
              "base → other base": np.array([0.2, 0.3])}
    s = ch.similarity(values)
    assert s.meta_closer and s.medians["meta → smaller"] == 0.8 and s.above["base → smaller"] == pytest.approx(1 / 3)
    assert ch.render_similarity(s, 1152).startswith("**Meta-latents resemble the 1,152-latent SAE's latents")
    swapped = ch.similarity({**values, "meta → smaller": values["base → smaller"],
                             "base → smaller": values["meta → smaller"]})
    assert not swapped.meta_closer and "do not resemble" in ch.render_similarity(swapped, 1152)
    assert list(ch.similarity_table(s, {}).columns) == ["rows", "median max cosine", "fraction above 0.7"]


def test_decompositions_pick_readable_well_reconstructed_latents():
    decompositions = [[(0, 0.5), (1, 0.3)], [(2, 0.9)], [(0, 0.1)], [(1, 0.4), (3, 0.25), (2, 0.2)]]
    meta = MetaSAEResult(0.5, 2.0, 0.0, decompositions, [], np.array([0.9, 0.8, 0.7, 0.3]), math.nan)
    density = np.array([0.01, 0.02, 0.5, 0.01])  # latent 2 fires too often
    d = ch.decompositions(meta, density, 2, 0.2)
    # readable: 0, 1, 3; cosine cap: min(0.6, q90 of (0.9, 0.8, 0.3)) = 0.6, so latent 3 is out
    assert d.min_cosine == pytest.approx(0.6) and d.n_candidates == 2 and d.chosen == [0, 1]
    assert list(d.table["with coefficient >= 0.2"]) == [2, 1] and list(d.n_strong) == [2, 1, 0, 3]
    text = ch.render_decompositions(d, 4)
    assert "picked from 2 base latents" in text and "(3 fire in that range" in text
    assert "50.0% have two or more" in text and "the picked latents have 2, 1." in text
    empty = ch.decompositions(meta, np.zeros(4), 2, 0.2)
    assert empty.chosen == [] and "no latent qualified to be read." in ch.render_decompositions(empty, 4)


def test_smaller_width_is_the_closest_other_width():
    assert ch.smaller_width([1152, 2304, 4608], 4608, 216) == 1152
    assert ch.smaller_width([100, 300, 4608], 4608, 200) == 100  # a tie goes to the smaller


def test_meta_widths_default_to_the_paper_ratio_and_a_quarter():
    from sae_helpers import meta

    assert ch.meta_widths(4608, None, None) == {"paper ratio": meta.default_width(4608), "d_sae / 4": 1152}
    assert ch.meta_widths(4608, 7, 9) == {"paper ratio": 7, "d_sae / 4": 9}


# ---------------------------------------------------------------- three nulls


def test_null_gaps_subtract_each_null_and_name_the_strongest():
    g = ch.null_gaps(0.30, {"random": 0.20, "covariance": 0.25, "initial": 0.21})
    assert g.strongest == "covariance"
    assert g.gaps == pytest.approx({"random": 0.10, "covariance": 0.05, "initial": 0.09})
    # a tie goes to the first null in the given order; a null not computed (NaN) is left out
    assert ch.null_gaps(0.3, {"random": 0.2, "covariance": 0.2}).strongest == "random"
    assert ch.null_gaps(0.3, {"covariance": 0.2, "random": 0.2}).strongest == "covariance"
    g = ch.null_gaps(0.3, {"random": math.nan, "initial": 0.1})
    assert g.strongest == "initial" and list(g.nulls) == ["initial"]
    with pytest.raises(ValueError, match="at least one null"):
        ch.null_gaps(0.3, {"random": math.nan})


def test_null_comparison_takes_the_random_null_from_the_result():
    gaps = ch.null_comparison({"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.40, 0.35)},
                              {"paper ratio": {"covariance": 0.26, "initial": 0.19},
                               "d_sae / 4": {"covariance": 0.33, "initial": 0.36}})
    assert list(gaps["paper ratio"].nulls) == ["random", "covariance", "initial"]
    assert gaps["paper ratio"].strongest == "covariance" and gaps["d_sae / 4"].strongest == "initial"
    assert gaps["d_sae / 4"].gaps["initial"] == pytest.approx(0.04)


def health(names, failing=()):
    return pd.DataFrame({"passes": [name not in failing for name in names],
                         "failing": ["dead_fraction=0.2 > 0.05" if name in failing else "" for name in names]},
                        index=names)


def test_null_table_has_a_row_per_meta_sae_and_null():
    gaps = {"paper ratio": ch.null_gaps(0.30, {"random": 0.20, "covariance": 0.25, "initial": 0.21})}
    table = ch.null_table(gaps, {"paper ratio": 10},
                          [health(["meta-SAE, paper ratio", "random null, paper ratio"]),
                           health(["covariance null, paper ratio", "initial null, paper ratio"],
                                  failing=["initial null, paper ratio"])])
    assert list(table.index) == [("paper ratio", "random unit rows"), ("paper ratio", "covariance-matched rows"),
                                 ("paper ratio", "the base SAE's initial decoder rows")]
    assert list(table["FVE - null"]) == pytest.approx([0.10, 0.05, 0.09])
    assert list(table["strongest"]) == [False, True, False]
    assert list(table["null health"]) == ["passes", "passes", "dead_fraction=0.2 > 0.05"]
    assert set(table["FVE"]) == {0.30} and set(table["meta-latents"]) == {10}


def test_render_nulls_names_the_strongest_and_what_each_null_adds():
    gaps = {"paper ratio": ch.null_gaps(0.30, {"random": 0.20, "covariance": 0.25, "initial": 0.19}),
            "d_sae / 4": ch.null_gaps(0.40, {"random": 0.35, "covariance": 0.41, "initial": 0.352})}
    text = ch.render_nulls(gaps, {"paper ratio": 216, "d_sae / 4": 1152})
    assert ("With 216 meta-latents (paper ratio) the meta-SAE's FVE of 30.0% is +10.0 points against random unit "
            "rows (20.0%), +5.0 points against covariance-matched rows (25.0%), +11.0 points against the base SAE's "
            "initial decoder rows (19.0%).") in text
    assert ("The strongest null is the covariance-matched rows: FVE − null is **+5.0 points**, what the meta-SAE "
            "explains beyond every null.") in text
    # a strongest null above the meta-SAE: 0.40 - 0.41
    assert ("The strongest null is the covariance-matched rows: FVE − null is **-1.0 points**, so the meta-SAE "
            "explains no more of the decoder rows than that null explains of its own.") in text
    # 0.25 - 0.20, 0.41 - 0.35; 0.19 - 0.20, 0.352 - 0.35
    assert ("Beside the random null, the covariance-matched rows' FVE minus the random rows' is +5.0 points "
            "(paper ratio) and +6.0 points (d_sae / 4); the base SAE's initial decoder rows' FVE minus the random "
            "rows' is -1.0 points (paper ratio) and +0.2 points (d_sae / 4).") in text
    # without the random null there is nothing to compare the others with
    only = {"paper ratio": ch.null_gaps(0.30, {"covariance": 0.25})}
    assert "Beside the random null" not in ch.render_nulls(only, {"paper ratio": 216})


def test_points_are_signed_and_never_minus_zero():
    assert ch.points(0.1234) == "+12.3 points" and ch.points(-0.05) == "-5.0 points"
    assert ch.points(-0.0002) == "+0.0 points" and ch.points(0.0) == "+0.0 points"


def test_meta_and_null_directories():
    from pathlib import Path

    from sae_helpers import meta

    options = {"width": 4, "k": 2, "epochs": 3, "seed": 0, "lr": 1e-3, "batch_size": 8, "min_steps": 1}
    fingerprint = meta.meta_config(32, **options).fingerprint()[:8]
    assert ch.meta_dir(Path("r"), "base", 32, options) == Path(f"r/meta-of-base-{fingerprint}")
    assert ch.meta_dir(Path("r"), "base", 32, options, step=50) == Path(f"r/meta-of-base-step50-{fingerprint}")
    assert ch.null_dir(Path("d"), "random") == Path("d/null")  # where train_meta_sae keeps it
    assert ch.null_dir(Path("d"), "initial") == Path("d/null-initial")


# ---------------------------------------------------------------- against training length


def trend_table(covariance=(0.19, 0.20, 0.22), initial=0.16, fve=(0.20, 0.25, 0.30), tokens=(1000, 2000, 4000)):
    table = pd.DataFrame({"step": [t // 10 for t in tokens], "tokens": tokens, "fve": fve, "null_random": 0.15,
                          "null_covariance": covariance, "null_initial": initial})
    for null in ("random", "covariance", "initial"):
        table[f"gap_{null}"] = table["fve"] - table[f"null_{null}"]
    return table


def test_trend_when_every_gap_rises():
    t = ch.trend(trend_table().iloc[::-1])  # any row order
    assert t.tokens == [1000, 2000, 4000] and t.fve == pytest.approx([0.20, 0.25, 0.30])
    # random: 0.05, 0.10, 0.15; covariance: 0.01, 0.05, 0.08; initial: 0.04, 0.09, 0.14
    assert t.gaps["covariance"] == pytest.approx([0.01, 0.05, 0.08])
    assert t.directions == {"random": "rises", "covariance": "rises", "initial": "rises"}
    assert t.strongest == "covariance"  # 0.22 > 0.16 > 0.15 at the last point
    text = ch.render_trend(t)
    assert ("From 1,000 to 4,000 training activations of the base SAE (3 points), the meta-SAE's FVE goes from "
            "20.0% to 30.0%, and **FVE − null rises against every null** with training length (against random unit "
            "rows from +5.0 points to +15.0 points; against covariance-matched rows from +1.0 points to +8.0 points; "
            "against the base SAE's initial decoder rows from +4.0 points to +14.0 points).") in text
    # the last two points: 0.08 - 0.05
    assert ("Between the last two points (2,000 and 4,000 activations) FVE − null against the strongest null at the "
            "end, the covariance-matched rows, changed by +3.0 points: it was still moving") in text
    # 1.2e9 / 4,000 = 300,000; 55.47% - 30.0% = 25.47 points
    assert ("The base SAE saw 4,000 training activations, 300,000 times fewer than the papers' 1.2 billion tokens, "
            "and its meta-SAE's FVE (30.0%) is 25.5 points below the paper's 55.47%") in text


def test_trend_directions_use_the_tolerance():
    # random: 0.05 -> 0.15 rises; covariance: 0.05 -> 0.053 stays (0.3 points); initial: 0.04 -> 0.02 falls
    t = ch.trend(trend_table(covariance=(0.15, 0.2, 0.247), initial=(0.16, 0.2, 0.28)))
    assert t.directions == {"random": "rises", "covariance": "stays", "initial": "falls"}
    assert t.strongest == "initial"  # 0.28 at the last point
    text = ch.render_trend(t)
    assert ("**FVE − null rises against random unit rows, falls against the base SAE's initial decoder rows, and "
            "stays within 0.5 points against covariance-matched rows**") in text
    two = ch.trend(trend_table(covariance=(0.15, 0.2, 0.247)))
    assert ("**FVE − null rises against random unit rows and the base SAE's initial decoder rows, and stays within "
            "0.5 points against covariance-matched rows**") in ch.render_trend(two)
    # the strongest's last change: 0.02 - 0.05 = -3 points; a change within the tolerance is not "still moving"
    assert "changed by -3.0 points: it was still moving" in text
    flat = ch.trend(trend_table(covariance=(0.19, 0.20, 0.2495), initial=0.35))
    assert "changed by +0.5 points. The base SAE saw" not in ch.render_trend(flat)
    assert "initial decoder rows, changed by +5.0 points" in ch.render_trend(flat)
    assert ch.trend(trend_table(), tolerance=0.2).directions == {null: "stays" for null in ("random", "covariance",
                                                                                          "initial")}


def test_trend_with_one_point():
    t = ch.trend(trend_table().iloc[[2]])
    assert t.directions == {"random": "stays", "covariance": "stays", "initial": "stays"}
    text = ch.render_trend(t)
    assert text.startswith("The base SAE kept no snapshots, so there is one point and no trend. The base SAE saw "
                           "4,000 training activations")


def test_plot_trend_draws_each_fve_and_each_gap():
    import matplotlib

    matplotlib.use("Agg")
    table = trend_table()
    fig = ch.plot_trend(table)
    fve_ax, gap_ax = fig.axes[:2]
    by_label = {line.get_label(): line for line in fve_ax.lines}
    np.testing.assert_allclose(by_label["meta-SAE"].get_ydata(), [0.20, 0.25, 0.30])
    np.testing.assert_allclose(by_label["covariance null"].get_xdata(), [1000, 2000, 4000])
    np.testing.assert_allclose(by_label["the papers' value"].get_ydata(), [0.5547])
    gaps = {line.get_label(): line for line in gap_ax.lines}
    np.testing.assert_allclose(gaps["covariance null"].get_ydata(), [0.01, 0.05, 0.08])
    np.testing.assert_allclose(gaps["initial null"].get_ydata(), [0.04, 0.09, 0.14])
    # each null has the same colour in both panels
    assert all(by_label[name].get_color() == gaps[name].get_color() for name in ("random null", "initial null"))
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_trend_display_names_the_columns():
    shown = ch.trend_display(trend_table().assign(health="passes", null_health="passes"))
    assert shown.index.name == "base SAE step" and list(shown.index) == [100, 200, 400]
    assert {"FVE", "FVE, covariance null", "FVE - initial null", "meta-SAE health"} <= set(shown.columns)


def test_summary_states_fve_minus_the_strongest_null_and_names_it():
    results = {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.40, 0.35)}
    v = ch.fve_comparison(METAS, results, 200, 4)
    gaps = ch.null_comparison(results, {"paper ratio": {"covariance": 0.26, "initial": 0.19},
                                        "d_sae / 4": {"covariance": 0.33, "initial": 0.36}})
    t = ch.trend(trend_table())
    s = ch.summary(v, gaps, t)
    assert s.headline == (
        "A meta-SAE at the paper's ratio (10 meta-latents for 200 base latents) explains 30.0% of the variance of the "
        "decoder directions and its strongest null, the covariance-matched rows, 26.0% of its own: FVE − strongest "
        "null is +4.0 points (against random unit rows +10.0 points, against the base SAE's initial decoder rows "
        "+11.0 points); with 50 meta-latents it is +4.0 points (against the base SAE's initial decoder rows); over "
        "the base SAE's training (1,000 to 4,000 activations), FVE minus that null went from +1.0 points to +8.0 "
        "points.")
    k = s.key_numbers
    assert k["strongest_null_paper_ratio"] == "covariance" and k["strongest_null_quarter"] == "initial"
    assert k["fve_minus_strongest_null_paper_ratio"] == pytest.approx(0.04)
    assert k["fve_strongest_null_quarter"] == 0.36
    assert k["fve_minus_null_covariance_quarter"] == pytest.approx(0.07)
    assert k["fve_minus_null_initial_paper_ratio"] == pytest.approx(0.11)
    assert k["fve_minus_null_paper_ratio"] == pytest.approx(0.10)  # the random null, as before
    assert k["trend_fve_minus_strongest_null_first"] == pytest.approx(0.01)
    assert k["trend_tokens_last"] == 4000 and k["trend_strongest_null"] == "covariance"
    assert "over the base SAE's training" not in ch.summary(v, gaps).headline
    # a trend whose strongest null at the end is another is named: 0.20 - 0.35 and 0.30 - 0.35
    other = ch.trend(trend_table(initial=0.35))
    assert "FVE minus the base SAE's initial decoder rows went from -15.0 points to -5.0 points." in \
        ch.summary(v, gaps, other).headline


def test_the_nulls_and_the_trend_train_where_they_say_and_reuse_finished_runs(tmp_path):
    import torch

    from sae_helpers import meta, train_sae
    from sae_helpers.training import load_snapshots
    from tests.meta.test_meta_sae import float64_fve

    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    base = train_sae(x, "relu", 32, l1_coefficient=1.0, steps=40, batch_size=64, seed=7, snapshots=[10, 20],
                     checkpoint_dir=tmp_path / "base", progress=False, device="cpu")
    snapshots = {**load_snapshots(tmp_path / "base"), 40: base}
    settings = {"k": 2, "epochs": 4, "seed": 1, "lr": 1e-3, "batch_size": 32, "min_steps": 1}
    widths = {"paper ratio": 4, "d_sae / 4": 8}
    metas, _, results = ch.train_metas(base, "base", widths, tmp_path, **settings)
    rows = {null: meta.null_rows(base, null, 1) for null in ch.EXTRA_NULLS}
    nulls, fves = ch.train_nulls(base, "base", widths, tmp_path, rows, **settings)
    # each null is the meta-SAE configuration on its rows, kept beside its meta-SAE
    for name, width in widths.items():
        directory = ch.meta_dir(tmp_path, "base", 32, dict(width=width, **settings))
        assert (directory / "null").is_dir() and (directory / "null-covariance").is_dir()
        for null in ch.EXTRA_NULLS:
            assert nulls[name][null].metadata["meta_sae"]["null_kind"] == null
            assert fves[name][null] == pytest.approx(float64_fve(nulls[name][null], rows[null]), abs=1e-5)
    by_hand, _ = meta.train_null_meta_sae(32, 16, 4, null="covariance", rows=meta.covariance_matched_rows(base, 1),
                                          progress=False, device="cpu", **settings)
    assert torch.equal(by_hand.W_dec, nulls["paper ratio"]["covariance"].W_dec)

    gaps = ch.null_comparison(results, fves)
    table = ch.meta_trend(snapshots, "base", 4, tmp_path, gaps["paper ratio"].nulls, **settings)
    assert list(table["step"]) == [10, 20, 40] and list(table["tokens"]) == [640, 1280, 2560]  # steps * 64
    last = table.iloc[-1]  # the finished SAE: the runs of train_metas and train_nulls
    assert last["fve"] == results["paper ratio"].fve
    assert last["null_covariance"] == fves["paper ratio"]["covariance"]
    # an earlier snapshot: its own meta-SAE and covariance null, the same random and initial nulls
    first = table.iloc[0]
    rows_10 = meta.decoder_directions(snapshots[10])
    meta_10, _ = meta.train_meta_sae(snapshots[10], 4, null=False, progress=False, device="cpu", **settings)
    assert first["fve"] == pytest.approx(float64_fve(meta_10, rows_10), abs=1e-5)
    null_10, _ = meta.train_null_meta_sae(32, 16, 4, null="covariance", rows=meta.covariance_matched_rows(rows_10, 1),
                                          progress=False, device="cpu", **settings)
    assert first["null_covariance"] == pytest.approx(float64_fve(null_10, meta.covariance_matched_rows(rows_10, 1)),
                                                     abs=1e-5)
    assert first["null_random"] == results["paper ratio"].fve_null == last["null_random"]
    assert first["null_initial"] == fves["paper ratio"]["initial"]
    for null in ("random", "covariance", "initial"):
        assert list(table[f"gap_{null}"]) == pytest.approx(list(table["fve"] - table[f"null_{null}"]))
    assert (tmp_path / f"{ch.meta_dir(tmp_path, 'base', 32, dict(width=4, **settings), step=10).name}"
            / "null-covariance").is_dir()
    # a rerun returns the finished runs
    pd.testing.assert_frame_equal(ch.meta_trend(snapshots, "base", 4, tmp_path, gaps["paper ratio"].nulls,
                                                **settings), table)
