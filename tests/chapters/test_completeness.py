import numpy as np
import pandas as pd
import pytest

from sae_helpers.chapters import completeness as ch
from sae_helpers.stitching import Curve

CONTROL = "control: 8 -> 8 (seed 1)"


def pair_summary(novel=(0.40, 0.30), control_novel=0.05, thresholds=(0.5, 0.6), random_p99=(0.7, 0.7)):
    rows = {"8 -> 16": 0, "16 -> 32": 1}
    frame = pd.DataFrame({
        "frac_novel": [*novel, control_novel], "frac_novel_trained": [0.45, 0.35, 0.06], "n_dead": [1, 2, 0],
        "threshold_fitted": [True, True, True], "threshold": [*thresholds, 0.4],
        "proxy_accuracy": [0.8, 0.75, 0.9], "majority_accuracy": [0.6, 0.7, 0.95],
        "random p99": [*random_p99, 0.7], "initial p99": [0.3, 0.3, 0.3],
        "largest group share (threshold)": [0.5, 0.6, 0.1], "largest group share (best_match)": [0.01, 0.02, 0.03],
    }, index=[*rows, CONTROL])
    frame.index.name = "pair"
    return frame


def curve(fvu, loss_recovered=None, kinds=None, counts=(2, 2)):
    n = len(fvu)
    kinds = kinds or ["start"] + ["insert"] * (n // 2) + ["swap"] * (n - 1 - n // 2)
    points = pd.DataFrame({"step": range(n), "kind": kinds, "fvu": fvu,
                           "loss_recovered": loss_recovered if loss_recovered is not None else [np.nan] * n})
    return Curve(points, {"insert": counts[0], "swap": counts[1]}, 3)


FAMILY = pd.DataFrame({"width": [8, 16, 32], "fvu": [0.3, 0.2, 0.1]})


def curves(control_fvu=(0.3, 0.25, 0.5, 0.3)):
    return {"8 -> 16": curve([0.3, 0.25, 0.4, 0.2], [0.8, np.nan, 0.7, 0.9]),
            "16 -> 32": curve([0.2, 0.15, 0.12, 0.1], [0.9, np.nan, 0.92, 0.95]),
            CONTROL: curve(list(control_fvu))}


def test_verdict_of_a_family_that_looks_like_the_paper():
    v = ch.verdict(pair_summary(), CONTROL, FAMILY, curves())
    assert v.near_paper == "close to" and v.above_null and v.thresholds_below_random and v.family_falls
    assert v.n_dead == 3 and v.best_match_group_share == pytest.approx(0.02)
    text = ch.render_verdict(v)
    assert "8 -> 16: 40.0%, 16 -> 32: 30.0% of the larger SAE's live latents are novel (mean 35.0%), close to" in text
    assert "well above this null" in text and "lie below or at the 99th percentile" in text
    assert "(a gain of +20.0%, +5.0%)" in text and "FVU falls with width (8: 0.300, 16: 0.200, 32: 0.100)" in text


def test_verdict_branches_the_other_way():
    v = ch.verdict(pair_summary(novel=(0.6, 0.7), control_novel=0.4, thresholds=(0.8, 0.6)), CONTROL,
                   FAMILY.assign(fvu=[0.3, 0.35, 0.1]), curves())
    assert v.near_paper == "above" and not v.above_null and not v.thresholds_below_random and not v.family_falls
    text = ch.render_verdict(v)
    assert "not clearly above this null" in text and "partly above" in text and "does not fall with width" in text
    assert ch.verdict(pair_summary(novel=(0.1, 0.1)), CONTROL, FAMILY, curves()).near_paper == "below"


def test_curve_lines_count_rises_and_falls():
    v = ch.verdict(pair_summary(), CONTROL, FAMILY, curves())
    rising, falling = v.curves["8 -> 16"], v.curves["16 -> 32"]
    assert (rising.fvu_rises, rising.fvu_intervals) == (1, 3) and rising.excess == pytest.approx(0.1)
    assert (rising.lr_falls, rising.lr_intervals) == (1, 2) and rising.rising_by_phase == {"insert": 1}
    assert falling.fvu_rises == 0 and falling.lr_falls == 0
    text = ch.render_verdict(v)
    assert "- **Curve 16 -> 32** (3 steps: 2 inserts, 2 group swaps, largest group 3 latents; 4 points): FVU " \
           "falls monotonically; loss recovered never falls between spliced points. Inserting takes FVU from " \
           "0.2000 to 0.1200." in text
    assert "FVU rises on 1 of 3 intervals (33%; largest rise 0.1500, peak 0.400 against 0.300 at the start and " \
           "0.200 at the end); loss recovered falls on 1 of 2 spliced intervals (by up to 0.100)" in text
    assert "rising intervals: 1 in the insert phase." in text


def test_why_the_walks_rise_compares_the_control():
    like = ch.verdict(pair_summary(), CONTROL, FAMILY, curves(control_fvu=(0.3, 0.25, 0.5, 0.3)))
    assert like.control_like and "costs about as much between two seeds" in ch.render_verdict(like)
    # family excess: 0.1 and 0.0; the control's must be >= 0.5 * 0.0 -> use a family with two rising walks
    rising = {"8 -> 16": curve([0.3, 0.25, 0.4, 0.2]), "16 -> 32": curve([0.2, 0.15, 0.3, 0.1]),
              CONTROL: curve([0.3, 0.25, 0.31, 0.3])}
    unlike = ch.verdict(pair_summary(), CONTROL, FAMILY, rising)
    assert not unlike.control_like and unlike.curves[CONTROL].excess == pytest.approx(0.01)
    assert "The control's rise is much smaller" in ch.render_verdict(unlike)


def test_summary_puts_the_control_beside_the_pairs():
    s = ch.summary(ch.verdict(pair_summary(), CONTROL, FAMILY, curves()))
    assert "40.0% (8 -> 16), 30.0% (16 -> 32) are novel" in s.headline and "against 5.0% for the control" in s.headline
    assert s.key_numbers["novel_fraction: control"] == 0.05 and s.key_numbers["novel_fraction: 8 -> 16"] == 0.40
    assert s.key_numbers["swap_excess_fvu: control"] == pytest.approx(0.2) and s.key_numbers["above_null"] is True


def test_a_control_seed_equal_to_the_seed_is_refused(tmp_path):
    with pytest.raises(ValueError, match="control_seed = seed = 3: the control pair would be one SAE"):
        ch.train_family(None, "blocks.0.hook_resid_post", None, None, [8, 16], k=2, steps=1, batch_size=4,
                        lr=1e-3, seed=3, control_seed=3, data_root=tmp_path, n_splice_tokens=8)
