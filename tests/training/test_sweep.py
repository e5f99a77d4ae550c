"""train_saes: one pass over the data equals separate runs; reruns skip finished runs."""

import pandas as pd
import pytest
import torch

from sae_helpers import SyntheticFeatures, train_sae
from sae_helpers.training import TrainingRun
from sae_helpers.training.sweep import train_saes

X = SyntheticFeatures(d=12, n_features=24, firing_prob=0.1).sample(3000, seed=0).x
COMMON = {"steps": 40, "batch_size": 128, "lr": 3e-3, "init_sample_size": 512, "resample_every": 15,
          "dead_after": 5}
CONFIGS = [
    {"arch": "relu", "width": 32, "l1_coefficient": 1.0, **COMMON},
    {"arch": "relu", "width": 48, "l1_coefficient": 3.0, **COMMON},
    {"arch": "gated", "width": 32, "l1_coefficient": 2.0, **COMMON, "steps": 25},
]


def test_one_pass_equals_training_each_alone(tmp_path):
    sweep = train_saes(X, CONFIGS, out_dir=tmp_path, eval_activations=X[:500], results_csv=tmp_path / "r.csv",
                       progress=False)
    for cfg, sae in zip(CONFIGS, sweep.saes, strict=True):
        opts = {k: v for k, v in cfg.items() if k not in ("arch", "width", "l1_coefficient", "steps")}
        alone = train_sae(X, cfg["arch"], cfg["width"], cfg["l1_coefficient"], cfg["steps"], progress=False, **opts)
        for name, p in alone.named_parameters():
            assert torch.equal(getattr(sae, name), p), (cfg, name)
        assert alone.training_log == sae.training_log
    table = pd.read_csv(tmp_path / "r.csv")
    assert len(table) == 3 and {"name", "arch", "l1_coefficient", "l0", "fvu", "train_loss"} <= set(table.columns)


def test_rerun_skips_finished_runs_and_resumes_the_rest(tmp_path, monkeypatch):
    first = train_saes(X, CONFIGS[:2], out_dir=tmp_path, progress=False)
    calls = []
    original = TrainingRun.step

    def counting(self, batch):
        calls.append(self.cfg.arch)
        return original(self, batch)

    monkeypatch.setattr(TrainingRun, "step", counting)
    again = train_saes(X, CONFIGS, out_dir=tmp_path, progress=False)
    assert calls == ["gated"] * 25  # only the new configuration trains
    for a, b in zip(first.saes, again.saes[:2], strict=True):
        assert torch.equal(a.W_dec, b.W_dec)


def test_batch_sizes_must_agree():
    bad = [CONFIGS[0], {**CONFIGS[1], "batch_size": 64}]
    with pytest.raises(ValueError, match="batch_size must agree"):
        train_saes(X, bad, progress=False)
