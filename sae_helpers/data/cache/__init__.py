"""An activation cache on disk: fixed-size shards, the token ids beside them, a manifest.

Layout of a cache directory::

    manifest.json             model, hook_name, d_model, n_tokens, context_size, dtype,
                              shards [{path, sha256, n_tokens}], settings, progress
    shard_00000.safetensors   activations [n, d] (in dtype); token_ids [w, context_size] (the windows
                              its rows come from); positions [n] (row -> w * context_size + pos)
                              first_window [1] (global index of token_ids[0])

Every shard holds exactly ``shard_tokens`` rows (the last one may hold fewer). Each file
is written atomically and the manifest is rewritten after every shard, so a killed
harvest resumes from its last shard. Readers accept only shard file names directly in the
cache directory, compare each shard's safetensors header with the manifest (before hashing
it), verify its sha256 and refuse NaN/inf activations, naming the shard.

:func:`build_caches` writes several such caches (one per site) from one pass over the
windows; each is exactly the cache :func:`build_cache` would write for that site alone.
Activations are stored in ``dtype`` (float32, bfloat16 or float16); a value the storage
dtype cannot hold (float16 above 65504) is an error, never a silent inf.
"""

from .manifest import FORMAT, MANIFEST, CacheError, check_count, is_cache_dir
from .reading import CacheSource
from .writing import build_cache, build_caches

__all__ = [
    "FORMAT",
    "MANIFEST",
    "CacheError",
    "CacheSource",
    "build_cache",
    "build_caches",
    "check_count",
    "is_cache_dir",
]
