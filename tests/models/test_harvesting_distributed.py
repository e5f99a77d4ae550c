"""A harvest under torchrun (2 CPU processes, gloo) writes exactly the single-process caches.

Each process computes every other batch of windows and process 0 writes, so the caches must be the
same files byte for byte: both runs use one thread per process (OMP_NUM_THREADS=1), so each batch
goes through the same kernels in both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_helpers import load_sae
from sae_helpers.data.cache import CacheSource
from tests.models.harvest_worker import N_TOKENS, SITES
from tests.training.test_distributed import assert_same_parameters, free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("harvest_worker.py")


def run(out: Path, *extra: str, processes: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    """The worker in one process, or in ``processes`` under torchrun."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
                 "127.0.0.1", "--master-port", str(free_port())] if processes > 1 else [sys.executable])
    done = subprocess.run([*launcher, str(WORKER), str(out), *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and done.returncode:
        raise AssertionError(f"the harvest failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def cache_files(root: Path) -> dict[str, bytes]:
    """Every file of every site's cache (manifests and shards), by relative path."""
    return {str(path.relative_to(root)): path.read_bytes()
            for site in SITES for path in sorted((root / site).iterdir())}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harvest") / "single"
    run(out, processes=1)
    return out


def test_two_processes_write_the_single_process_caches_byte_for_byte(single, tmp_path):
    run(tmp_path / "ddp")
    got, want = cache_files(tmp_path / "ddp"), cache_files(single)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
    source = CacheSource(tmp_path / "ddp" / SITES[0])
    assert source.n == N_TOKENS and len(source.shards) == -(-N_TOKENS // 64)
    # The outlier filter dropped rows (batches held different numbers of rows): more than 4 windows' worth.
    last = source.load_shard(len(source.shards) - 1)
    windows_read = int(last["first_window"]) + int(last["positions"][-1]) // 16 + 1
    assert windows_read * 15 - N_TOKENS > 4 * 15


def test_a_process_killed_mid_harvest_resumes_to_the_same_caches(single, tmp_path):
    crashed = run(tmp_path / "crash", "--die-at", "6", check=False)
    assert crashed.returncode != 0 and "Signal 9 (SIGKILL)" in crashed.stderr
    partial = CacheSource(tmp_path / "crash" / SITES[0])
    assert 0 < partial.n < N_TOKENS and not partial.manifest["complete"]
    run(tmp_path / "crash")
    assert cache_files(tmp_path / "crash") == cache_files(single)


def test_a_distributed_harvest_resumes_in_one_process_and_back(single, tmp_path):
    crashed = run(tmp_path / "mixed", "--die-at", "9", processes=1, check=False)
    assert crashed.returncode == -9
    assert 0 < CacheSource(tmp_path / "mixed" / SITES[0]).n < N_TOKENS
    run(tmp_path / "mixed")
    assert cache_files(tmp_path / "mixed") == cache_files(single)


def test_processes_asking_for_different_caches_are_refused(tmp_path):
    done = run(tmp_path / "bad", "--mismatch", "--n-tokens", "900", check=False)
    assert done.returncode != 0
    assert "The processes disagree on the harvest's settings" in done.stderr
    assert "n_tokens_requested" in done.stderr
    assert not (tmp_path / "bad").exists()


def test_harvest_then_train_under_torchrun_matches_one_process(tmp_path):
    """End to end: a distributed harvest, then data-parallel training on its cache, against both in one process."""
    run(tmp_path / "ddp", "--train")
    run(tmp_path / "one", "--train", processes=1)
    assert cache_files(tmp_path / "ddp") == cache_files(tmp_path / "one")
    distributed, single = load_sae(tmp_path / "ddp" / "run" / "sae"), load_sae(tmp_path / "one" / "run" / "sae")
    assert distributed.training_config["world_size"] == 2 and single.training_config["world_size"] == 1
    assert_same_parameters(distributed, single, rtol=1e-9)
