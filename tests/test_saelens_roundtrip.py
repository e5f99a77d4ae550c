"""Our saved SAEs, loaded by SAELens itself: the metadata survives, and SAELens's encode/decode
equals ours. SAELens runs in its own environment (bench/saelens_env.sh; it needs
transformer-lens < 4), in a subprocess running tests/saelens_side.py.

Where that environment is: ``$SAELENS_PYTHON``, else ``bench/.saelens-venv/bin/python``. Without it
the tests skip, saying how to build it; under CI (``CI`` set) they fail instead (.ci/run builds it).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_helpers import create_sae, load_sae
from sae_helpers.saelens_metadata import SAELENS_FORMAT_VERSION, dataset_path_of

ROOT = Path(__file__).resolve().parents[1]
SIDE = ROOT / "tests" / "saelens_side.py"
D_IN, D_SAE, K, N = 16, 48, 6, 64
OURS = {"model_name": "smollm2-135m", "hook_name": "blocks.6.hook_resid_post", "context_size": 128,
        "dataset_path": dataset_path_of("sotu:train")}
#: What SAELens must read back from every file (the issue: without sae_lens_version these came back None).
EXPECTED = {"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "hook_name": "blocks.6.hook_resid_post",
            "context_size": 128, "prepend_bos": True, "dataset_path": OURS["dataset_path"], "neuronpedia_id": None,
            "sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None}
#: Our SAE (by how it is built) -> SAELens's architecture for it.
SAELENS_ARCH = {"relu": "standard", "gated": "gated", "gated_as_jumprelu": "jumprelu", "topk": "topk",
                "batchtopk": "jumprelu", "jumprelu": "jumprelu"}


def saelens_python() -> Path:
    """The SAELens environment's python; skips (fails under CI) with how to build it when missing."""
    python = Path(os.environ.get("SAELENS_PYTHON") or ROOT / "bench" / ".saelens-venv" / "bin" / "python")
    if not python.is_file():
        message = (f"The SAELens environment is missing: no {python}. Build it with `bash bench/saelens_env.sh` "
                   "(1.9 GB, about 3 CPU-minutes; SAELENS_VENV=DIR builds it elsewhere, then set "
                   "SAELENS_PYTHON=DIR/bin/python).")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def side_command(python, *args) -> list[str]:
    """How tests/saelens_side.py runs: isolated (``-I``), so its own folder, tests/, is not on sys.path
    (nor PYTHONPATH, nor the user's site-packages). Else tests/kernels/ shadows the ``kernels`` package
    that transformers imports, and SAELens fails to import."""
    return [str(python), "-I", str(SIDE), *map(str, args)]


@pytest.mark.parametrize("which", ["ours", "saelens"])
def test_the_side_script_does_not_see_the_tests_folder(which):
    """Run as the round trip runs it, by this interpreter (always there) and by SAELens's, where the
    ``kernels`` package is installed and must be the one found. Imports nothing: cheap."""
    python = sys.executable if which == "ours" else saelens_python()
    tests = ROOT / "tests"
    env = {**os.environ, "PYTHONPATH": str(tests)}
    done = subprocess.run(side_command(python, "--sys-path"), cwd=tests, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    found = json.loads(done.stdout)
    assert tests not in [(tests / entry).resolve() for entry in found["sys_path"]], found["sys_path"]
    assert found["kernels"] is None or tests not in Path(found["kernels"]).resolve().parents, found["kernels"]


def test_the_environment_is_pinned_exactly():
    """bench/saelens-constraints.txt pins every package (no range, no editable or URL line), including the
    torch and sae-lens that bench/saelens_env.sh asks for."""
    script = (ROOT / "bench" / "saelens_env.sh").read_text()
    lines = [line for line in (ROOT / "bench" / "saelens-constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.]+", line) for line in lines), lines
    for name, variable in (("torch", "TORCH_VERSION"), ("sae-lens", "SAELENS_VERSION")):
        (version,) = re.findall(rf"^{variable}=(\S+)$", script, flags=re.M)
        assert pins[name] == version, name
    assert pins["sae-lens"] == SAELENS_FORMAT_VERSION


def build(name: str, gen: torch.Generator, x: torch.Tensor):
    """A randomly initialised, perturbed SAE of each kind, with our metadata."""
    arch = {"gated_as_jumprelu": "gated"}.get(name, name)
    options = {"k": K} if arch in ("topk", "batchtopk") else {}
    sae = create_sae(arch, D_IN, D_SAE, metadata=dict(OURS), **options)
    sae.init_weights(gen)
    with torch.no_grad():
        for param in sae.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(D_SAE, generator=gen))
        if arch == "batchtopk":  # K latents per token fire on average: midway between two pre-activations,
            top = sae.pre_activations(x).flatten().topk(K * len(x) + 1).values  # not on one (rounding would decide)
            sae.threshold.fill_(float(top[-2:].mean()))
    return sae.to_jumprelu() if name == "gated_as_jumprelu" else sae


#: Configs as SAELens < 6 wrote them (read by both through SAELens's own defaulting), from our SAE of that kind.
PRE_6 = {"pre6_standard": "relu", "pre6_topk": "topk"}


def pre_6(sae, directory):
    """``sae`` saved with a pre-6.0 SAELens cfg.json: no architecture, no metadata, ``hook_point``,
    ``activation_fn_str`` (``topk`` with its ``k`` in ``activation_fn_kwargs``), a boolean
    ``normalize_activations`` and a ``torch.``-prefixed dtype."""
    sae.save(directory)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2-small",
           "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "context_size": 128,
           "normalize_activations": False, "apply_b_dec_to_input": True,
           "activation_fn_str": "topk" if sae.architecture == "topk" else "relu"}
    if sae.architecture == "topk":
        cfg["activation_fn_kwargs"] = {"k": K}
    (directory / "cfg.json").write_text(json.dumps(cfg))


def rescaled_topk(sae, directory, gen):
    """``sae`` (TopK) saved with SAELens's ``rescale_acts_by_decoder_norm: true`` and decoder rows of
    norms between 0.2 and 5, so that the flag changes which latents win the top-k."""
    sae.save(directory)
    weights = directory / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_dec"] = (tensors["W_dec"] * (0.2 + 4.8 * torch.rand(D_SAE, 1, generator=gen))).contiguous()
    save_file(tensors, str(weights))
    cfg_file = directory / "cfg.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "rescale_acts_by_decoder_norm": True}))


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Our SAEs saved, SAELens's outputs for them, and what SAELens read."""
    python = saelens_python()
    root = tmp_path_factory.mktemp("saelens")
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(N, D_IN, generator=gen)
    saes = {name: build(name, gen, x) for name in SAELENS_ARCH}
    for name, sae in saes.items():
        sae.save(root / name)
    # The control: the same file without sae_lens_version, which SAELens reads as a pre-6.0 config.
    saes["relu"].save(root / "no_version")
    cfg_file = root / "no_version" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["metadata"]["sae_lens_version"]
    cfg_file.write_text(json.dumps(cfg))
    rescaled_topk(saes["topk"], root / "topk_rescaled", gen)
    for name, source in PRE_6.items():
        pre_6(saes[source], root / name)
    save_file({"x": x}, str(root / "inputs.safetensors"))
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    dirs = [root / name for name in (*SAELENS_ARCH, "no_version", "topk_rescaled", *PRE_6)]
    done = subprocess.run(side_command(python, root / "inputs.safetensors", out, *dirs), env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"SAELens ({python}) could not load our SAEs:\n{done.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return x, saes, out, summary


def test_saelens_is_the_pinned_release(roundtrip):
    *_, summary = roundtrip
    assert summary["sae_lens"] == SAELENS_FORMAT_VERSION


@pytest.mark.parametrize("name", sorted(SAELENS_ARCH))
def test_saelens_reads_our_metadata(roundtrip, name):
    *_, summary = roundtrip
    read = summary[name]
    assert read["architecture"] == SAELENS_ARCH[name]
    assert {key: read["metadata"].get(key) for key in EXPECTED} == EXPECTED
    assert read["metadata"]["sae_helpers"]["model_name"] == "smollm2-135m"
    assert read["dtype"] == "float32"
    if name == "topk":
        assert read["k"] == K
    if name == "batchtopk":
        assert read["metadata"]["trained_as"] == "batchtopk" and read["metadata"]["k"] == K


def test_without_sae_lens_version_saelens_drops_the_metadata(roundtrip):
    """Why metadata.sae_lens_version is written: without it SAELens reads a pre-6.0 config and drops
    the metadata (reproduced here)."""
    *_, summary = roundtrip
    meta = summary["no_version"]["metadata"]
    assert meta.get("model_name") is None and meta.get("hook_name") is None and meta.get("context_size") is None


@pytest.mark.parametrize("name", sorted(SAELENS_ARCH))
def test_saelens_encodes_and_decodes_as_we_do(roundtrip, name):
    x, saes, out, _ = roundtrip
    theirs = load_file(str(out / f"{name}.safetensors"))
    with torch.no_grad():
        latents = saes[name].encode(x)
        reconstruction = saes[name].decode(latents)
    l0 = (latents > 0).sum(-1).float().mean()
    assert 1 <= l0 <= D_SAE - 1, f"a trivial test: L0 {l0}"  # some latents fire, not all
    torch.testing.assert_close(theirs["latents"], latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["reconstruction"], reconstruction, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAELENS_ARCH))
def test_what_saelens_saves_loads_back_as_ours(roundtrip, name):
    """SAELens's save_model of our SAE keeps our block of metadata: load_sae gets our model name back."""
    _, saes, out, _ = roundtrip
    loaded = load_sae(out / name)
    ours = saes[name].for_inference()
    assert type(loaded) is type(ours)
    for param_name, param in ours.named_parameters():
        assert torch.equal(getattr(loaded, param_name), param), param_name
    assert loaded.metadata["model_name"] == "smollm2-135m"
    assert {k: loaded.metadata[k] for k in ("hook_name", "context_size", "dataset_path", "prepend_bos")} == {
        **{k: OURS[k] for k in ("hook_name", "context_size", "dataset_path")}, "prepend_bos": True}


#: How load_sae reads each field of SAELens's inference configs. A field SAELens adds shows up here
#: as a failure: decide how it is read (and test it) before SAE files with it are trusted.
FIELD_READING = {
    "d_in": "read: the activation width", "d_sae": "read: the number of latents", "dtype": "read: the weights' dtype",
    "device": "ignored: load_sae puts the SAE on the device its caller asks for",
    "apply_b_dec_to_input": "refused unless true (test_formats: test_bad_cfg_fields_are_named)",
    "normalize_activations": "refused unless 'none' (test_formats: test_bad_cfg_fields_are_named)",
    "reshape_activations": "refused unless 'none' (test_formats: test_bad_cfg_fields_are_named)",
    "metadata": "read: sae_helpers.saelens_metadata", "k": "read: TopK's k",
    "rescale_acts_by_decoder_norm": "folded into the weights (test_a_topk_sae_rescaled_by_decoder_norm_...)",
}


def test_every_saelens_config_field_has_a_known_reading():
    done = subprocess.run(side_command(saelens_python(), "--config-fields"), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    fields = json.loads(done.stdout)
    assert set(fields) == {"standard", "gated", "jumprelu", "topk"}
    for arch, config in fields.items():
        unknown = sorted(set(config) - set(FIELD_READING))
        assert not unknown, f"SAELens's {arch} config has fields load_sae does not know how to read: {unknown}"
    assert fields["topk"]["rescale_acts_by_decoder_norm"] == "False" and fields["standard"]["apply_b_dec_to_input"] \
        == "True" and fields["standard"]["normalize_activations"] == fields["standard"]["reshape_activations"] \
        == "'none'"  # the defaults load_sae assumes when a file leaves them out


@pytest.mark.parametrize("name", sorted(PRE_6))
def test_a_pre_6_config_reads_as_saelens_reads_it(roundtrip, name):
    x, saes, out, summary = roundtrip
    theirs = load_file(str(out / f"{name}.safetensors"))
    ours = load_sae(out.parent / name)
    assert ours.architecture == saes[PRE_6[name]].architecture == summary[name]["architecture"].replace(
        "standard", "relu")
    assert ours.metadata["hook_name"] == summary[name]["metadata"]["hook_name"] == "blocks.8.hook_resid_pre"
    assert ours.metadata["context_size"] == summary[name]["metadata"]["context_size"] == 128
    with torch.no_grad():
        latents = ours.encode(x)
        reconstruction = ours.decode(latents)
    torch.testing.assert_close(theirs["latents"], latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["reconstruction"], reconstruction, rtol=1e-5, atol=1e-5)


def test_a_topk_sae_rescaled_by_decoder_norm_encodes_as_in_saelens(roundtrip):
    """SAELens's rescale_acts_by_decoder_norm, folded into the weights by load_sae: the same latents
    and reconstruction as SAELens computes from the file."""
    x, _, out, summary = roundtrip
    theirs = load_file(str(out / "topk_rescaled.safetensors"))
    assert summary["topk_rescaled"]["class"] == "TopKSAE"
    ours = load_sae(out.parent / "topk_rescaled")
    with torch.no_grad():
        latents = ours.encode(x)
        reconstruction = ours.decode(latents)
    torch.testing.assert_close(theirs["latents"], latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["reconstruction"], reconstruction, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
