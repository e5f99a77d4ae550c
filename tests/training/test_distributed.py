"""Data-parallel training under torchrun (2 CPU processes, gloo) against single-process training.

Both train in float64 on the same global batches, so the only difference is the order in which
the two processes' gradients (and whole-batch statistics) are added: the parameters agree to
1e-9 relative (observed: about 1e-14), far below any effect of training.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from sae_helpers import load_sae, train_sae, train_saes
from sae_helpers.distributed import (
    SINGLE,
    World,
    all_gather,
    all_max,
    all_mean_,
    all_sum,
    batch_group,
    over_batch_group,
)
from tests.training.distributed_worker import options, sweep_configs

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
ARCHS = ["relu", "gated", "topk", "batchtopk", "jumprelu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Sparse non-negative combinations of 32 directions in R^16: SAEs learn them, latents die."""
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(32, 16, generator=gen, dtype=torch.float64), dim=1)
    codes = torch.rand(4096, 32, generator=gen, dtype=torch.float64) * (torch.rand(4096, 32, generator=gen) < 0.1)
    path = tmp_path_factory.mktemp("ddp") / "activations.safetensors"
    save_file({"activations": (codes @ features).float().contiguous()}, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(data: Path, out: Path, arch: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), str(WORKER), str(data), str(out), arch, *extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def assert_same_parameters(a, b, rtol: float) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        scale = max(float(y.abs().max()), 1e-12)
        assert float((x - y).abs().max()) <= rtol * scale, f"{name}: differs by {float((x - y).abs().max()):.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_two_processes_train_the_single_process_sae(data, tmp_path, arch):
    torchrun(data, tmp_path / "ddp", arch)
    distributed = load_sae(tmp_path / "ddp" / "sae")
    single = train_sae(str(data), arch, progress=False, device="cpu", **options(arch))
    assert distributed.training_config["world_size"] == 2 and single.training_config["world_size"] == 1
    assert_same_parameters(distributed, single, rtol=1e-9)
    # The log too: every logged value is a statistic of the whole batch.
    for got, want in zip(distributed.training_log, single.training_log, strict=True):
        assert got.keys() == want.keys() and got["step"] == want["step"]
        assert {k: v for k, v in got.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in want.items() if isinstance(v, float)}, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("parallel", ["configs", "data"])
def test_a_sweep_over_two_processes_trains_the_single_process_saes(data, tmp_path, parallel):
    torchrun(data, tmp_path / "ddp", "batchtopk", "--sweep", parallel)
    single = train_saes(str(data), sweep_configs("batchtopk"), out_dir=tmp_path / "single", progress=False,
                        device="cpu")
    table = pd.read_csv(tmp_path / "ddp" / "results.csv")
    assert list(table["name"]) == list(single.results["name"])
    for name in table["name"]:
        got, want = load_sae(tmp_path / "ddp" / name / "sae"), load_sae(tmp_path / "single" / name / "sae")
        assert_same_parameters(got, want, rtol=0.0 if parallel == "configs" else 1e-9)
        assert got.training_config["world_size"] == (1 if parallel == "configs" else 2)
    for column in ("train_l0", "train_fvu", "train_loss", "near_initial_fraction"):
        assert table[column].to_numpy() == pytest.approx(single.results[column].to_numpy(), rel=1e-9), column


def test_a_rank_killed_mid_run_resumes_to_the_uninterrupted_sae(data, tmp_path):
    torchrun(data, tmp_path / "whole", "batchtopk")
    crashed = torchrun(data, tmp_path / "crash", "batchtopk", "--die-at", "11", check=False)
    assert crashed.returncode != 0 and not (tmp_path / "crash" / "sae").exists()
    assert (tmp_path / "crash" / "checkpoint").is_dir()
    torchrun(data, tmp_path / "crash", "batchtopk", "--resume")
    assert_same_parameters(load_sae(tmp_path / "crash" / "sae"), load_sae(tmp_path / "whole" / "sae"), rtol=0.0)


def test_resuming_on_another_number_of_processes_is_refused(data, tmp_path):
    torchrun(data, tmp_path / "crash", "relu", "--die-at", "5", check=False)
    with pytest.raises(ValueError, match=r"2 process\(es\); this one runs on 1.*--nproc-per-node 2"):
        train_sae(str(data), "relu", checkpoint_dir=tmp_path / "crash", resume=True, progress=False, device="cpu",
                  **options("relu"))


def test_processes_with_different_data_are_refused(data, tmp_path):
    other = tmp_path / "other.safetensors"
    from safetensors.torch import load_file

    save_file({"activations": load_file(str(data))["activations"][:2048].contiguous()}, str(other))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = ("import os, sys\nfrom sae_helpers import train_sae\n"
              "from tests.training.distributed_worker import options\n"
              "data = sys.argv[1] if os.environ['RANK'] == '0' else sys.argv[2]\n"
              "train_sae(data, 'relu', progress=False, device='cpu', **options('relu'))\n")
    (tmp_path / "mismatch.py").write_text(script)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", str(free_port()), str(tmp_path / "mismatch.py"), str(data),
                           str(other)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "The processes disagree on the data" in done.stderr


def _torchrun_script(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", str(free_port()), str(path), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_checkpoints_not_shared_by_every_process_are_refused_before_training(data, tmp_path):
    """Run directories on a disk only one process sees: process 0 finds the checkpoint (or the
    finished run) and process 1 does not. Both stop at once with the reason, instead of one
    waiting for the other until gloo's timeout."""
    import shutil

    torchrun(data, tmp_path / "crash", "relu", "--die-at", "5", check=False)
    torchrun(data, tmp_path / "whole", "relu")
    script = ("import os, sys\nfrom sae_helpers import train_sae\n"
              "from tests.training.distributed_worker import options\n"
              "out = os.path.join(sys.argv[2], 'rank' + os.environ['RANK'])\n"
              "train_sae(sys.argv[1], 'relu', checkpoint_dir=out, resume=True, progress=False, device='cpu', "
              "**options('relu'))\n")
    for source in ("crash", "whole"):
        local = tmp_path / f"local-{source}"
        shutil.copytree(tmp_path / source, local / "rank0")  # only process 0's disk holds the run
        done = _torchrun_script(tmp_path, script, str(data), str(local))
        assert done.returncode != 0
        assert "The processes disagree on where each run starts" in done.stderr
        assert "a filesystem every process shares" in done.stderr


def test_a_sweep_over_configs_refuses_processes_with_other_evaluation_data(data, tmp_path):
    from safetensors.torch import load_file

    other = tmp_path / "other.safetensors"
    save_file({"activations": load_file(str(data))["activations"][:1024].contiguous()}, str(other))
    script = ("import os, sys\nfrom sae_helpers import train_saes\n"
              "from tests.training.distributed_worker import sweep_configs\n"
              "evaluation = sys.argv[1] if os.environ['RANK'] == '0' else sys.argv[2]\n"
              "train_saes(sys.argv[1], sweep_configs('relu'), out_dir=sys.argv[3], eval_activations=evaluation, "
              "parallel='configs', progress=False, device='cpu')\n")
    done = _torchrun_script(tmp_path, script, str(data), str(other), str(tmp_path / "out"))
    assert done.returncode != 0 and "The processes disagree on the data, the configurations, the data order " \
                                    "and the evaluation data" in done.stderr


def test_a_batch_that_does_not_split_evenly_is_refused(data, tmp_path):
    from sae_helpers.data.sources import as_source
    from sae_helpers.training import TrainConfig
    from sae_helpers.training.loop import drive
    from sae_helpers.training.run import TrainingRun

    source = as_source(str(data))
    cfg = TrainConfig.from_dict({"arch": "relu", "width": 8, "steps": 2, "l1_coefficient": 1.0, "batch_size": 63,
                                 "init_sample_size": 64})
    run = TrainingRun.start(cfg, source.sample(64, 0), torch.device("cpu"), world=World(0, 2))
    with pytest.raises(ValueError, match="batch_size=63 is the global batch, split evenly over 2 processes"):
        drive([run], source, 0, progress=False)


def test_one_process_communicates_nothing():
    x = torch.arange(6.0).reshape(2, 3)
    assert batch_group() == SINGLE and not SINGLE.distributed and SINGLE.is_main
    assert all_sum(x, SINGLE) is x and all_max(x, SINGLE) is x and all_gather(x, SINGLE) is x
    y = x.clone()
    all_mean_([y], SINGLE)
    assert torch.equal(x, y)
    with over_batch_group(World(1, 4)):
        assert batch_group() == World(1, 4)
    assert batch_group() == SINGLE
