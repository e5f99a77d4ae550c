"""Parameter profiles: every shipped profile fits its notebook (names, types, TransformerLens sites), and
the GPU profile's code path runs end to end (a chapter's cells, the tiny model, a local dataset)."""

import json
from importlib import resources
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from sae_book import common, profiles
from sae_helpers.data import text
from sae_helpers.reproducibility import set_default_device
from tests.models.conftest import no_network  # noqa: F401 (fixture: no test here may reach the network)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
#: Layers, width and context of the models a profile may name (their Hugging Face configurations).
MODELS = {"gpt2": ("gpt2", 12, 768, 1024), "EleutherAI/pythia-70m": ("gpt_neox", 6, 512, 2048)}
SITE_KEYS = ("hook_name", "site", "sites")


@pytest.fixture(autouse=True)
def reset_defaults():
    yield
    set_default_device(None)
    text.set_default_text(None)


def code_cells(path):
    return [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]


def notebook_parameters(path):
    [cell] = [c for c in code_cells(path) if "parameters" in c["metadata"].get("tags", [])]
    namespace = {}
    exec("".join(cell["source"]), namespace)
    return common.parameters(namespace)


def profile_cases():
    """Every (profile, notebook) the package ships a file for."""
    root = resources.files(profiles)
    return [(name, path) for name in profiles.profile_names() for path in NOTEBOOKS
            if (root / name / f"{path.stem}.yaml").is_file()]


def test_the_published_profile_names_the_papers_gpt2_saes_in_order_of_width():
    import re

    for notebook in ("03_completeness", "04_atomicity"):
        values = profiles.load_profile("gpt2-published", notebook)
        names = values["published_saes"]
        assert all(name.startswith("hf://") for name in names)
        widths = [int(re.search(r"_(\d+)$", name).group(1)) for name in names]
        assert widths == sorted(set(widths)) and len(widths) >= 2
        assert all(name.rsplit("/", 1)[1].startswith(values["site"]) for name in names)  # the SAEs' own site


def test_the_gpu_profile_ships_for_every_notebook():
    assert "gpu" in profiles.profile_names()
    for path in NOTEBOOKS:
        assert profiles.load_profile("gpu", path.stem), path.stem
        assert notebook_parameters(path)["profile"] == profiles.QUICK
    assert profiles.load_profile("quick", "01_training") == {}


@pytest.mark.parametrize(("profile", "path"), profile_cases(), ids=lambda v: getattr(v, "stem", v))
def test_profile_keys_and_types_are_the_notebooks(profile, path):
    params = notebook_parameters(path)
    values = profiles.load_profile(profile, path.stem)
    profiles.check_profile(values, params, f"{profile}/{path.stem}")  # raises on a stray key or a wrong type
    for key, value in values.items():
        assert key != "profile"
        if isinstance(params[key], list):
            assert all(type(v) in (type(params[key][0]), int) for v in value), key


@pytest.fixture(scope="module")
def bridges():
    """A TransformerBridge per named model: its architecture and layer count, random and tiny in width."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from sae_helpers.models import tiny_tokenizer, wrap_hf_model

    built = {}
    for name, (kind, layers, _, n_ctx) in MODELS.items():
        ids = dict(vocab_size=67, bos_token_id=1, eos_token_id=2)
        if kind == "gpt2":
            hf = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=2, n_layer=layers, n_positions=n_ctx, **ids))
        else:
            hf = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=layers,
                                                  intermediate_size=32, max_position_embeddings=n_ctx, **ids))
        built[name] = wrap_hf_model(hf, tiny_tokenizer(), boot_name=name, model_name=name)
    return built


@pytest.mark.parametrize(("profile", "path"), profile_cases(), ids=lambda v: getattr(v, "stem", v))
def test_profile_models_and_sites_are_valid_transformerlens_names(profile, path, bridges, no_network):  # noqa: F811
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    from sae_helpers.models import check_hook_name

    values = profiles.load_profile(profile, path.stem)
    if "model_name" not in values:
        assert not any(key in values for key in SITE_KEYS)
        return
    name = values["model_name"]
    assert name in MODELS and name in OFFICIAL_MODEL_NAMES, name
    model = bridges[name]
    assert model.cfg.n_layers == MODELS[name][1]
    sites = [values[key] for key in ("hook_name", "site") if key in values] + values.get("sites", [])
    assert sites
    for site in sites:
        check_hook_name(model, site)
    assert values.get("context_size", 128) <= MODELS[name][3]
    widths = [values[key] for key in ("gated_width",) if key in values] + values.get("family_widths", [])
    assert all(width % MODELS[name][2] == 0 for width in widths)  # multiples of d_model


def test_unknown_keys_and_wrong_types_are_clear_errors(tmp_path):
    params = {"steps": 200, "lr": 1e-3, "sites": ["a"], "threshold": None, "model_name": "m"}
    profiles.check_profile({"steps": 10, "lr": 1, "threshold": 0.5, "sites": ["b"]}, params, "x")
    with pytest.raises(ValueError, match=r"x: \['stepz'\] are not parameters"):
        profiles.check_profile({"stepz": 1}, params, "x")
    with pytest.raises(ValueError, match=r"wrong types: steps='10'"):
        profiles.check_profile({"steps": "10"}, params, "x")
    with pytest.raises(ValueError, match="Unknown profile 'gpus'"):
        profiles.load_profile("gpus", "01_training")
    with pytest.raises(FileNotFoundError, match="no such YAML file"):
        profiles.load_profile(str(tmp_path / "missing.yaml"), "01_training")


def test_setup_applies_the_profile_and_sets_device_and_text(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("steps: 7\ndataset: some/corpus\ntext_column: body\ndevice: cpu\n")
    namespace = {"profile": str(path), "device": "auto", "dataset": "sotu", "text_column": "text", "steps": 200,
                 "seed": 0}
    table = common.setup(namespace, "01_training")
    assert namespace["steps"] == 7 and "7" in table.to_string()
    assert text.default_text() == text.TextSource("some/corpus", "body")
    from sae_helpers.reproducibility import default_device

    assert default_device() == torch.device("cpu")


def tiny_corpus(n_docs=40):
    from sae_helpers.models.tiny import TINY_WORDS

    gen = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({"content": [
        " ".join(TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (60,), generator=gen).tolist())
        for _ in range(n_docs)]})


def test_the_gpu_profile_runs_chapter_01_end_to_end(tmp_path, monkeypatch, no_network):  # noqa: F811
    """Chapter 01's code cells with the GPU profile's model, dataset and sites, at tiny sizes: the named model
    is loaded by name (here: the tiny model), the named dataset streamed (here: a local IterableDataset)."""
    import matplotlib

    matplotlib.use("Agg")
    from sae_helpers import models
    from sae_helpers.models import tiny_model

    gpu = profiles.load_profile("gpu", "01_training")
    tiny = {**gpu, "hook_name": "blocks.1.hook_resid_post", "text_column": "content", "context_size": 16,
            "n_train_tokens": 400, "n_eval_tokens": 120, "n_splice_tokens": 60, "gated_width": 32, "steps": 4,
            "batch_size": 32, "n_inspect": 2, "cache_dtype": "float32"}
    profile_file = tmp_path / "gpu-tiny.yaml"
    profile_file.write_text(yaml.safe_dump(tiny))
    loads, streams = [], []

    def load_model(name, device=None, **kwargs):
        loads.append((name, device))
        return tiny_model(seed=0)

    def load_dataset(name, config=None, *, split, streaming):
        streams.append((name, split, streaming))
        return tiny_corpus().to_iterable_dataset()

    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cells = code_cells(Path(__file__).resolve().parents[2] / "notebooks" / "01_training.ipynb")
    namespace = {}
    for cell in cells:  # every code cell, the Colab install cell too (a no-op here), as papermill runs them
        exec("".join(cell["source"]), namespace)
        if "parameters" in cell["metadata"].get("tags", []):  # papermill's overrides follow this cell
            namespace.update(profile=str(profile_file), data_root=str(tmp_path / "data"), device="cpu")
    assert namespace["model_name"] == "gpt2" and loads == [("gpt2", None)]
    assert streams and all(s == (gpu["dataset"], "train", True) for s in streams)
    train_cache = Path(namespace["train_cache"])
    assert train_cache.name.endswith(text.TextSource(gpu["dataset"], "content").cache_tag())
    manifest = json.loads((train_cache / "manifest.json").read_text())
    assert manifest["settings"]["dataset"].startswith(gpu["dataset"])
    assert set(namespace["saes"]) == {"relu", "gated"}
    assert next(namespace["saes"]["gated"].parameters()).device == torch.device("cpu")


def test_gpu_chapters_share_their_caches_and_family():
    """The GPU profiles of chapters 01-04 ask for the same harvest (one cache per site), and 03 and 04 for the
    same SAE family (trained once)."""
    loaded = {path.stem: profiles.load_profile("gpu", path.stem) for path in NOTEBOOKS}
    harvest_keys = ("model_name", "dataset", "text_column", "context_size", "n_train_tokens", "n_eval_tokens")
    lm = [name for name, values in loaded.items() if "model_name" in values]
    assert len(lm) == 4
    assert len({tuple(loaded[name][key] for key in harvest_keys) for name in lm}) == 1
    family_keys = ("site", "family_widths", "family_k", "steps", "batch_size", "lr")
    assert all(loaded["03_completeness"][key] == loaded["04_atomicity"][key] for key in family_keys)


@pytest.mark.parametrize("with_book_params", [False, True], ids=["quick", "book"])
def test_chapters_03_and_04_share_their_family(with_book_params):
    """Chapters 03 and 04 train one family between them: their quick defaults, and their values under the
    book's parameters (book/params), ask for the same harvest and the same SAEs."""
    root = Path(__file__).resolve().parents[2]
    effective = {}
    for name in ("03_completeness", "04_atomicity"):
        values = notebook_parameters(root / "notebooks" / f"{name}.ipynb")
        if with_book_params:
            values |= yaml.safe_load((root / "book" / "params" / f"{name}.yaml").read_text()) or {}
        effective[name] = values
    keys = ("model_name", "dataset", "text_column", "context_size", "n_train_tokens", "n_eval_tokens", "site",
            "family_widths", "family_k", "steps", "batch_size", "lr", "plateau_tolerance", "n_snapshots", "seed",
            "outlier_factor", "cache_dtype")
    assert {key: effective["03_completeness"][key] for key in keys} == {
        key: effective["04_atomicity"][key] for key in keys}
