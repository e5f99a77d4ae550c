"""L0 ratios at matched fidelity: closed-form frontiers, ranges, and the bootstrap's clusters."""

import math

import numpy as np
import pandas as pd
import pytest

from sae_helpers.evaluation.frontier import fidelity_targets, l0_at_fidelity, l0_ratio_at_fidelity


def line(arch, l0s, factor=1.0, seed=0, noise=0.0, rng=None):
    """Runs on the curve fvu = 0.6 - 0.1 ln(L0 / factor): the same fidelity at ``factor`` times the L0."""
    l0s = np.asarray(l0s, dtype=float)
    fvu = 0.6 - 0.1 * np.log(l0s / factor)
    if noise:
        fvu = fvu + noise * rng.standard_normal(len(l0s))
    return pd.DataFrame({"arch": arch, "l0": l0s, "fvu": fvu, "seed": seed})


def test_l0_at_fidelity_inverts_a_log_linear_frontier_and_refuses_to_extrapolate():
    runs = line("relu", [5, 10, 20, 40, 80])
    target = 0.6 - 0.1 * math.log(30)
    assert l0_at_fidelity(runs, target) == pytest.approx(30)
    assert math.isnan(l0_at_fidelity(runs, 0.6 - 0.1 * math.log(100)))  # better than any run
    assert math.isnan(l0_at_fidelity(runs, 0.6 - 0.1 * math.log(2)))  # worse than any run: below the range
    # A dominated run (more L0, worse FVU) is not on the frontier and changes nothing.
    worse = pd.concat([runs, pd.DataFrame({"arch": ["relu"], "l0": [35.0], "fvu": [0.5], "seed": [0]})])
    assert l0_at_fidelity(worse, target) == pytest.approx(30)
    # Higher-is-better metrics (loss recovered) read the upper envelope.
    recovered = runs.assign(fvu=1 - runs.fvu)
    assert l0_at_fidelity(recovered, 1 - target, higher_is_better=True) == pytest.approx(30)


def test_targets_lie_in_the_overlap_of_the_two_ranges():
    results = pd.concat([line("relu", [5, 10, 20, 40]), line("gated", [5, 10, 20, 40], factor=0.5)])
    low = 0.6 - 0.1 * math.log(40)  # relu's best fvu; gated's worst is 0.6 - 0.1 ln(10)
    high = 0.6 - 0.1 * math.log(10)
    assert fidelity_targets(results, "fvu", "relu", "gated", quantiles=(0.0, 0.5, 1.0)) == pytest.approx(
        [low, (low + high) / 2, high])
    apart = pd.concat([line("relu", [5, 6]), line("gated", [50, 60], factor=0.1)])
    assert fidelity_targets(apart, "fvu", "relu", "gated") == []


def test_ratio_is_the_closed_form_and_the_bootstrap_brackets_it():
    results = pd.concat([line("relu", [4, 8, 16, 32, 64]), line("gated", [2, 4, 8, 16, 32], factor=0.5)])
    targets = fidelity_targets(results, "fvu", "relu", "gated")
    table = l0_ratio_at_fidelity(results, targets, n_boot=300)
    assert table["ratio"].to_numpy() == pytest.approx([0.5] * 3)
    assert (table["low"] <= 0.5 + 1e-12).all() and (table["high"] >= 0.5 - 1e-12).all()
    assert ((table["resolved"] > 0.3) & (table["resolved"] <= 1)).all()


def test_noisy_seeds_widen_the_interval_around_the_truth():
    """Over 30 simulated sweeps (4 seeds, 8 noisy points per architecture), the 90% interval at the
    middle fidelity covers the true ratio 0.5 in most of them, and stays informative."""
    rng = np.random.default_rng(1)
    covered, widths = [], []
    for _ in range(30):
        parts = []
        for seed in range(4):
            parts += [line("relu", np.geomspace(4, 64, 8), seed=seed, noise=0.01, rng=rng),
                      line("gated", np.geomspace(2, 32, 8), factor=0.5, seed=seed, noise=0.01, rng=rng)]
        results = pd.concat(parts)
        row = l0_ratio_at_fidelity(results, fidelity_targets(results, "fvu", "relu", "gated", quantiles=(0.5,)),
                                   n_boot=200, seed=len(covered)).iloc[0]
        covered.append(row["low"] <= 0.5 <= row["high"])
        widths.append(row["high"] - row["low"])
    assert 0.7 <= np.mean(covered) <= 1.0
    assert np.median(widths) < 0.3
    # Seeds that disagree: the cluster bootstrap's interval spans both seeds' ratios.
    two = pd.concat([line("relu", [4, 8, 16, 32, 64], seed=0), line("gated", [2, 4, 8, 16, 32], factor=0.5, seed=0),
                     line("relu", [4, 8, 16, 32, 64], seed=1), line("gated", [4, 8, 16, 32, 64], factor=0.9, seed=1)])
    wide = l0_ratio_at_fidelity(two, fidelity_targets(two, "fvu", "relu", "gated"), n_boot=400)
    assert (wide["low"] <= 0.5 + 1e-9).all() and (wide["high"] >= 0.9 - 1e-9).all()
    # The point estimate pools both seeds' runs: each frontier is the better of the two seeds' envelopes.
    assert wide["ratio"].to_numpy() == pytest.approx([0.5] * 3)
