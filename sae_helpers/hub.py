"""Published SAEs on the Hugging Face hub, named ``hf://OWNER/REPO/PATH``.

``PATH`` is the SAE's folder inside the repository (``cfg.json`` and ``sae_weights.safetensors``,
as SAELens publishes them; SAELens's list of releases gives each one's repository and path).
:func:`download_sae` fetches just that folder into the Hugging Face cache with ``huggingface_hub``
and returns it; :func:`sae_helpers.load_sae` accepts the ``hf://`` name directly. Nothing is
downloaded when the folder is already in the cache. Offline (``HF_HUB_OFFLINE`` set, or the hub
not answering within a few seconds) a folder missing from the cache is a quick error that says
how to fix it.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["HF_PREFIX", "HUB_PROBE_TIMEOUT", "download_sae", "hub_unreachable", "parse_hub_name"]

HF_PREFIX = "hf://"
#: Seconds the hub may take to answer before it is declared unreachable.
HUB_PROBE_TIMEOUT = 3.0
#: The files of a published SAE folder that are fetched (the rest of the repository is not).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def parse_hub_name(name: str) -> tuple[str, str]:
    """``("OWNER/REPO", "PATH")`` of ``"hf://OWNER/REPO/PATH"``."""
    if not name.startswith(HF_PREFIX):
        raise ValueError(f"{name!r} is not a hub name: write hf://OWNER/REPO/PATH (PATH: the SAE's folder).")
    parts = [part for part in name[len(HF_PREFIX):].split("/") if part]
    if len(parts) < 3 or any(part in (".", "..") for part in parts):
        raise ValueError(f"{name!r}: write hf://OWNER/REPO/PATH, where PATH is the SAE's folder in the repository "
                         "(e.g. hf://jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre).")
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached, or ``None`` when it answers.

    One HTTP HEAD request, bounded by ``timeout`` seconds in all (name lookup included): any HTTP
    answer, even an error status, counts as reachable.
    """
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as err:  # URLError, timeouts, refused connections, failed name lookups
            outcome.append(f"{endpoint} did not answer ({getattr(err, 'reason', err)})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"{endpoint} did not answer within {timeout:g} s"


def download_sae(repo_id: str, path: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 timeout: float = HUB_PROBE_TIMEOUT) -> Path:
    """The local folder of the SAE at ``path`` in hub repository ``repo_id``: from the Hugging Face
    cache when it is there, else downloaded into it (only that folder's ``cfg.json`` and weights)."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise ImportError(f"Loading a published SAE needs huggingface_hub ({error}): pip install huggingface_hub"
                          ) from None
    patterns = [f"{path}/{name}" for name in SAE_FILES]
    where = f"hf://{repo_id}/{path}" + (f" (revision {revision})" if revision else "")
    try:  # the cache first: no network when the SAE was fetched before
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir,
                                        local_files_only=True)) / path
        if all((folder / name).is_file() for name in SAE_FILES):
            return folder
    except LocalEntryNotFoundError:
        pass
    cache = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        raise OSError(f"Cannot load the SAE {where}: HF_HUB_OFFLINE is set and the Hugging Face cache ({cache}) does "
                      "not hold it. Unset HF_HUB_OFFLINE on a machine with network access to download it once (in "
                      "Colab it is there), or pass the path of a local SAE folder.")
    reason = hub_unreachable(timeout)
    if reason is not None:
        raise OSError(f"Cannot load the SAE {where}: it is downloaded from the Hugging Face hub, and {reason}; the "
                      f"cache ({cache}) does not hold it. Connect to the network (in Colab it is there), or pass the "
                      "path of a local SAE folder.")
    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)) / path
    missing = [name for name in SAE_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{where}: the repository has no {', '.join(missing)} under {path!r}. Check the path "
                                "(SAELens's list of releases gives each SAE's repository and path).")
    return folder
