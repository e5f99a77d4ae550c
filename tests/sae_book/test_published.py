"""Chapters 03 and 04 on published SAEs: the ``gpt2-published`` profile's code path, offline.

The chapters' code cells run as papermill runs them, with that profile's parameters at tiny sizes: the
named model is the tiny model (under GPT-2's name, so SAELens's ``"gpt2-small"`` must match it as an
alias), the named dataset a local one, and the ``hf://`` SAEs come from a folder laid out as the Hugging
Face cache, written in SAELens's layouts (one with a pre-6.0 ``cfg.json``). No network is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

from sae_book import atomicity, common, completeness, profiles
from sae_helpers import create_sae
from sae_helpers.data import text
from sae_helpers.models import tiny_model
from sae_helpers.reproducibility import set_default_device
from tests.models.conftest import no_network  # noqa: F401 (fixture: no test here may reach the network)
from tests.sae_book.test_profiles import code_cells, tiny_corpus

REPO, COMMIT = "someone/tiny-saes", "0123456789abcdef0123456789abcdef01234567"
SITE = "blocks.1.hook_resid_pre"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def gpt2_named_tiny_model():
    model = tiny_model(seed=0)
    model.model_name = "gpt2"
    return model


def publish(hub: Path, widths: list[int], pre_6: int | None = None) -> list[str]:
    """Random SAEs of ``widths`` at :data:`SITE` in a hub cache under ``hub``; their ``hf://`` names.
    The SAE of width ``pre_6`` gets the ``cfg.json`` SAELens wrote before 6.0 (``hook_point``)."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    names = []
    for i, width in enumerate(widths):
        sae = create_sae("relu", 16, width, metadata={"model_name": "gpt2-small", "hook_name": SITE,
                                                      "context_size": 128})
        sae.init_weights(torch.Generator().manual_seed(i))
        folder = repo / "snapshots" / COMMIT / f"{SITE}_{width}"
        sae.save(folder)
        if width == pre_6:
            cfg = json.loads((folder / "cfg.json").read_text())
            (folder / "cfg.json").write_text(json.dumps({
                "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": "float32", "device": "cpu",
                "model_name": "gpt2-small", "hook_point": SITE, "hook_point_layer": 1, "context_size": 128,
                "normalize_activations": "none", "apply_b_dec_to_input": True}))
        names.append(f"hf://{REPO}/{SITE}_{width}")
    return names


@pytest.fixture(autouse=True)
def reset_defaults():
    """A chapter's setup sets the default device and text for the process: put them back."""
    yield
    set_default_device(None)
    text.set_default_text(None)


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def run_chapter(notebook: str, overrides: dict, tmp_path: Path, monkeypatch) -> dict:
    """The notebook's code cells with the ``gpt2-published`` profile edited by ``overrides``."""
    import matplotlib

    matplotlib.use("Agg")
    from sae_helpers import models

    profile = {**profiles.load_profile("gpt2-published", notebook), "site": SITE, "text_column": "content",
               "context_size": 16, "n_train_tokens": 200, "n_eval_tokens": 400, **overrides}
    profile_file = tmp_path / f"{notebook}.yaml"
    profile_file.write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(models, "load_model", lambda name, device=None, **kwargs: gpt2_named_tiny_model())
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, config=None, *, split, streaming: tiny_corpus().to_iterable_dataset())
    namespace: dict = {}
    for cell in code_cells(NOTEBOOKS / f"{notebook}.ipynb"):
        exec("".join(cell["source"]), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update(profile=str(profile_file), data_root=str(tmp_path / "data"), device="cpu")
    return namespace


@pytest.mark.filterwarnings("ignore:profile=.*is sized for a GPU")
def test_chapter_03_runs_on_published_saes(offline_hub, tmp_path, monkeypatch, no_network):  # noqa: F811
    names = publish(offline_hub, [24, 48, 96], pre_6=48)
    ns = run_chapter("03_completeness", {"published_saes": names, "n_splice_tokens": 60, "n_curve_points": 5,
                                         "n_splice_points": 2}, tmp_path, monkeypatch)
    family = ns["family"]
    assert family.control is None and list(family.saes) == [24, 48, 96]
    assert list(family.table.width) == [24, 48, 96] and family.table.cos_to_init.isna().all()
    assert set(ns["curves"]) == {"24 -> 48", "48 -> 96"} and ns["control_name"] is None
    assert not (tmp_path / "data" / "runs").exists()  # nothing was trained
    assert ns["chapter_summary"].headline.startswith("Of a larger published SAE's live latents")
    assert "no control pair" in ns["chapter_summary"].headline.lower()


@pytest.mark.filterwarnings("ignore:profile=.*is sized for a GPU")
def test_chapter_04_runs_on_published_saes(offline_hub, tmp_path, monkeypatch, no_network):  # noqa: F811
    names = publish(offline_hub, [32, 64])
    ns = run_chapter("04_atomicity", {"published_saes": names, "meta_epochs": 2, "meta_min_steps": 1,
                                      "meta_width": 4, "meta_comparison_width": 8, "meta_batch_size": 16},
                     tmp_path, monkeypatch)
    assert ns["base"].d_sae == 64 and ns["base_run"].startswith("published-w64-")
    assert set(ns["extra_rows"]) == {"covariance"} and ns["dose"] is None and ns["meta_trend"] is None
    assert set(ns["gaps"]["paper ratio"].nulls) == {"random", "covariance"}
    assert ns["smaller_width"] == 32
    assert "The base SAE is a published one" in atomicity.render_scope(64, ns["gaps"]["paper ratio"], False)


def test_published_saes_must_fit_the_model_and_grow_in_width(offline_hub, no_network):  # noqa: F811
    model = gpt2_named_tiny_model()
    names = publish(offline_hub, [24, 48])
    assert list(common.published_saes(model, SITE, names)) == [24, 48]
    with pytest.raises(ValueError, match="increasing width"):
        common.published_saes(model, SITE, names[::-1])
    with pytest.raises(ValueError, match="at least two"):
        common.published_saes(model, SITE, names[:1])
    with pytest.raises(ValueError, match=r"published_saes: hf://.*SAE/site mismatch.*set model_name and site"):
        common.published_saes(model, "blocks.0.hook_resid_pre", names)
    model.model_name = "pythia-70m"
    with pytest.raises(ValueError, match="SAE/model mismatch"):
        common.published_saes(model, SITE, names)


def test_the_published_verdict_says_there_is_no_control():
    from tests.sae_book.test_completeness import FAMILY, curve, pair_summary

    summary_ = pair_summary().drop(index="control: 8 -> 8 (seed 1)").assign(frac_novel_trained=np.nan,
                                                                          **{"initial p99": np.nan})
    curves = {"8 -> 16": curve([0.3, 0.25, 0.4, 0.2]), "16 -> 32": curve([0.2, 0.15, 0.12, 0.1])}
    v = completeness.verdict(summary_, None, FAMILY, curves)
    assert v.control_name is None and np.isnan(v.control_novel) and not v.above_null and not v.control_like
    text = completeness.render_verdict(v)
    assert "There is no control pair" in text and "Without a control pair" in text and "control pair (same" not in text
    assert "left their initial direction" not in text and "at initialisation" not in text and "nan" not in text
    numbers = completeness.summary(v).key_numbers
    assert "novel_fraction: control" not in numbers and numbers["novel_fraction: 8 -> 16"] == 0.40


def test_a_trained_base_keeps_its_run_name():
    from sae_helpers import TrainConfig, train_sae
    from sae_helpers.training.train import run_name

    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    settings = dict(k=2, steps=2, batch_size=32, init_sample_size=64)
    sae = train_sae(x, "batchtopk", 16, progress=False, **settings)
    assert atomicity.base_run_name(sae) == run_name(TrainConfig(arch="batchtopk", width=16, **settings))
