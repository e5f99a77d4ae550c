import numpy as np
import pandas as pd
import pytest
import torch

from sae_book import completeness as ch
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
        "largest group share (cos > 0.7)": [0.04, 0.05, 0.0],
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
    assert "(at the paper's fixed cosine of 0.7: 4%, 5%)" in text
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
        ch.family_with_control(None, "blocks.0.hook_resid_post", None, None, [8, 16], k=2, steps=1, batch_size=4,
                        lr=1e-3, seed=3, control_seed=3, data_root=tmp_path, n_splice_tokens=8)


def _rows(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_agreement_counts_the_larger_saes_latents_matched_in_the_smaller():
    """The larger SAE holds 6 of the smaller SAE's 8 rows (rotated by under 45 degrees: cosine > 0.7) and
    6 rows orthogonal to all of them: 6 of its 12 latents are shared."""
    small = torch.linalg.qr(_rows(16, 16, 0))[0][:8]  # 8 orthonormal rows in d = 16
    others = torch.linalg.qr(_rows(16, 16, 0))[0][8:14]  # 6 rows orthogonal to them
    tilted = torch.nn.functional.normalize(small[:6] + 0.5 * others[:6], dim=1)  # cosine 1/sqrt(1.25) = 0.894
    large = torch.cat([tilted, others])
    table = ch.agreement({"8 -> 12": (small, large)}, seed=0)
    trained = table.loc[("8 -> 12", "trained")]
    assert trained["shared_fraction"] == pytest.approx(6 / 12)
    cos = (large @ small.T).max(1).values
    assert trained["median_best"] == pytest.approx(float(np.median(cos.numpy())), abs=1e-6)
    assert table.loc[("8 -> 12", "random"), "shared_fraction"] < 0.5
    assert "initial" not in table.loc["8 -> 12"].index  # tensors have no training_config


def _agreement_table(shared=0.1, random=0.0, family=(0.05, 0.08)):
    index = pd.MultiIndex.from_tuples(
        [(p, n) for p in ("8 -> 16", "16 -> 32", CONTROL) for n in ("trained", "random", "initial")],
        names=["pair", "null"])
    values = [family[0], 0.0, 0.01, family[1], 0.0, 0.01, shared, random, 0.02]
    return pd.DataFrame({"shared_fraction": values, "median_best": [0.3] * 9}, index=index)


def test_agreement_verdict_reads_the_control_and_its_trend():
    length = pd.DataFrame({"stage": ["100", "final", "100", "final"], "name": [CONTROL, CONTROL, "8 -> 16", "8 -> 16"],
                           "step": [100, 200, 100, 200], "tokens": [1000, 2000, 1000, 2000],
                           "shared_fraction": [0.08, 0.1, 0.2, 0.3]})
    v = ch.agreement_verdict(_agreement_table(), CONTROL, 2000, length)
    assert v.shared == 0.1 and v.random_shared == 0.0 and v.initial_shared == 0.02 and v.below_published
    assert v.trend == pytest.approx(0.25) and list(v.family_shared) == [0.05, 0.08]
    text = ch.render_agreement(v)
    assert "share 10.0% of their latents" in text and "changed by +25%, so it is still growing" in text
    assert "agree less than published SAEs do" in text and "8 -> 16" in text
    assert np.isnan(ch.agreement_verdict(_agreement_table(), CONTROL, 2000).trend)
    high = ch.agreement_verdict(_agreement_table(shared=0.4), CONTROL, 2000)
    assert not high.below_published and "agree less" not in ch.render_agreement(high)
    summary = ch.summary(ch.verdict(pair_summary(), CONTROL, FAMILY, curves()), v)
    assert "have not converged to a common one" in summary.headline
    assert summary.key_numbers["shared_fraction: control"] == 0.1


def test_training_length_recomputes_the_numbers_at_each_snapshot(tmp_path):
    from sae_book import common
    from sae_helpers import SyntheticFeatures, stitching

    syn = SyntheticFeatures(d=16, n_features=48, firing_prob=0.05)
    x, held_out = syn.sample(6000, seed=0).x, syn.sample(1000, seed=1).x
    settings = dict(k=3, steps=40, batch_size=128, lr=3e-3, seed=0, data_root=tmp_path, n_snapshots=2)
    sweep = common.train_family("site", x, held_out, [16, 32], **settings)
    control = common.train_family("site", x, held_out, [16], family_seed=1, **settings).saes[0]
    family = ch.Family(dict(zip([16, 32], sweep.saes, strict=True)), control, None, None)
    length = ch.training_length(family, 1, held_out, tmp_path, "site", n_points=4)
    assert list(length["stage"].unique()) == ["10", "20", "final"]
    assert set(length["name"]) == {"16 -> 32", "control: 16 -> 16 (seed 1)"}
    final = length[(length.stage == "final") & (length.name == "16 -> 32")].iloc[0]
    _, direct = stitching.analyze(sweep.saes[0], sweep.saes[1], held_out)
    assert final["frac_novel"] == direct["frac_novel"] and final["tokens"] == 40 * 128
    early = length[(length.stage == "10") & (length.name == "16 -> 32")].iloc[0]
    assert early["tokens"] == 10 * 128 and 0 <= early["rising_share"] <= 1
