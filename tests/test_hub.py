"""sae_helpers.hub: published SAEs by their hub name, offline against a folder laid out as the
Hugging Face cache (no network is used)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from sae_helpers import create_sae, load_sae
from sae_helpers.hub import download_sae, parse_hub_name

REPO, COMMIT = "someone/gpt2-saes", "0123456789abcdef0123456789abcdef01234567"
PATH = "blocks.8.hook_resid_pre"


def hub_cache(root: Path, cfg_edit=None) -> tuple[Path, torch.nn.Module]:
    """``root`` as huggingface_hub lays out its cache: the repository's refs/main names a snapshot
    holding one SAE folder, written with a SAELens cfg.json (optionally edited)."""
    sae = create_sae("relu", 8, 24, metadata={"model_name": "gpt2", "hook_name": PATH, "context_size": 128})
    sae.init_weights(torch.Generator().manual_seed(0))
    repo = root / f"models--{REPO.replace('/', '--')}"
    sae.save(repo / "snapshots" / COMMIT / PATH)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    if cfg_edit is not None:
        cfg_file = repo / "snapshots" / COMMIT / PATH / "cfg.json"
        cfg_file.write_text(json.dumps(cfg_edit(json.loads(cfg_file.read_text()))))
    return root, sae


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_a_cached_published_sae_loads_by_its_hub_name_without_network(offline):
    _, sae = hub_cache(offline)
    loaded = load_sae(f"hf://{REPO}/{PATH}")
    assert torch.equal(loaded.W_dec, sae.W_dec) and loaded.metadata["hook_name"] == PATH
    assert download_sae(REPO, PATH) == offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / PATH


def test_a_pre_6_saelens_config_from_the_hub_loads(offline):
    def pre_6(cfg):  # as SAELens < 6 wrote it: no architecture, hook_point, top-level model fields
        return {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": "torch.float32", "device": "cuda",
                "model_name": "gpt2-small", "hook_point": PATH, "hook_point_layer": 8, "context_size": 128,
                "normalize_activations": False, "apply_b_dec_to_input": True, "activation_fn_str": "relu"}

    _, sae = hub_cache(offline, pre_6)
    loaded = load_sae(f"hf://{REPO}/{PATH}")
    assert type(loaded) is type(sae) and torch.equal(loaded.W_enc, sae.W_enc)
    assert loaded.metadata["hook_name"] == PATH and loaded.metadata["context_size"] == 128


def test_offline_a_missing_sae_is_a_quick_error_naming_the_fix(offline):
    hub_cache(offline)
    start = time.monotonic()
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set and the Hugging Face cache .* does not hold it.*Unset"):
        load_sae(f"hf://{REPO}/blocks.9.hook_resid_pre")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        load_sae("hf://someone/other-repo/x")
    assert time.monotonic() - start < 5


def test_an_unreachable_hub_is_a_quick_error(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(OSError, match="downloaded from the Hugging Face hub, and http://127.0.0.1:9 did not answer"):
        load_sae(f"hf://{REPO}/{PATH}")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("name", ["hf://someone", "hf://someone/repo", "hf://someone/repo/../x", "gs://a/b/c"])
def test_malformed_hub_names_say_how_to_write_them(name):
    with pytest.raises(ValueError, match="hf://OWNER/REPO/PATH"):
        parse_hub_name(name)


def test_a_hub_name_is_split_into_repository_and_folder():
    assert parse_hub_name(f"hf://{REPO}/{PATH}") == (REPO, PATH)
    assert parse_hub_name("hf://a/b/c/d/") == ("a/b", "c/d")
