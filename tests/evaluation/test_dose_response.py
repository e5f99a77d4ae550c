"""Snapshots side by side: the table against direct evaluation, the trend against hand arithmetic."""

import pandas as pd
import pytest

from sae_helpers import SyntheticFeatures, evaluate, train_sae
from sae_helpers.evaluation import snapshot_table, training_trend
from sae_helpers.training import load_snapshots

SYN = SyntheticFeatures(d=16, n_features=32, firing_prob=0.08)
X, HELDOUT = SYN.sample(4000, seed=0).x, SYN.sample(1000, seed=1).x


def test_snapshot_table_evaluates_each_snapshot_as_evaluate_does(tmp_path):
    final = train_sae(X, "relu", 32, 2.0, 40, batch_size=128, progress=False, lr_decay_start=None,
                      checkpoint_dir=tmp_path, snapshots=[10, 20])
    runs = {"relu": {**load_snapshots(tmp_path), 40: final}}
    table = snapshot_table(runs, HELDOUT)
    assert list(table["step"]) == [10, 20, 40] and list(table["tokens"]) == [1280, 2560, 5120]
    for row, (step, sae) in zip(table.itertuples(), sorted(runs["relu"].items()), strict=True):
        direct = evaluate(sae, HELDOUT)
        assert row.l0 == direct["l0"] and row.fvu == direct["fvu"], step
    assert table["fvu"].iloc[-1] < table["fvu"].iloc[0]  # training helped


def test_training_trend_is_the_change_between_the_last_two_snapshots():
    table = pd.DataFrame({"name": ["a", "a", "a", "b"], "step": [10, 40, 20, 10], "tokens": [1, 4, 2, 1],
                          "l0": [30.0, 20.0, 25.0, 9.0]})
    trend = training_trend(table, "l0")
    assert list(trend["name"]) == ["a"]  # b has one snapshot: no trend
    row = trend.iloc[0]
    assert (row["previous_tokens"], row["tokens"], row["previous"], row["last"]) == (2, 4, 25.0, 20.0)
    assert row["change"] == pytest.approx(-0.2)
