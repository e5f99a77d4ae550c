import math

import pandas as pd
import pytest

from sae_helpers.evaluation import compare_at_equal_fidelity, l0_to_reach, pareto_frontier

RUNS = pd.DataFrame({
    "arch": ["relu"] * 4 + ["gated"] * 4,
    "l0": [10, 20, 40, 30, 5, 10, 20, 15],
    "loss_recovered": [0.80, 0.90, 0.95, 0.85, 0.80, 0.90, 0.97, 0.89],
})


def test_dominated_runs_leave_the_frontier():
    frontier = pareto_frontier(RUNS)
    relu = frontier[frontier.arch == "relu"]
    assert list(relu.l0) == [10, 20, 40]  # l0 30 is beaten by l0 20
    gated = frontier[frontier.arch == "gated"]
    assert list(gated.l0) == [5, 10, 20]


def test_interpolation_in_log_l0():
    gated = pareto_frontier(RUNS).query("arch == 'gated'")
    assert l0_to_reach(gated, 0.90) == pytest.approx(10)
    assert l0_to_reach(gated, 0.85) == pytest.approx(math.sqrt(5 * 10))  # halfway in log space
    assert l0_to_reach(gated, 0.70) == 5
    assert math.isnan(l0_to_reach(gated, 0.99))


def test_ratio_at_equal_fidelity():
    runs = pd.concat([RUNS, pd.DataFrame({"arch": ["relu"], "l0": [80], "loss_recovered": [0.99]})])
    table = compare_at_equal_fidelity(runs)
    assert list(table.l0_relu) == [10, 20, 40, 80]
    assert table.l0_ratio.iloc[0] == pytest.approx(5 / 10)
    assert table.l0_ratio.iloc[1] == pytest.approx(10 / 20)
    assert table.l0_gated.iloc[2] == pytest.approx(10 * 2 ** (5 / 7))
    assert math.isnan(table.l0_ratio.iloc[3])  # gated's frontier never reaches 0.99
