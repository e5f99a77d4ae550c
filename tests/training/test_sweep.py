"""train_saes: one pass over the data equals separate runs; reruns skip finished runs."""

import json
import shutil
import warnings

import pandas as pd
import pytest
import torch

from sae_helpers import SyntheticFeatures, train_sae
from sae_helpers.training import TrainingRun
from sae_helpers.training.train import family_configs, train_saes
from tests.training.crashes import crashes_at

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
        alone = train_sae(X, cfg["arch"], cfg["width"], cfg["l1_coefficient"], cfg["steps"], progress=False,
                          heldout=X[:500], **opts)
        for name, p in alone.named_parameters():
            assert torch.equal(getattr(sae, name), p), (cfg, name)
        assert alone.training_log == sae.training_log
        assert "heldout_fvu" in sae.training_log[-1]
    table = pd.read_csv(tmp_path / "r.csv")
    assert len(table) == 3 and {"name", "arch", "l1_coefficient", "l0", "fvu", "train_loss"} <= set(table.columns)


def test_train_sae_is_the_one_configuration_sweep(tmp_path):
    """One lifecycle: train_sae in checkpoint_dir writes the same files, with the same contents, as
    train_saes writes in the run's directory, and returns the same SAE."""
    cfg = CONFIGS[0]
    opts = {k: v for k, v in cfg.items() if k not in ("arch", "width", "l1_coefficient", "steps")}
    alone = train_sae(X, cfg["arch"], cfg["width"], cfg["l1_coefficient"], cfg["steps"], progress=False,
                      checkpoint_dir=tmp_path / "alone", **opts)
    sweep = train_saes(X, [cfg], out_dir=tmp_path / "sweep", progress=False)
    (run_dir,) = (tmp_path / "sweep").iterdir()

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert sorted(files(tmp_path / "alone")) == [".lock", "checkpoint/state.safetensors", "checkpoint/trainer.json",
                                                 "sae/cfg.json", "sae/sae_weights.safetensors",
                                                 "sae/training_config.json", "sae/training_data.json",
                                                 "sae/training_log.json", "training_log.json"]
    assert files(tmp_path / "alone") == files(run_dir)
    (sae,) = sweep.saes
    assert sae.provenance == alone.provenance and sae.metadata == alone.metadata
    for name, p in alone.named_parameters():
        assert torch.equal(p, getattr(sae, name)), name


def test_rerun_skips_finished_runs_and_resumes_the_rest(tmp_path, monkeypatch):
    first = train_saes(X, CONFIGS[:2], out_dir=tmp_path, progress=False)
    calls = []
    original = TrainingRun.step

    def counting(self, batch, pool=None):
        calls.append(self.cfg.arch)
        return original(self, batch, pool)

    monkeypatch.setattr(TrainingRun, "step", counting)
    again = train_saes(X, CONFIGS, out_dir=tmp_path, progress=False)
    assert calls == ["gated"] * 25  # only the new configuration trains
    for a, b in zip(first.saes, again.saes[:2], strict=True):
        assert torch.equal(a.W_dec, b.W_dec)


def test_batch_sizes_must_agree():
    bad = [CONFIGS[0], {**CONFIGS[1], "batch_size": 64}]
    with pytest.raises(ValueError, match="batch_size must agree"):
        train_saes(X, bad, progress=False)


def _initial_decoder(cfg: dict) -> torch.Tensor:
    from sae_helpers.data.sources import as_source
    from sae_helpers.training.config import TrainConfig

    source = as_source(X)
    run = TrainingRun.start(TrainConfig.from_dict(cfg), source.sample(512, cfg["seed"]), torch.device("cpu"), None)
    return run.sae.W_dec.detach().clone()


def test_one_seed_for_all_widths_would_share_initial_rows():
    """The trap family_configs avoids: same seed -> a wider SAE starts with the narrower one's rows."""
    cfg = {"arch": "topk", "k": 4, **COMMON, "resample_every": None, "seed": 0}
    narrow, wide = _initial_decoder({**cfg, "width": 16}), _initial_decoder({**cfg, "width": 48})
    assert torch.allclose(wide[:16], narrow)


def test_family_configs_give_each_width_its_own_initialisation():
    configs = family_configs([16, 32, 48], seed=3, arch="topk", k=4, **{**COMMON, "resample_every": None})
    assert [c["width"] for c in configs] == [16, 32, 48]
    assert len({c["seed"] for c in configs}) == 3 and configs[0]["seed"] == 3
    assert all(c["k"] == 4 and c["lr"] == COMMON["lr"] for c in configs)
    decoders = [_initial_decoder(c) for c in configs]
    for small, large in zip(decoders[:-1], decoders[1:], strict=True):
        cos = torch.nn.functional.normalize(large[: len(small)], dim=1) @ torch.nn.functional.normalize(small, dim=1).T
        assert cos.diagonal().abs().max() < 0.9  # no row starts as a copy of the narrower SAE's
    with pytest.raises(ValueError, match="distinct"):
        family_configs([16, 16])


def test_results_report_training_health(tmp_path):
    import math

    from sae_helpers import create_sae, training_health
    from sae_helpers.training import loss_plateau

    # 30 steps at lr 0.03 leave about half the latents near their random start; at lr 0.1 almost none.
    configs = [{**CONFIGS[0], "steps": 30, "lr": 0.03}, {**CONFIGS[2], "steps": 30, "lr": 0.1}]
    plain = train_saes(X, configs, out_dir=tmp_path, progress=False)
    health = ["near_initial_fraction", "loss_plateau", "fvu_plateau"]
    assert set(health) <= set(plain.results.columns) and "passes_health" not in plain.results.columns
    # Rerun from disk (finished runs are loaded, not trained) with held-out activations.
    evaluated = train_saes(X, configs, out_dir=tmp_path, eval_activations=X[:500], results_csv=tmp_path / "r.csv",
                           progress=False)
    table = pd.read_csv(tmp_path / "r.csv")
    expected_columns = {*health, "passes_health", "dead_fraction", "dense_fraction", "l0", "fvu", "train_loss"}
    assert expected_columns <= set(table.columns)
    assert 0 < table.near_initial_fraction[0] < 1  # a count, not all-or-nothing
    assert not table.passes_health[0] and table.near_initial_fraction[1] < table.near_initial_fraction[0]
    for cfg, sae, (_, row) in zip(configs, evaluated.saes, table.iterrows(), strict=True):
        # Near-initial fraction against the initial rows redrawn independently from the seed, in float64.
        start = create_sae(cfg["arch"], X.shape[1], cfg["width"]).init_weights(torch.Generator().manual_seed(0))
        cos = torch.nn.functional.cosine_similarity(sae.W_dec.detach().double(), start.W_dec.detach().double(), dim=1)
        assert row["near_initial_fraction"] == float((cos > 0.9).double().mean())
        assert row["loss_plateau"] == pytest.approx(loss_plateau(sae.training_log, "loss"), rel=1e-12)
        assert row["fvu_plateau"] == pytest.approx(loss_plateau(sae.training_log, "fvu"), rel=1e-12)
        assert math.isfinite(row["loss_plateau"]) and math.isfinite(row["fvu_plateau"])
        expected = training_health(sae, X[:500])
        assert bool(row["passes_health"]) == expected["passes"]
        assert row["dead_fraction"] == pytest.approx(expected["dead_fraction"], abs=1e-15)
    for a, b in zip(plain.results.to_dict("records"), evaluated.results.to_dict("records"), strict=True):
        assert all(a[k] == b[k] for k in health)  # the same SAEs, trained once and loaded


def test_finished_runs_on_other_data_are_refused_even_without_their_checkpoint(tmp_path, monkeypatch):
    first = train_saes(X, CONFIGS[:2], out_dir=tmp_path, progress=False)
    other = SyntheticFeatures(d=12, n_features=24, firing_prob=0.1).sample(3000, seed=1).x
    with pytest.raises(ValueError, match="finished run in .*relu-w32.* was trained on other data"):
        train_saes(other, CONFIGS[:2], out_dir=tmp_path, progress=False)
    changed = X.clone()  # one row changed a little (not among any evenly spaced sample): other data too
    changed[1] += 1e-3
    with pytest.raises(ValueError, match="was trained on other data"):
        train_saes(changed, CONFIGS[:2], out_dir=tmp_path, progress=False)
    for checkpoint in tmp_path.glob("*/checkpoint"):  # the record kept with the SAE is enough
        shutil.rmtree(checkpoint)
    with pytest.raises(ValueError, match="finished run in .* was trained on other data"):
        train_saes(other, CONFIGS[:2], out_dir=tmp_path, progress=False)
    monkeypatch.setattr(TrainingRun, "step", lambda *a, **k: pytest.fail("retrained a finished run"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = train_saes(X, CONFIGS[:2], out_dir=tmp_path, progress=False)
    for a, b in zip(first.saes, again.saes, strict=True):
        assert torch.equal(a.W_dec, b.W_dec)
    monkeypatch.undo()
    for record in tmp_path.glob("*/sae/training_data.json"):  # no record at all: trained again, said so
        record.unlink()
    with pytest.warns(UserWarning, match="has no record of the data it was trained on .* training it again"):
        train_saes(other, CONFIGS[:2], out_dir=tmp_path, progress=False)


def test_another_data_order_is_another_sae_and_is_refused(tmp_path):
    """A run directory holds one (configuration, data, data order): the same configuration fed the
    batches in another order (a family's control beside the same width from another seed) is
    refused, finished or not, instead of being returned or continued as if it were that SAE."""
    cfg = [CONFIGS[0]]
    first = train_saes(X, cfg, out_dir=tmp_path / "done", data_seed=0, progress=False).saes[0]
    other_order = train_saes(X, cfg, data_seed=1, progress=False).saes[0]
    assert not torch.equal(first.W_dec, other_order.W_dec)  # another SAE indeed
    with pytest.raises(ValueError, match="finished run in .*trained in data order data_seed=0; this call asks for "
                                         "data_seed=1.*new checkpoint_dir / out_dir"):
        train_saes(X, cfg, out_dir=tmp_path / "done", data_seed=1, progress=False)

    with crashes_at(12):
        train_saes(X, cfg, out_dir=tmp_path / "part", data_seed=0, checkpoint_every=5, progress=False)
    with pytest.raises(ValueError, match="checkpoint in .*part.* data_seed=0; this call asks for data_seed=1"):
        train_saes(X, cfg, out_dir=tmp_path / "part", data_seed=1, progress=False)
    resumed = train_saes(X, cfg, out_dir=tmp_path / "part", data_seed=0, progress=False).saes[0]
    assert torch.equal(resumed.W_dec, first.W_dec)

    # A finished run's record without a data order is refused (it cannot be told from another order).
    (record,) = (tmp_path / "done").glob("*/sae/training_data.json")
    info = json.loads(record.read_text())
    del info["data_seed"]
    record.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="has no record of its data order"):
        train_saes(X, cfg, out_dir=tmp_path / "done", data_seed=0, progress=False)
