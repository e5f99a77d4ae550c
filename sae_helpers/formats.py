"""Read and write SAEs in the SAELens v6 directory layout.

A directory holds ``cfg.json`` (``architecture``, ``d_in``, ``d_sae``, ``dtype``,
``apply_b_dec_to_input``, ``normalize_activations``, ``metadata`` ...) and
``sae_weights.safetensors`` with SAELens's parameter names and shapes. ``metadata`` holds
what SAELens >= 6 and Neuronpedia read (``sae_lens_version``, ``model_name`` as a Hugging
Face id, ``hook_name``, ``context_size``, ``prepend_bos``, ``dataset_path``,
``neuronpedia_id``): :mod:`sae_helpers.saelens_metadata` maps an SAE's own metadata to it and
back. Anything else we record lives in separate JSON files beside them, which SAELens ignores: the
SAE's :class:`~sae_helpers.saes.Provenance` as ``training_config.json`` and
``training_log.json`` (read back by :func:`load_sae`), results, notes.

This module alone reads and writes SAE directories; ``SAE.save`` calls :func:`save_sae`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ._dtypes import dtype_name, resolve_dtype
from ._io import atomic_replace_dir, parse_json, recover_dir, save_tensors
from .saelens_metadata import from_saelens, to_saelens, v6_config
from .saes.provenance import Provenance
from .saes.registry import from_saelens_architecture

if TYPE_CHECKING:
    from .saes.base import SAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
#: The files of an SAE's :class:`Provenance`: its training configuration and its training log.
TRAINING_CONFIG_FILENAME = "training_config.json"
TRAINING_LOG_FILENAME = "training_log.json"


def sae_config_dict(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` content for ``sae`` (SAELens v6 field names)."""
    return {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        **sae.hyperparameter_values(),
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": to_saelens(sae.metadata),
    }


#: Files that belong to the SAE a directory holds; replaced (or dropped) when another SAE is saved there.
SAE_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, TRAINING_CONFIG_FILENAME, TRAINING_LOG_FILENAME)


def _json_text(obj: Any, file: str) -> str:
    try:
        return json.dumps(obj, indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Cannot save {file}: {err}. Pass JSON-serialisable values (str, int, float, bool, None, "
            "lists and dicts of them), e.g. str(value); nothing was written."
        ) from err


def save_sae(sae: SAE, path: str | os.PathLike, **extra_json: Any) -> Path:
    """Write ``sae`` to directory ``path`` (created if needed), atomically as a whole.

    ``extra_json`` entries become ``NAME.json`` files beside the SAE files. The SAE's
    :attr:`~sae_helpers.saes.SAE.provenance` (set by ``train_sae``) is written as
    ``training_config.json`` and ``training_log.json`` (an entry of ``extra_json`` of that
    name wins), which :func:`load_sae` reads back. Everything is serialised first (a non-JSON value raises
    before anything is touched), written to a temporary sibling directory and swapped
    in, so a crash leaves the old SAE or the new one, never a mix. Other files already
    in ``path`` are kept.
    """
    path = _sae_directory(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"Cannot save an SAE to {path}: it exists and is not a directory.")
    sae = sae.for_inference()  # e.g. a BatchTopK SAE saves as the JumpReLU SAE it is at inference
    if sae.provenance is not None:
        if sae.provenance.config is not None:
            extra_json.setdefault("training_config", sae.provenance.config)
        extra_json.setdefault("training_log", sae.provenance.log)
    texts = {CFG_FILENAME: _json_text(sae_config_dict(sae), f"{path / CFG_FILENAME} (metadata)")}
    for name, obj in extra_json.items():
        if not name or name != Path(name).name or f"{name}.json" == CFG_FILENAME:
            raise ValueError(f"Cannot save {name!r}.json beside the SAE: use a plain file name other than 'cfg'.")
        texts[f"{name}.json"] = _json_text(obj, str(path / f"{name}.json"))
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.named_parameters()}

    def build(tmp: Path) -> None:
        if path.is_dir():  # keep files that are not the old SAE's
            for entry in path.iterdir():
                if entry.name in SAE_FILES or entry.name in texts:
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name, symlinks=True)
                else:
                    shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        save_tensors(tensors, tmp / WEIGHTS_FILENAME)
        for file, text in texts.items():
            (tmp / file).write_text(text)

    return atomic_replace_dir(path, build)


def _sae_directory(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded and resolved, refused when it holds the working directory: saving
    there would copy the working directory into its own replacement (``"."``, ``".."``, ``"/"``)."""
    given = path
    path = Path(os.path.expanduser(os.fspath(path))).resolve()
    cwd = Path.cwd().resolve()
    if cwd == path or path in cwd.parents:
        raise ValueError(f"Cannot save an SAE to {given!r} ({path}): it is the working directory or holds it, and "
                         "save() replaces the whole directory. Name a directory of its own, e.g. sae.save('my_sae').")
    return path


def load_sae(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load an SAE directory in the SAELens layout (ours or SAELens's own, pre-6.0 configs included),
    or a published one by its hub name ``"hf://OWNER/REPO/PATH"`` (:mod:`sae_helpers.hub`).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and field at fault. The
    weights file's header (tensor names, shapes, dtypes) is checked against ``cfg.json``
    before anything is allocated, and non-float or non-finite weights are refused. A
    directory a crashed :func:`save_sae` left aside (``.NAME.old``) is moved back first.
    Every file is read from one snapshot of the directory (:func:`read_sae_files`), so a
    :func:`save_sae` into the same path meanwhile never mixes one SAE's config with another's weights.
    SAELens's ``rescale_acts_by_decoder_norm: true`` (TopK) is folded into the weights
    (:func:`_fold_decoder_norm_rescaling`): the same latents as SAELens.
    """
    if isinstance(path, str) and path.startswith("hf://"):
        from .hub import download_sae, parse_hub_name

        path = download_sae(*parse_hub_name(path))
    path = Path(os.path.expanduser(os.fspath(path)))
    files = read_sae_files(path)
    cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if files[CFG_FILENAME] is None:
        raise FileNotFoundError(f"SAE config not found: {cfg_path}. Check the path.")
    cfg = v6_config(parse_json(files[CFG_FILENAME], cfg_path, what="SAE config"))
    for field in ("architecture", "d_in", "d_sae"):
        if field not in cfg:
            raise ValueError(f"SAE config {cfg_path} has no field {field!r}; it is not a SAELens cfg.json.")
    for field in ("d_in", "d_sae"):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"SAE config {cfg_path}: {field} must be a positive integer, got {value!r}. "
                             f"Set it to the width of the weights in {WEIGHTS_FILENAME}.")
    if not isinstance(cfg["architecture"], str):
        raise ValueError(f"SAE config {cfg_path}: architecture must be a string such as 'standard', got "
                         f"{cfg['architecture']!r}.")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(
            f"SAE config {cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not "
            "supported; fold the normalisation into the weights first (SAELens: "
            "fold_activation_norm_scaling_factor) so that normalize_activations is 'none'."
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise ValueError(
            f"SAE config {cfg_path}: reshape_activations={cfg['reshape_activations']!r} is not supported: "
            "sae_helpers reads flat activations [..., d_in]. Use an SAE trained on a flat hook (not hook_z)."
        )
    if cfg.get("apply_b_dec_to_input", True) is not True:
        raise ValueError(
            f"SAE config {cfg_path}: apply_b_dec_to_input=false is not supported; fold b_dec @ W_enc "
            "into the encoder bias first."
        )
    cls = from_saelens_architecture(cfg["architecture"])
    metadata = cfg.get("metadata", cfg.get("meta")) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"SAE config {cfg_path}: metadata must be a JSON object ({{\"model_name\": ...}}), got "
                         f"{type(metadata).__name__}.")
    metadata = from_saelens(metadata)
    target_dtype = resolve_dtype(dtype if dtype is not None else cfg.get("dtype", "float32"))
    missing_hyper = [name for name in cls.hyperparameters if name not in cfg]
    if missing_hyper:
        raise ValueError(f"SAE config {cfg_path} has no field(s) {missing_hyper}, needed by architecture "
                         f"{cfg['architecture']!r}.")
    hyper = {name: cfg[name] for name in cls.hyperparameters}
    # The shapes cfg.json implies, on the meta device (nothing allocated), checked against the
    # weights file's header before the SAE is built: a lying cfg.json fails fast.
    shapes = cls(cfg["d_in"], cfg["d_sae"], device="meta", metadata=metadata, **hyper)
    expected = {name: tuple(p.shape) for name, p in shapes.named_parameters()}
    weights = files[WEIGHTS_FILENAME]
    if weights is None:
        raise FileNotFoundError(
            f"SAE weights not found: {weights_path}. The directory is incomplete; save the SAE again."
        )
    _check_weights_header(weights, weights_path, expected, cfg)
    sae = cls(cfg["d_in"], cfg["d_sae"], dtype=target_dtype, device=device, metadata=metadata, **hyper)
    try:
        tensors = load_safetensors(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"SAE weights {weights_path} are unreadable ({err}). Save the SAE again.") from err
    for name in expected:
        finite = torch.isfinite(tensors[name])
        if not bool(finite.all()):
            raise ValueError(
                f"SAE weights {weights_path}: tensor {name!r} holds {int((~finite).sum())} NaN/inf value(s). "
                "The file is damaged or the SAE diverged in training: train or save it again."
            )
    tensors = _fold_decoder_norm_rescaling(tensors, cfg, cfg_path)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(tensors[name])
    sae.provenance = _provenance(files, path)
    return sae


def read_sae_files(path: str | os.PathLike, names: tuple[str, ...] = SAE_FILES,
                   attempts: int = 20) -> dict[str, bytes | None]:
    """The bytes of each of ``names`` in SAE directory ``path`` (``None``: absent), all from one
    version of the directory: the directory is opened once and its files read relative to it, and
    if :func:`save_sae` swapped in a new directory and removed the old one while they were read,
    they are read again from the new one."""
    path = Path(path)
    for _ in range(attempts):
        try:
            directory = os.open(_settled(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError):
            if path.with_name(f".{path.name}.old").is_dir() or path.is_dir():
                continue  # a save is swapping directories (or just did): read the new one
            raise FileNotFoundError(
                f"No SAE directory at {path}. An SAE directory holds {CFG_FILENAME} and "
                f"{WEIGHTS_FILENAME}; pass the directory that sae.save() wrote."
            ) from None
        try:
            files: dict[str, bytes | None] = {}
            for name in names:
                try:
                    handle = os.open(name, os.O_RDONLY, dir_fd=directory)
                except FileNotFoundError:
                    files[name] = None
                    continue
                with os.fdopen(handle, "rb") as stream:
                    files[name] = stream.read()
            opened = os.fstat(directory)
        finally:
            os.close(directory)
        try:
            now = os.stat(path)
        except FileNotFoundError:  # between save_sae's two renames
            continue
        if all(files.values()) or (opened.st_ino, opened.st_dev) == (now.st_ino, now.st_dev):
            return files  # every file read, or the directory still the one that was read
    raise RuntimeError(f"{path} kept changing while it was read ({attempts} times): another process is saving "
                       "SAEs there in a loop. Load it once that process has finished.")


def _settled(path: Path, wait: float = 1.0) -> Path:
    """``path`` once it exists again: :func:`save_sae` moves the old directory aside (``.NAME.old``)
    an instant before the new one takes its place, so a reader waits up to ``wait`` seconds for it;
    an old copy still alone after that was left by a crashed save and is moved back."""
    import time

    old = path.with_name(f".{path.name}.old")
    deadline = time.monotonic() + wait
    while not path.exists() and old.is_dir():
        if time.monotonic() > deadline:
            try:
                return recover_dir(path)
            except OSError:  # the save finished meanwhile: its new directory is in place
                return path
        time.sleep(0.005)
    return path


def read_provenance(path: str | os.PathLike) -> Provenance | None:
    """The :class:`Provenance` saved in SAE directory ``path`` (``training_config.json``,
    ``training_log.json``); ``None`` when it holds neither (an SAE saved without one, or by SAELens)."""
    path = Path(path)
    return _provenance(read_sae_files(path, (TRAINING_CONFIG_FILENAME, TRAINING_LOG_FILENAME)), path)


def _provenance(files: dict[str, bytes | None], path: Path) -> Provenance | None:
    config_path, log_path = path / TRAINING_CONFIG_FILENAME, path / TRAINING_LOG_FILENAME
    config_bytes, log_bytes = files.get(TRAINING_CONFIG_FILENAME), files.get(TRAINING_LOG_FILENAME)
    if config_bytes is None and log_bytes is None:
        return None
    config = parse_json(config_bytes, config_path, what="Training config") if config_bytes is not None else None
    try:
        log = json.loads(log_bytes) if log_bytes is not None else []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Training log {log_path} is not valid JSON ({err}). Delete it, or save the SAE "
                         "again.") from err
    if not isinstance(log, list) or not all(isinstance(record, dict) for record in log):
        raise ValueError(f"Training log {log_path} must be a JSON list of objects (one per logging step). "
                         "Delete it, or save the SAE again.")
    return Provenance(config, log)


#: SAELens architectures whose ``rescale_acts_by_decoder_norm`` flag is folded into the weights on load.
_RESCALABLE = ("topk",)


def _fold_decoder_norm_rescaling(tensors: dict[str, torch.Tensor], cfg: dict[str, Any],
                                 cfg_path: Path) -> dict[str, torch.Tensor]:
    """Honour SAELens's ``rescale_acts_by_decoder_norm: true`` (TopK): SAELens multiplies the
    pre-activations by each latent's decoder norm before the top-k and divides the activations by it
    before decoding. Folding the norms into the weights (encoder columns and bias times the norm,
    decoder rows divided by it, as SAELens's ``fold_W_dec_norm``) gives the same latents and the same
    reconstruction with a plain TopK SAE. Other architectures with the flag are refused."""
    flag = cfg.get("rescale_acts_by_decoder_norm", False)
    if flag is False or flag is None:
        return tensors
    if flag is not True:
        raise ValueError(f"SAE config {cfg_path}: rescale_acts_by_decoder_norm must be true or false, got {flag!r}.")
    if cfg["architecture"] not in _RESCALABLE:
        raise ValueError(f"SAE config {cfg_path}: rescale_acts_by_decoder_norm=true is supported for the "
                         f"architectures {list(_RESCALABLE)}, not {cfg['architecture']!r}. Fold the decoder norms "
                         "into the weights first (SAELens: sae.fold_W_dec_norm()) and save it again.")
    W_dec = tensors["W_dec"].double()
    norms = W_dec.norm(dim=-1)
    if not bool((norms > 0).all()):
        raise ValueError(f"SAE config {cfg_path}: rescale_acts_by_decoder_norm=true with {int((norms == 0).sum())} "
                         "all-zero decoder row(s): those latents are undefined in SAELens too. Remove them first.")
    folded = dict(tensors)
    for name, value in (("W_enc", tensors["W_enc"].double() * norms), ("b_enc", tensors["b_enc"].double() * norms),
                        ("W_dec", W_dec / norms[:, None])):
        folded[name] = value.to(tensors[name].dtype)
    return folded


def _safetensors_header(data: bytes) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from a safetensors file's header (an 8-byte little-endian length,
    then that many bytes of JSON), without touching the tensors."""
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError(f"header length {length} exceeds the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + length])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return {name: (tuple(entry["shape"]), entry["dtype"]) for name, entry in header.items() if name != "__metadata__"}


def _check_weights_header(data: bytes, weights_path: Path, expected: dict[str, tuple[int, ...]],
                          cfg: dict[str, Any]) -> None:
    """Compare the tensor names, shapes and dtypes in the header of ``data`` (the file
    ``weights_path``) with ``expected`` (the shapes cfg.json implies), without reading any tensor."""
    try:
        found = _safetensors_header(data)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"SAE weights {weights_path} are unreadable ({err}). Save the SAE again.") from err
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(
            f"SAE weights {weights_path} lack tensor(s) {missing} required by architecture "
            f"{cfg['architecture']!r} (found {sorted(found)})."
        )
    for name, shape in expected.items():
        found_shape, found_dtype = found[name]
        if found_shape != shape:
            raise ValueError(
                f"SAE weights {weights_path}: tensor {name!r} has shape {found_shape}, "
                f"but cfg.json (d_in={cfg['d_in']}, d_sae={cfg['d_sae']}) implies {shape}. Fix d_in/d_sae in "
                f"{weights_path.parent / CFG_FILENAME}, or save the SAE again."
            )
        if found_dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"SAE weights {weights_path}: tensor {name!r} is {found_dtype}, not floating point. SAE "
                "weights are float32, float64, bfloat16 or float16: save the SAE again."
            )


#: safetensors' names of the floating-point dtypes SAE weights may be stored in.
_FLOAT_DTYPES = ("F32", "F64", "BF16", "F16")
