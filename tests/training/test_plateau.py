"""Training to a plateau: the criterion on known curves, snapshots equal shorter runs, early stop and resume."""

import math
import statistics

import numpy as np
import pytest
import torch

from sae_helpers import SyntheticFeatures, TrainConfig, train_sae
from sae_helpers.training import geometric_steps, load_snapshots, plateau_check
from sae_helpers.training.plateau import relative_change, theil_sen_slope
from sae_helpers.training.schedules import constant_from, lr_multiplier
from tests.training.crashes import crashes_at

SYN = SyntheticFeatures(d=16, n_features=32, firing_prob=0.08)
X = SYN.sample(6000, seed=0).x
HELDOUT = SYN.sample(1000, seed=1).x
FAST = {"batch_size": 256, "lr": 3e-3, "progress": False, "init_sample_size": 1024}
SPARSITY = {"relu": {"l1_coefficient": 2.0}, "gated": {"l1_coefficient": 2.0}, "topk": {"k": 4},
            "batchtopk": {"k": 4}, "jumprelu": {"l0_coefficient": 0.1}}


def curve_log(steps, **series):
    return [{"step": int(s), **{name: float(v[i]) for name, v in series.items()}} for i, s in enumerate(steps)]


# ---------------------------------------------------------------- the criterion on known curves
def test_relative_change_of_a_line_is_its_rise_over_its_mean():
    t = np.arange(100, 201, 10.0)
    y = 3.0 - 0.002 * t
    expected = -0.002 * 100 / y.mean()
    assert relative_change(t, y) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(relative_change([5.0], [1.0]))
    # Below the floor the change is measured against the floor: FVU halving from 2e-4 to 1e-4 is 1% of 1%.
    assert relative_change([0, 1], [2e-4, 1e-4], floor=0.01) == pytest.approx(-0.01)


def test_theil_sen_slope_is_the_median_of_the_pairwise_slopes():
    rng = np.random.default_rng(3)
    for n in (2, 3, 8, 41):
        t = rng.integers(0, 30, n).astype(float)  # repeated steps: their pairs have no slope
        t[:2] = [0.0, 31.0]
        y = rng.standard_normal(n)
        pairs = [(y[j] - y[i]) / (t[j] - t[i]) for i in range(n) for j in range(i + 1, n) if t[i] != t[j]]
        assert theil_sen_slope(t, y) == pytest.approx(statistics.median(pairs), rel=1e-12)


def test_one_outlying_evaluation_does_not_fake_a_plateau():
    """A curve still falling 4% over the window, with one evaluation thrown up by a bad training step
    (as a TopK run's held-out FVU once jumped from 0.163 to 0.263 for one evaluation): the
    least-squares line tilts until the curve looks flat, the Theil-Sen line does not."""
    t = np.arange(32, 1857, 32)
    fvu = 0.1612 * (1 + 0.04 * (1856 - t) / 464)
    fvu[t == 1696] = 0.25
    log = curve_log(t, heldout_fvu=fvu, heldout_l0=np.full(t.shape, 32.0))
    check = plateau_check(log, tolerance=0.02)
    assert not check.plateaued and "heldout_fvu" in check.reason
    inside = t >= 0.75 * 1856
    # 14 of the window's 15 points lie on the line, so the median pairwise slope is the line's own.
    line_slope = -0.1612 * 0.04 / 464
    assert check.changes["heldout_fvu"] == pytest.approx(line_slope * np.ptp(t[inside]) / fvu[inside].mean(), rel=1e-9)
    least_squares = np.polyfit(t[inside], fvu[inside], 1)[0] * np.ptp(t[inside]) / fvu[inside].mean()
    assert 0 < least_squares < 0.02  # on a least-squares line the falling curve would pass as a plateau


def test_an_almost_perfect_reconstruction_has_plateaued():
    t = np.arange(10, 1001, 10)
    log = curve_log(t, heldout_fvu=1e-3 * np.exp(-t / 200), heldout_l0=np.full(t.shape, 3.0))
    check = plateau_check(log, tolerance=0.02)
    assert check.plateaued and abs(check.changes["heldout_fvu"]) < 0.02


def test_a_curve_that_levelled_off_has_plateaued():
    t = np.arange(20, 2001, 20)
    log = curve_log(t, heldout_fvu=0.1 + 0.5 * np.exp(-t / 100), heldout_l0=30 + 20 * np.exp(-t / 150))
    check = plateau_check(log, tolerance=0.01, window=0.25)
    assert check.plateaued, check.reason
    assert check.start == pytest.approx(1500) and check.end == 2000 and check.points == 26
    assert all(abs(c) < 1e-3 for c in check.changes.values())


def test_a_power_law_still_falls_by_its_exponent_times_log_window():
    t = np.arange(20, 4001, 20)
    log = curve_log(t, heldout_fvu=0.5 * t ** -0.3, heldout_l0=np.full(t.shape, 30.0))
    check = plateau_check(log, tolerance=0.01, window=0.25)
    assert not check.plateaued and "heldout_fvu" in check.reason
    # A power law t^-a changes by about a * ln(4/3) over the last quarter (-8.6% for a = 0.3).
    assert check.changes["heldout_fvu"] == pytest.approx(-0.3 * math.log(4 / 3), rel=0.05)
    assert abs(check.changes["heldout_l0"]) < 1e-12


def test_noise_averages_out_but_a_trend_under_it_does_not():
    rng = np.random.default_rng(0)
    t = np.arange(10, 2001, 10)
    noise = lambda: 1 + 0.02 * rng.standard_normal(t.size)  # noqa: E731
    flat = curve_log(t, heldout_fvu=0.2 * noise(), heldout_l0=30 * noise())
    assert plateau_check(flat, tolerance=0.01).plateaued
    falling = curve_log(t, heldout_fvu=0.2 * (1 - 0.1 * t / 2000) * noise(), heldout_l0=30 * noise())
    check = plateau_check(falling, tolerance=0.01)
    assert not check.plateaued and check.changes["heldout_fvu"] < -0.01


def test_no_plateau_before_the_learning_rate_is_constant_or_with_too_few_points():
    t = np.arange(100, 1001, 100)
    log = curve_log(t, heldout_fvu=np.full(t.shape, 0.2), heldout_l0=np.full(t.shape, 30.0))
    assert plateau_check(log, tolerance=0.01, min_points=2).plateaued
    late = plateau_check(log, tolerance=0.01, min_points=2, constant_from=800)
    assert not late.plateaued and "before the learning rate is constant" in late.reason
    few = plateau_check(log, tolerance=0.01)  # 3 points in the last quarter, 5 needed
    assert not few.plateaued and "fewer than 5" in few.reason
    assert not plateau_check([{"step": 1, "loss": 1.0}], tolerance=0.01).plateaued


def test_geometric_steps():
    assert geometric_steps(100, 800) == [100, 200, 400, 800]
    assert geometric_steps(100, 1000) == [100, 200, 400, 800, 1000]
    with pytest.raises(ValueError):
        geometric_steps(0, 10)


# ---------------------------------------------------------------- schedules
def test_resampling_recovery_is_a_tenth_of_the_interval_by_default():
    cfg = TrainConfig(arch="relu", width=32, steps=2000, l1_coefficient=1.0)
    assert cfg.resample_interval == 500 and cfg.resample_warmup_steps == 50
    # After a resampling at 500 the rate is back to full 50 steps later (not after 1,000).
    assert lr_multiplier(cfg, 549, last_resample_step=500) < 1
    assert lr_multiplier(cfg, 550, last_resample_step=500) == 1
    assert constant_from(cfg, 500) == 550
    assert TrainConfig(arch="relu", width=32, steps=40_000, l1_coefficient=1.0).resample_warmup_steps == 1000


def test_plateau_needs_a_constant_learning_rate_and_held_out_data():
    with pytest.raises(ValueError, match="lr_decay_start=None"):
        TrainConfig(arch="relu", width=32, steps=100, l1_coefficient=1.0, plateau_tolerance=0.01)
    with pytest.raises(ValueError, match="plateau_tolerance must be > 0"):
        TrainConfig(arch="relu", width=32, steps=100, l1_coefficient=1.0, plateau_tolerance=0.0, lr_decay_start=None)
    with pytest.raises(ValueError, match="held-out activations"):
        train_sae(X, "relu", 32, 1.0, 50, lr_decay_start=None, plateau_tolerance=0.01, **FAST)
    with pytest.raises(ValueError, match="constant learning rate"):
        TrainConfig(arch="relu", width=32, steps=100, l1_coefficient=1.0).truncated(50)


# ---------------------------------------------------------------- snapshots are shorter runs
@pytest.mark.parametrize("arch", sorted(SPARSITY))
def test_a_snapshot_equals_a_shorter_run_with_the_same_schedule(arch, tmp_path):
    """Every default that depends on steps (warm-ups, Adam's beta2, resampling interval and recovery,
    dead window) is resolved from the long run: the snapshot at 40 steps is that run stopped at 40."""
    opts = {**FAST, **SPARSITY[arch], "lr_decay_start": None}
    long = train_sae(X, arch, 48, steps=80, checkpoint_dir=tmp_path / "long", snapshots=[20, 40], **opts)
    snapshots = load_snapshots(tmp_path / "long")
    assert sorted(snapshots) == [20, 40]
    cfg = TrainConfig.from_dict(long.training_config).truncated(40)
    assert cfg.resample_every == (20 if arch in ("relu", "gated") else 0)
    short = train_sae(X, progress=False, **{k: v for k, v in cfg.to_dict().items()})
    for name, p in short.named_parameters():
        assert torch.equal(getattr(snapshots[40], name), p), name
    assert snapshots[40].training_log[-1]["step"] == 40
    # Without the long run's schedule, a 40-step run is another run (its defaults follow its own length).
    naive = train_sae(X, arch, 48, steps=40, **opts)
    assert not torch.equal(naive.W_dec, snapshots[40].W_dec)
    assert not torch.equal(snapshots[20].W_dec, snapshots[40].W_dec)


def test_snapshots_need_a_directory():
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_sae(X, "relu", 32, 1.0, 20, snapshots=[10], **FAST)


# ---------------------------------------------------------------- stopping at a plateau
PLATEAU = {**FAST, "lr": 1e-2, "lr_decay_start": None, "eval_every": 10, "plateau_tolerance": 0.02,
           "resample_every": 0}


def test_a_run_stops_at_its_plateau_and_says_so():
    sae = train_sae(X, "topk", 48, steps=3000, k=4, heldout=HELDOUT, **PLATEAU)
    log = sae.training_log
    stopped = log[-1]["step"]
    assert stopped < 3000 and stopped % 10 == 0
    evaluated = [r for r in log if "heldout_fvu" in r]
    assert [r["step"] for r in evaluated] == list(range(10, stopped + 1, 10))
    check = plateau_check(log, tolerance=0.02)
    assert check.plateaued and check.end == stopped
    # It had not plateaued one evaluation earlier: it stopped at the first plateau.
    assert not plateau_check([r for r in log if r["step"] < stopped], tolerance=0.02).plateaued
    # Held-out FVU equals an independent computation on the final SAE (raw activations).
    from sae_helpers.training.run import heldout_rows

    x = heldout_rows(HELDOUT).double()
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x.float())).double()
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert log[-1]["heldout_fvu"] == pytest.approx(fvu, rel=1e-4)


def test_a_run_whose_latents_have_not_left_their_start_does_not_stop():
    """Flat held-out curves are not enough while more than NEAR_INITIAL_LIMIT of the decoder rows keep
    their random start: a wide TopK SAE without its auxiliary loss leaves most latents unused."""
    from sae_helpers.saes.initial import NEAR_INITIAL_LIMIT, decoder_drift

    sae = train_sae(X, "topk", 256, steps=1500, k=1, sae_options={"aux_k_coefficient": 0.0}, heldout=HELDOUT,
                    **PLATEAU)
    log = sae.training_log
    assert log[-1]["step"] == 1500
    evaluated = [r for r in log if "heldout_fvu" in r]
    assert all(r["near_initial_fraction"] > NEAR_INITIAL_LIMIT for r in evaluated)
    # On the curves alone it would have stopped earlier.
    assert any(plateau_check([r for r in log if r["step"] <= e["step"]], tolerance=0.02).plateaued
               for e in evaluated[:-1])
    # The logged fraction equals an independent computation from the saved SAE's redrawn start.
    assert log[-1]["near_initial_fraction"] == pytest.approx(float((decoder_drift(sae) > 0.9).double().mean()))


def test_a_stopped_run_has_few_latents_near_their_start():
    from sae_helpers.saes.initial import NEAR_INITIAL_LIMIT

    sae = train_sae(X, "topk", 48, steps=3000, k=4, heldout=HELDOUT, **PLATEAU)
    assert sae.training_log[-1]["step"] < 3000
    assert sae.training_log[-1]["near_initial_fraction"] <= NEAR_INITIAL_LIMIT


def test_a_capped_run_ends_at_its_cap():
    sae = train_sae(X, "topk", 48, steps=60, k=4, heldout=HELDOUT, **{**PLATEAU, "plateau_tolerance": 1e-9})
    assert sae.training_log[-1]["step"] == 60
    assert not plateau_check(sae.training_log, tolerance=1e-9).plateaued


def test_a_plateau_run_resumes_to_the_same_stop(tmp_path):
    opts = {"k": 4, "heldout": HELDOUT, **PLATEAU}
    whole = train_sae(X, "topk", 48, steps=3000, checkpoint_dir=tmp_path / "whole", **opts)
    stopped = whole.training_log[-1]["step"]
    assert stopped < 3000
    with crashes_at(stopped // 2 + 3):
        train_sae(X, "topk", 48, steps=3000, checkpoint_dir=tmp_path / "run", checkpoint_every=10, **opts)
    resumed = train_sae(X, "topk", 48, steps=3000, checkpoint_dir=tmp_path / "run", resume=True, **opts)
    assert resumed.training_log == whole.training_log
    for name, p in whole.named_parameters():
        assert torch.equal(getattr(resumed, name), p), name
    with pytest.raises(ValueError, match="other held-out activations"):
        train_sae(X, "topk", 48, steps=3000, checkpoint_dir=tmp_path / "run", resume=True,
                  **{**opts, "heldout": HELDOUT[:500]})
