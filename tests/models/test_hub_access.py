"""A named (hub) model fails in seconds, with a clear message, when it cannot be had offline.

No test reaches the network: in-process the conftest's socket guard refuses every connection
(and records none here, since the probe's attempt is expected, see ``allow_probe``); the
subprocess test points ``HF_ENDPOINT`` at a local socket that accepts and never answers.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sae_helpers.models import loading

TIME_LIMIT = 15.0  # seconds, generous for a loaded machine; the probe itself is bounded by 3 s


@pytest.fixture
def allow_probe(no_network):
    """The probe's refused connection attempts are expected here: clear them before the guard checks."""
    yield
    no_network.clear()


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def test_unreachable_hub_fails_at_once_with_the_fixes(empty_hf_cache, allow_probe):
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        loading.load_model("gpt2", device="cpu")
    assert time.monotonic() - start < TIME_LIMIT
    message = str(info.value)
    for part in ("'gpt2'", "did not answer", "not in the cache", "HF_HUB_OFFLINE=1", "'smollm2-135m'"):
        assert part in message, (part, message)


def test_offline_mode_without_the_model_in_the_cache(empty_hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE is set and the Hugging Face cache .* has no 'gpt2'"):
        loading.load_model("gpt2", device="cpu")
    assert time.monotonic() - start < TIME_LIMIT


def test_a_cached_model_is_named_when_the_hub_is_unreachable(empty_hf_cache, allow_probe):
    snapshot = empty_hf_cache / "models--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_hf_cache / "models--gpt2" / "refs").mkdir()
    (empty_hf_cache / "models--gpt2" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(OSError, match="is in the cache .*set HF_HUB_OFFLINE=1 to load it from there"):
        loading.load_model("gpt2", device="cpu")


def test_a_silent_hub_in_a_fresh_process(tmp_path):
    """The whole path in a fresh Python, with a hub that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    script = textwrap.dedent("""
        import time
        import sae_helpers as sh
        start = time.monotonic()
        try:
            sh.load_model("gpt2", device="cpu")
        except OSError as err:
            print(f"{time.monotonic() - start:.2f}")
            print(err)
        else:
            print("loaded")
    """)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("HF_HUB_OFFLINE", None)
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr
    seconds, message = done.stdout.split("\n", 1)
    assert float(seconds) < TIME_LIMIT, done.stdout
    assert f"http://127.0.0.1:{port} did not answer" in message and "HF_HUB_OFFLINE=1" in message, message


def test_a_local_folder_is_not_checked_against_the_hub(tmp_path, empty_hf_cache):
    loading.check_hub_access(str(tmp_path))  # no probe, no error: nothing to download


def test_an_invalid_repository_id_still_fails_fast(empty_hf_cache, allow_probe):
    with pytest.raises(OSError, match="did not answer"):
        loading.check_hub_access("not//a valid id")
