"""SAELens v6 layout: names, shapes, exact round trips, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_helpers import create_sae, load_sae

SAELENS_TENSORS = {
    "relu": ("standard", {"W_enc", "b_enc", "W_dec", "b_dec"}),
    "gated": ("gated", {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"}),
    "jumprelu": ("jumprelu", {"W_enc", "b_enc", "threshold", "W_dec", "b_dec"}),
}


def make(arch, d_in=6, d_sae=10):
    gen = torch.Generator().manual_seed(0)
    sae = create_sae(arch, d_in, d_sae, metadata={"model_name": "m", "hook_name": "blocks.6.hook_resid_post",
                                                   "context_size": 128})
    sae.init_weights(gen)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return sae


@pytest.mark.parametrize("arch", sorted(SAELENS_TENSORS))
def test_saelens_layout_and_exact_round_trip(arch, tmp_path):
    sae = make(arch)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    saelens_arch, names = SAELENS_TENSORS[arch]
    assert cfg["architecture"] == saelens_arch
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (6, 10, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.6.hook_resid_post"
    assert cfg["metadata"]["context_size"] == 128 and cfg["metadata"]["model_name"] == "m"
    tensors = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert set(tensors) == names
    assert tensors["W_enc"].shape == (6, 10) and tensors["W_dec"].shape == (10, 6)
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    for name, p in sae.named_parameters():
        assert torch.equal(getattr(loaded, name), p), name
    x = torch.randn(7, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_loads_a_saelens_written_directory(tmp_path):
    """A cfg.json as SAELens writes it (key 'meta', extra fields) loads."""
    sae = make("relu")
    folder = tmp_path / "theirs"
    folder.mkdir()
    save_file({k: v.detach() for k, v in sae.state_dict().items()}, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": 6, "d_sae": 10, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "meta": {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "sae_lens_version": "6.0.0"},
           "architecture": "standard"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_sae(folder)
    assert loaded.metadata["hook_name"] == "blocks.8.hook_resid_pre"
    assert torch.equal(loaded.W_enc, sae.W_enc)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No SAE directory at .*nowhere"):
        load_sae(tmp_path / "nowhere")


def test_wrong_tensor_shape_names_tensor_and_file(tmp_path):
    make("gated").save(tmp_path / "s")
    tensors = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    tensors["b_mag"] = torch.zeros(11)
    save_file(tensors, str(tmp_path / "s" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="sae_weights.safetensors: tensor 'b_mag' has shape \\(11,\\)"):
        load_sae(tmp_path / "s")


def test_missing_tensor_and_unknown_architecture(tmp_path):
    make("relu").save(tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architecture"] = "gated"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lack tensor\\(s\\) \\['b_gate', 'b_mag', 'r_mag'\\]"):
        load_sae(tmp_path / "s")
    cfg["architecture"] = "matryoshka"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'matryoshka' is not supported"):
        load_sae(tmp_path / "s")


def test_corrupt_files(tmp_path):
    make("relu").save(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"):
        load_sae(tmp_path / "s")
    make("relu").save(tmp_path / "t")
    (tmp_path / "t" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_sae(tmp_path / "t")


def test_save_leaves_no_temporary_files(tmp_path):
    make("relu").save(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_saving_over_an_sae_is_all_or_nothing(tmp_path, monkeypatch):
    a = create_sae("topk", 6, 10, k=4)
    a.init_weights(torch.Generator().manual_seed(0))
    a.save(tmp_path / "s", training_config={"k": 4}, notes={"keep": True})
    (tmp_path / "s" / "README.txt").write_text("mine")
    b = create_sae("topk", 6, 10, k=8, metadata={"model_name": "m", "bad": {1, 2}})  # a set: not JSON
    b.init_weights(torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match="cfg.json.*not JSON serializable.*nothing was written"):
        b.save(tmp_path / "s")
    with pytest.raises(TypeError, match="log.json.*nothing was written"):
        make("relu").save(tmp_path / "s", log=object())
    old = load_sae(tmp_path / "s")
    assert old.k == 4 and torch.equal(old.W_dec, a.W_dec)
    # A crash in the middle of writing the new directory leaves the old one as it was.
    b.metadata = {}
    from sae_helpers import formats

    def crash(*args, **kwargs):  # killed right after writing the new weights
        save_file(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(formats, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        b.save(tmp_path / "s")
    monkeypatch.setattr(formats, "save_file", save_file)
    old = load_sae(tmp_path / "s")
    assert old.k == 4 and torch.equal(old.W_dec, a.W_dec)
    b.save(tmp_path / "s")
    new = load_sae(tmp_path / "s")
    assert new.k == 8 and torch.equal(new.W_dec, b.W_dec)
    # Other files are kept; the old SAE's training_config (B has none) is not.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "README.txt", "cfg.json", "notes.json", "sae_weights.safetensors"]
