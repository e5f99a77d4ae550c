"""Training health against independent computations: redrawn initial rows, hand counts, hand-made logs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import sae_helpers.training.health as health_module
from sae_helpers import create_sae, health_table, training_health
from sae_helpers.training import HEALTH_LIMITS, health_display, loss_plateau
from sae_helpers.training.config import TrainConfig
from sae_helpers.training.health import DISPLAY_COLUMNS, NOT_TRAINED_HERE

D_IN, WIDTH, SEED = 16, 40, 7


def _redrawn_initial_rows(seed: int) -> torch.Tensor:
    """The initial decoder, redrawn by hand in float64: uniform(+-sqrt(6/d)) rows from the seed, unit norm."""
    bound = math.sqrt(6.0 / D_IN)
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(WIDTH, D_IN, dtype=torch.float32).uniform_(-bound, bound, generator=gen).double()
    return w / w.norm(dim=1, keepdim=True)


def _rotated_sae(arch: str, degrees: dict[int, float]):
    """An SAE initialised from SEED, then decoder row r turned by ``degrees[r]`` (others untouched)."""
    options = {"k": 4} if arch == "topk" else {}
    sae = create_sae(arch, D_IN, WIDTH, **options)
    sae.init_weights(torch.Generator().manual_seed(SEED))
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for row, angle in degrees.items():
            w = sae.W_dec[row].double()
            w = w / w.norm()
            u = torch.randn(D_IN, generator=gen, dtype=torch.float64)
            u = u - (u @ w) * w
            u = u / u.norm()
            theta = math.radians(angle)
            sae.W_dec[row] = (math.cos(theta) * w + math.sin(theta) * u).to(sae.W_dec.dtype)
    sparsity = options or {"l1_coefficient": 1.0}
    sae.training_config = TrainConfig(arch=arch, width=WIDTH, steps=100, seed=SEED, **sparsity).to_dict()
    sae.training_log = _flat_heldout_log(100)
    return sae


def _flat_heldout_log(steps: int, fvu=lambda s: 0.2, l0=lambda s: 10.0):
    """A training log with held-out FVU and L0 at every step (flat by default: plateaued)."""
    return [{"step": s, "heldout_fvu": fvu(s), "heldout_l0": l0(s)} for s in range(1, steps + 1)]


# 6 rows untouched, 4 turned by less than arccos(0.9) = 25.8 degrees: 10 of 40 latents near their start.
FAR = [27, 35, 45, 60, 90, 120, 135, 160, 180]  # 160 and 180 degrees: cosine below -0.9, not "near"
MOSTLY_MOVED = {**{r: FAR[r % len(FAR)] for r in range(30)}, 30: 5, 31: 12, 32: 20, 33: 25}
ALMOST_ALL_MOVED = {r: FAR[r % len(FAR)] for r in range(38)}  # 2 of 40 near: 0.05, exactly the limit


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_near_initial_fraction_counts_the_rows_that_kept_their_start(arch):
    sae = _rotated_sae(arch, MOSTLY_MOVED)
    cos = torch.nn.functional.normalize(sae.W_dec.detach().double(), dim=1) @ _redrawn_initial_rows(SEED).T
    assert int((cos.diagonal() > 0.9).sum()) == 10  # the float64 recomputation sees the designed count
    result = training_health(sae)
    assert result["near_initial_fraction"] == 10 / WIDTH
    assert result["near_initial_fraction"] == float((cos.diagonal() > 0.9).double().mean())
    # A stricter cosine: the rows turned by 20 and 25 degrees (cos 0.94, 0.906) no longer count.
    assert training_health(sae, near_initial_cosine=0.95)["near_initial_fraction"] == 8 / WIDTH
    # Judged against another seed's initial rows, no row is near its start: the seed matters.
    other = _rotated_sae(arch, {})
    other.training_config = {**other.training_config, "seed": SEED + 1}
    assert training_health(other)["near_initial_fraction"] == 0.0
    assert training_health(_rotated_sae(arch, {}))["near_initial_fraction"] == 1.0


def _threshold_sae():
    """A ReLU SAE whose latent j reads x_j: latent 1 has a huge negative bias (never fires)."""
    sae = create_sae("relu", 6, 6, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(6, dtype=torch.float64))
        sae.W_dec.copy_(torch.eye(6, dtype=torch.float64))
        sae.b_enc[1] = -1e6
    return sae


def _designed_activations(n: int = 1000) -> torch.Tensor:
    """Column j fires latent j on: 0 never (always -1); 1 always (but its bias kills it); 2 on every
    token; 3 on exactly 10% (not dense: dense is *more* than 10%); 4 on 10.1%; 5 on one token."""
    x = -torch.ones(n, 6, dtype=torch.float64)
    x[:, 1] = 1.0
    x[:, 2] = 1.0
    x[: n // 10, 3] = 1.0
    x[: n // 10 + 1, 4] = 1.0
    x[n // 2, 5] = 1.0
    return x[torch.randperm(n, generator=torch.Generator().manual_seed(0))]


def test_dead_and_dense_fractions_match_a_hand_count():
    sae, x = _threshold_sae(), _designed_activations()
    pre = x.numpy() + sae.b_enc.detach().numpy()  # W_enc = I, b_dec = 0
    fires = (np.maximum(pre, 0) > 0).mean(0)
    assert list(fires > 0) == [False, False, True, True, True, True]
    assert list(fires > 0.1) == [False, False, True, False, True, False]
    result = training_health(sae, x)
    assert result["dead_fraction"] == (fires == 0).mean() == 2 / 6
    assert result["dense_fraction"] == (fires > 0.1).mean() == 2 / 6
    # No training_config and no training log (as a published SAE): near-initial and the plateaus are unknown.
    assert math.isnan(result["near_initial_fraction"])
    assert math.isnan(result["loss_plateau"]) and math.isnan(result["fvu_plateau"])
    assert result["passes"] is False and result["trained_here"] is False
    assert result["failing"] == f"{NOT_TRAINED_HERE}; dead_fraction=0.333 > 0.05"


def test_a_precomputed_evaluation_is_used_instead_of_a_second_pass(monkeypatch):
    def no_second_pass(*args, **kwargs):
        raise AssertionError("evaluate() was called although an evaluation was given")

    monkeypatch.setattr(health_module, "evaluate", no_second_pass)
    sae = _rotated_sae("relu", ALMOST_ALL_MOVED)
    result = training_health(sae, torch.zeros(3, D_IN), evaluation={"dead_fraction": 0.05, "dense_fraction": 0.5})
    assert result["near_initial_fraction"] == 0.05 and result["dead_fraction"] == 0.05
    assert result["dense_fraction"] == 0.5  # reported, not judged
    assert result["passes"] is True and result["failing"] == ""  # both at their limits: pass
    failing = training_health(_rotated_sae("relu", MOSTLY_MOVED), evaluation={"dead_fraction": 0.2,
                                                                               "dense_fraction": 0.0})
    assert failing["passes"] is False
    assert failing["failing"] == "near_initial_fraction=0.25 > 0.05; dead_fraction=0.2 > 0.05"
    unmeasured = training_health(sae)  # no held-out activations: the dead check cannot pass
    assert math.isnan(unmeasured["dead_fraction"]) and math.isnan(unmeasured["dense_fraction"])
    assert unmeasured["failing"] == "dead_fraction=nan (no eval_activations)" and not unmeasured["passes"]
    assert HEALTH_LIMITS == {"near_initial_fraction": 0.05, "dead_fraction": 0.05}


def _log(values, steps=None, metric="loss"):
    steps = steps if steps is not None else range(5, 5 * len(values) + 1, 5)
    return [{"step": s, metric: v, "lr": 1e-3, "sparsity_coefficient": None}
            for s, v in zip(steps, values, strict=True)]


def test_loss_plateau_on_hand_made_logs():
    steps = np.arange(5, 1001, 5)  # 200 records, like the trainer's log
    assert loss_plateau(_log([2.0] * 200)) == 0.0
    # A linear decline: the window means are the values at the window centres. The last tenth is
    # [900, 1000]; its first fifth [900, 920] (5 records, centre 910), its last fifth [980, 1000] (centre 990).
    line = 100.0 - 0.01 * steps
    expected = ((100 - 0.01 * 990) - (100 - 0.01 * 910)) / (100 - 0.01 * 910)
    assert loss_plateau(_log(list(line))) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-0.8 / 90.9)
    # Only the last tenth matters: a fall earlier in the run, then flat, is a plateau.
    assert loss_plateau(_log(list(np.where(steps < 850, 50.0, 1.0)))) == 0.0
    # Rising, and negative values (relative to |start|).
    assert loss_plateau(_log(list(1.0 + 0.001 * steps))) == pytest.approx((1.99 - 1.91) / 1.91, rel=1e-12)
    assert loss_plateau(_log(list(-1.0 - 0.001 * steps))) == pytest.approx(-(1.99 - 1.91) / 1.91, rel=1e-12)
    # One noisy record does not decide it: the ends are means of 5 records.
    spiky = [2.0] * 200
    spiky[-1] = 2.5
    assert loss_plateau(_log(spiky)) == pytest.approx(0.1 / 2.0, rel=1e-12)
    # Another metric, and a smaller last fraction: the last 5% [950, 1000], fifths [950, 960] and [990, 1000].
    fvu_log = _log(list(1.0 - 0.0005 * steps), metric="fvu")
    assert loss_plateau(fvu_log, "fvu", last_fraction=0.05) == pytest.approx((0.5025 - 0.5225) / 0.5225, rel=1e-12)
    assert math.isnan(loss_plateau(fvu_log, "loss"))  # the metric is not in the log


def test_loss_plateau_on_short_logs():
    # One record per step: the last tenth of a 15-step run holds steps 14 and 15 (ends of one record each).
    values = [30.0 - s for s in range(1, 16)]
    assert loss_plateau(_log(values, steps=range(1, 16))) == pytest.approx((15.0 - 16.0) / 16.0, rel=1e-12)
    # 40 steps (the sweep tests): steps 36..40 are the last tenth, ends of one record.
    values = [100.0 - s for s in range(1, 41)]
    assert loss_plateau(_log(values, steps=range(1, 41))) == pytest.approx((60.0 - 64.0) / 64.0, rel=1e-12)
    assert not math.isnan(loss_plateau(_log([1.0] * 10, steps=range(1, 11))))
    assert math.isnan(loss_plateau(_log([1.0] * 9, steps=range(1, 10))))  # only step 9 in the last tenth


@pytest.mark.parametrize("log", [[], _log([1.0]), _log([3.0, 2.0, 1.0], steps=[1, 2, 3]),
                                 _log([None] * 50, metric="loss"), _log([0.0] * 200)])
def test_loss_plateau_is_nan_when_it_cannot_be_measured(log):
    assert math.isnan(loss_plateau(log))  # too short, no values, or a zero start


def test_training_health_reads_the_plateaus_from_the_training_log():
    sae = _rotated_sae("relu", ALMOST_ALL_MOVED)
    steps = np.arange(5, 1001, 5)
    sae.training_log = [{"step": int(s), "loss": 3.0, "fvu": 1.0 - 0.0005 * s} for s in steps]
    result = training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})
    assert result["loss_plateau"] == 0.0
    assert result["fvu_plateau"] == pytest.approx((0.505 - 0.545) / 0.545, rel=1e-12)
    # The training-loss plateaus are reported, not judged; without a held-out curve there is no verdict.
    assert not result["passes"] and "no held-out curve" in result["failing"]
    sae.training_log = [{**r, "heldout_fvu": 0.3, "heldout_l0": 12.0} for r in sae.training_log]
    assert training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})["passes"]


def test_the_plateau_is_judged_at_constant_learning_rate_before_any_decay():
    """A run that falls 10% over the last quarter of its constant-rate steps and then flattens under a
    decay has not plateaued; the window is the last quarter of the 800 steps before the decay."""
    sae = _rotated_sae("relu", ALMOST_ALL_MOVED)
    sae.training_config = {**sae.training_config, "steps": 1000, "lr_decay_start": 0.8, "resample_every": 0}
    falling = lambda s: 0.2 * (1 - 0.1 * (min(s, 800) - 600) / 200) if s > 600 else 0.2  # noqa: E731
    sae.training_log = _flat_heldout_log(1000, fvu=falling)
    result = training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})
    assert not result["plateaued"] and result["steps"] == 1000 and result["steps_cap"] == 1000
    # The line over [600, 800] of a 10% fall, divided by its mean (0.19).
    assert result["heldout_fvu_change"] == pytest.approx(-0.02 / 0.19, rel=1e-3)
    assert abs(result["heldout_l0_change"]) < 1e-12
    assert "not plateaued (heldout_fvu changed -10.53%)" in result["failing"]
    sae.training_log = _flat_heldout_log(1000)
    assert training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})["plateaued"]


def test_the_window_starts_after_the_last_resampling_recovers():
    """A resampling at step 500 (n_resampled grows in the next record) with a 50-step recovery: a
    plateau over the last quarter of 600 steps, [450, 600], would start before the rate is constant."""
    sae = _rotated_sae("relu", ALMOST_ALL_MOVED)
    sae.training_config = {**sae.training_config, "steps": 2000, "lr_decay_start": None}
    log = _flat_heldout_log(600)
    for record in log:
        record["n_resampled"] = 3 if record["step"] > 500 else 0
    sae.training_log = log
    result = training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})
    assert not result["plateaued"] and "before the learning rate is constant (step 550)" in result["failing"]
    sae.training_log = [{**r, "n_resampled": 3 if r["step"] > 500 else 0} for r in _flat_heldout_log(800)]
    assert training_health(sae, evaluation={"dead_fraction": 0.0, "dense_fraction": 0.0})["plateaued"]


def test_health_table_has_one_row_per_sae():
    saes = {"moved": _rotated_sae("relu", ALMOST_ALL_MOVED), "fresh": _rotated_sae("relu", {})}
    x = torch.randn(500, D_IN, generator=torch.Generator().manual_seed(2))
    table = health_table(saes, x)
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["moved", "fresh"]
    assert list(table.columns) == ["steps", "steps_cap", "near_initial_fraction", "dead_fraction", "dense_fraction",
                                   "loss_plateau", "fvu_plateau", "heldout_fvu_change", "heldout_l0_change",
                                   "plateaued", "passes", "failing", "trained_here"]
    for name, sae in saes.items():
        expected = training_health(sae, x)
        row = table.loc[name]
        for column in ("near_initial_fraction", "dead_fraction", "dense_fraction", "passes", "failing"):
            assert row[column] == expected[column], (name, column)
    assert table.loc["fresh", "near_initial_fraction"] == 1.0 and not table.loc["fresh", "passes"]
    given = health_table(saes, None, evaluations={"moved": {"dead_fraction": 0.5, "dense_fraction": 0.0}})
    assert given.loc["moved", "dead_fraction"] == 0.5 and math.isnan(given.loc["fresh", "dead_fraction"])


def test_health_summary_counts_passes_and_names_the_failures():
    from sae_helpers.training import health_summary

    table = pd.DataFrame(
        {"near_initial_fraction": [0.01, 0.30], "dead_fraction": [0.0, 0.02], "dense_fraction": [0.0, 0.0],
         "loss_plateau": [-0.01, -0.05], "fvu_plateau": [0.0, 0.0], "heldout_fvu_change": [-0.004, -0.03],
         "heldout_l0_change": [0.001, 0.012], "plateaued": [True, False], "passes": [True, False],
         "failing": ["", "near_initial_fraction=0.3 > 0.05"]}, index=pd.Index(["a", "b"], name="sae"))
    text = health_summary(table)
    assert "1 of 2 SAEs pass" in text and "`b`: near_initial_fraction=0.3 > 0.05" in text
    assert "1.0%-30.0%" in text and "FVU changed by -3.0% to -0.4% and L0 by +0.1% to +1.2%" in text
    assert "1 of 2 SAEs plateaued" in text
    assert "All 1 SAEs pass" in health_summary(table.iloc[:1])


def test_health_summary_and_display_set_apart_saes_without_a_training_record():
    from sae_helpers.training import health_summary

    table = pd.DataFrame(
        {"steps": [0, 3000], "near_initial_fraction": [math.nan, 0.01], "dead_fraction": [0.02, 0.0],
         "dense_fraction": [0.001, 0.0], "loss_plateau": [math.nan, -0.01], "fvu_plateau": [math.nan, 0.0],
         "heldout_fvu_change": [math.nan, -0.004], "heldout_l0_change": [math.nan, 0.001],
         "plateaued": [False, True], "passes": [False, True], "failing": [NOT_TRAINED_HERE, ""],
         "trained_here": [False, True]}, index=pd.Index(["published", "ours"], name="sae"))
    text = health_summary(table)
    assert text.startswith("**1 of 2 SAEs carry no training record** (published SAEs)")
    assert "dead latents on these held-out activations: 2.0%-2.0%" in text
    assert "**All 1 SAEs pass the health checks**" in text  # the trained one, judged as before
    shown = health_display(table)
    assert list(shown["steps"]) == ["-", "3,000"] and list(shown["passes"]) == ["-", "yes"]
    assert list(shown["plateaued"]) == ["-", "yes"]
    assert "All 1 SAEs" not in health_summary(table.iloc[:1])


def test_health_display_shows_percent_short_names_and_yes_no():
    table = pd.DataFrame(
        {"near_initial_fraction": [0.0532, 0.0], "dead_fraction": [0.081, 0.0004], "dense_fraction": [0.0012, 1.0],
         "loss_plateau": [0.0102, -0.0446], "fvu_plateau": [-0.11, math.nan], "steps": [2000, 1500],
         "heldout_fvu_change": [-0.0446, math.nan], "heldout_l0_change": [0.001, 0.0], "plateaued": [False, True],
         "passes": [False, True],
         "failing": ["dead_fraction=0.081 > 0.05", ""]},
        index=pd.Index(["resid_post: jumprelu-w864-l0_3-7e2cb487", "relu-w1296-l1_0.5"], name="sae"))
    shown = health_display(table)
    assert list(shown.index) == ["resid_post: jumprelu-w864-l0_3", "relu-w1296-l1_0.5"]
    assert shown.index.name == "sae"
    assert list(shown.columns) == list(DISPLAY_COLUMNS.values())
    assert shown.loc["resid_post: jumprelu-w864-l0_3", "dead %"] == 8.1
    assert shown.loc["relu-w1296-l1_0.5", "dense %"] == 100.0
    fvu_change = DISPLAY_COLUMNS["heldout_fvu_change"]
    assert shown.loc["resid_post: jumprelu-w864-l0_3", fvu_change] == -4.5
    assert math.isnan(shown.loc["relu-w1296-l1_0.5", fvu_change])
    assert list(shown["steps"]) == ["2,000", "1,500"]
    assert list(shown["passes"]) == ["no", "yes"] and list(shown["plateaued"]) == ["no", "yes"]
    assert table.loc["relu-w1296-l1_0.5", "dense_fraction"] == 1.0  # the table itself is left as it was
