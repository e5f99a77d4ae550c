"""Provenance: the declared training record of an SAE, set by training, kept by every conversion,
saved beside the weights and loaded back."""

import json

import pytest
import torch

from sae_helpers import SyntheticFeatures, create_sae, load_sae, train_sae
from sae_helpers.saes import Provenance

X = SyntheticFeatures(d=12, n_features=24, firing_prob=0.1).sample(2000, seed=0).x
FAST = {"batch_size": 128, "lr": 3e-3, "init_sample_size": 512, "progress": False}


def trained(arch="gated", **sparsity):
    return train_sae(X, arch, 16, steps=20, **(sparsity or {"l1_coefficient": 1.0}), **FAST)


def test_training_sets_the_provenance():
    sae = trained()
    assert isinstance(sae.provenance, Provenance)
    assert sae.provenance.config["arch"] == "gated" and sae.provenance.config["steps"] == 20
    assert sae.provenance.log[-1]["step"] == 20
    assert sae.training_config is sae.provenance.config and sae.training_log is sae.provenance.log


def test_an_untrained_sae_has_none_and_the_accessors_set_it():
    sae = create_sae("relu", 4, 8)
    assert sae.provenance is None and sae.training_config is None and sae.training_log is None
    sae.training_log = [{"step": 1, "loss": 2.0}]
    assert sae.provenance == Provenance(None, [{"step": 1, "loss": 2.0}])
    sae.training_config = {"arch": "relu"}
    assert sae.provenance == Provenance({"arch": "relu"}, [{"step": 1, "loss": 2.0}])


@pytest.mark.parametrize("arch, sparsity", [("gated", {"l1_coefficient": 1.0}), ("batchtopk", {"k": 3}),
                                            ("jumprelu", {"l0_coefficient": 0.1}), ("topk", {"k": 3})])
def test_provenance_survives_train_save_load(arch, sparsity, tmp_path):
    sae = trained(arch, **sparsity)
    sae.save(tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "training_config.json").read_text()) == sae.training_config
    loaded = load_sae(tmp_path / "sae")
    assert loaded.provenance == sae.provenance
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert "provenance" not in cfg and "training_config" not in cfg  # cfg.json stays SAELens's


def test_conversions_carry_the_provenance():
    gated = trained()
    assert gated.to_jumprelu().provenance == gated.provenance
    # BatchTopK trains as itself and is returned as the JumpReLU SAE it is at inference.
    batchtopk = trained("batchtopk", k=3)
    assert batchtopk.architecture == "jumprelu" and batchtopk.metadata["trained_as"] == "batchtopk"
    assert batchtopk.provenance.config["arch"] == "batchtopk"
    from sae_helpers.training.config import TrainConfig
    from sae_helpers.training.init import build_training_sae

    training = build_training_sae(TrainConfig(arch="batchtopk", width=16, steps=1, k=3), 12, torch.device("cpu"))
    training.provenance = batchtopk.provenance
    assert training.for_inference().provenance == batchtopk.provenance


def test_an_sae_saved_without_provenance_loads_with_none(tmp_path):
    sae = create_sae("relu", 4, 8)
    sae.save(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert load_sae(tmp_path / "s").provenance is None


def test_a_damaged_training_log_is_named(tmp_path):
    trained().save(tmp_path / "s")
    (tmp_path / "s" / "training_log.json").write_text("{\"step\": 1}")
    with pytest.raises(ValueError, match="training_log.json must be a JSON list"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / "training_log.json").write_text("[")
    with pytest.raises(ValueError, match="training_log.json is not valid JSON"):
        load_sae(tmp_path / "s")
