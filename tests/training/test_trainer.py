"""train_sae: determinism, exact resume, checkpoints, scaling, errors."""

import hashlib
import json
import shutil

import pytest
import torch

from sae_helpers import SyntheticFeatures, train_sae
from sae_helpers.training import TrainingRun
from tests.training.crashes import crashes_at

SYN = SyntheticFeatures(d=16, n_features=32, firing_prob=0.08)
X = SYN.sample(4000, seed=0).x
L1 = 30.0  # strong enough that latents die and get resampled
FAST = {"batch_size": 256, "lr": 3e-3, "progress": False, "init_sample_size": 1024}


def params(sae):
    return {n: p.detach().clone() for n, p in sae.named_parameters()}


def assert_same(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_same_seed_same_sae_and_different_seed_differs(arch):
    a = train_sae(X, arch, 48, 0.5, 30, seed=1, **FAST)
    b = train_sae(X, arch, 48, 0.5, 30, seed=1, **FAST)
    c = train_sae(X, arch, 48, 0.5, 30, seed=2, **FAST)
    assert_same(a, b)
    assert not torch.equal(a.W_dec, c.W_dec)
    assert a.training_log == b.training_log


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_resume_equals_an_uninterrupted_run(arch, tmp_path):
    # Resampling every 10 steps with a 5-step dead window exercises the RNG and Adam resets.
    opts = {**FAST, "lr": 0.03, "resample_every": 10, "dead_after": 5, "resample_lr_warmup_steps": 8}
    whole = train_sae(X, arch, 48, L1, 60, checkpoint_dir=tmp_path / "whole", **opts)

    with crashes_at(37):
        train_sae(X, arch, 48, L1, 60, checkpoint_dir=tmp_path / "run", checkpoint_every=15, **opts)
    info = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert info["step"] == 30  # the last complete checkpoint survived the crash
    resumed = train_sae(X, arch, 48, L1, 60, checkpoint_dir=tmp_path / "run", resume=True, **opts)
    assert whole.training_log[-1]["n_resampled"] > 0
    assert_same(whole, resumed)
    assert resumed.training_log == whole.training_log
    # A finished run resumes to the same SAE at once.
    again = train_sae(X, arch, 48, L1, 60, checkpoint_dir=tmp_path / "run", resume=True, **opts)
    assert_same(whole, again)


def test_resume_recovers_the_checkpoint_a_crashed_swap_left_aside(tmp_path):
    opts = {**FAST, "resample_every": 10, "dead_after": 5}
    whole = train_sae(X, "relu", 32, 1.0, 40, **opts)
    original = TrainingRun.step
    for state in ("between the renames", "before deleting the old copy"):
        run = tmp_path / state.replace(" ", "_")
        with crashes_at(25):
            train_sae(X, "relu", 32, 1.0, 40, checkpoint_dir=run, checkpoint_every=10, **opts)
        # What a kill -9 in atomic_replace_dir leaves: the complete step-20 checkpoint moved aside,
        # a half-built new one, a temporary log file.
        if state == "between the renames":
            (run / "checkpoint").rename(run / ".checkpoint.old")
        else:
            shutil.copytree(run / "checkpoint", run / ".checkpoint.old")
        (run / ".checkpoint.x1y2.tmp").mkdir()
        (run / ".checkpoint.x1y2.tmp" / "state.safetensors").write_bytes(b"half")
        (run / ".training_log.json.abc.tmp").write_text("[")
        steps = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TrainingRun, "step",
                          lambda self, *a, steps=steps: steps.append(self.step_count) or original(self, *a))
            resumed = train_sae(X, "relu", 32, 1.0, 40, checkpoint_dir=run, resume=True, **opts)
        assert steps[0] == 20, state  # continued from the saved step, not from 0
        assert_same(whole, resumed)
        assert resumed.training_log == whole.training_log
        assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint", "sae", "training_log.json"], state


def test_resume_refuses_another_configuration(tmp_path):
    train_sae(X, "gated", 32, 1.0, 10, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="different configuration.*l1_coefficient: checkpoint 1.0, now 2.0"):
        train_sae(X, "gated", 32, 2.0, 10, checkpoint_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(ValueError, match="activation width: checkpoint 16, now 8"):
        train_sae(X[:, :8].contiguous(), "gated", 32, 1.0, 10, checkpoint_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(FileExistsError, match="already holds a checkpoint.*resume=True"):
        train_sae(X, "gated", 32, 1.0, 10, checkpoint_dir=tmp_path, **FAST)


def test_resume_refuses_other_data_of_the_same_width(tmp_path):
    other = SYN.sample(4000, seed=1).x
    with crashes_at(12):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / "part", checkpoint_every=5, **FAST)
    train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / "done", **FAST)
    for run in ("part", "done"):  # an unfinished run, and a finished one (which used to return the old SAE)
        with pytest.raises(ValueError, match=f"checkpoint in .*{run} was trained on other data .*new checkpoint_dir"):
            train_sae(other, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / run, resume=True, **FAST)
        with pytest.raises(ValueError, match="other data"):  # a file of other rows, or other rows of the same data
            train_sae(X[:3000], "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / run, resume=True, **FAST)
    # A checkpoint with no record of its data is refused, never resumed on whatever data is given.
    trainer = tmp_path / "part" / "checkpoint" / "trainer.json"
    state = tmp_path / "part" / "checkpoint" / "state.safetensors"
    info = json.loads(trainer.read_text())
    del info["data"]
    text = json.dumps(info, indent=1) + "\n"
    trainer.write_text(text)
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(state)), str(state), metadata={"trainer_sha256": hashlib.sha256(text.encode()).hexdigest()})
    with pytest.raises(ValueError, match="has no record of the data it was trained on"):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / "part", resume=True, **FAST)


def test_a_hand_edited_checkpoint_is_refused(tmp_path):
    with crashes_at(12):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path, checkpoint_every=5, **FAST)
    trainer = tmp_path / "checkpoint" / "trainer.json"
    info = json.loads(trainer.read_text())
    info["scale"] = info["scale"] * 2  # the activation scale, edited
    trainer.write_text(json.dumps(info, indent=1) + "\n")
    with pytest.raises(ValueError, match="trainer.json is not the one written with .*state.safetensors"):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path, resume=True, **FAST)
    assert not (tmp_path / "sae").exists()  # nothing was overwritten


def test_outputs_written_beside_the_checkpoint(tmp_path):
    sae = train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path, **FAST)
    assert (tmp_path / "sae" / "cfg.json").is_file()
    assert json.loads((tmp_path / "sae" / "training_config.json").read_text())["l1_coefficient"] == 1.0
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log == sae.training_log and log[-1]["step"] == 20
    assert {"loss", "reconstruction", "sparsity", "l0", "fvu", "dead_fraction", "lr"} <= set(log[-1])


def test_returned_sae_takes_raw_activations():
    """Training on 1000x the data gives the same SAE up to the scale (folded back)."""
    a = train_sae(X, "gated", 32, 1.0, 15, **FAST)
    b = train_sae(1000 * X, "gated", 32, 1.0, 15, **FAST)
    torch.testing.assert_close(b.encode(1000 * X[:200]), 1000 * a.encode(X[:200]), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(b.W_dec, a.W_dec, rtol=1e-3, atol=1e-4)


def test_decoder_rows_are_unit_norm_after_training():
    sae = train_sae(X, "gated", 32, 1.0, 25, **FAST)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_iterables_and_files_train(tmp_path):
    from safetensors.torch import save_file

    save_file({"activations": X}, str(tmp_path / "acts.safetensors"))
    from_file = train_sae(tmp_path / "acts.safetensors", "relu", 16, 1.0, 5, **FAST)
    from_tensor = train_sae(X, "relu", 16, 1.0, 5, **FAST)
    assert_same(from_file, from_tensor)
    chunks = list(X.split(100))
    train_sae(chunks, "relu", 16, 1.0, 30, **FAST)  # 4000 rows looped over for 7680


@pytest.mark.parametrize("kwargs, error, message", [
    ({"arch": "nope"}, ValueError, "Unknown SAE architecture 'nope'"),
    ({"arch": "jumprelu"}, ValueError, "'jumprelu' does not use l1_coefficient \\(use l0_coefficient"),
    ({"arch": "topk", "l1_coefficient": None}, ValueError, "'topk' needs k=..."),
    ({"arch": "topk", "l1_coefficient": None, "k": 17}, ValueError, "k must be an integer between 1 and width=16"),
    ({"arch": "relu", "k": 4}, ValueError, "'relu' does not use k \\(use l1_coefficient"),
    ({"arch": "topk", "l1_coefficient": None, "k": 4, "sae_options": {"kk": 1}}, ValueError,
     "sae_options: 'kk' is not an option of architecture 'topk'; its options: aux_k \\(int\\), aux_k_coefficient"),
    ({"arch": "topk", "l1_coefficient": None, "k": 4, "sae_options": {"aux_k": 2.5}}, ValueError,
     "sae_options: aux_k of architecture 'topk' must be int, got 2.5"),
    ({"arch": "jumprelu", "l1_coefficient": None, "l0_coefficient": 1.0, "sae_options": {"bandwidth": "0.1"}},
     ValueError, "sae_options: bandwidth of architecture 'jumprelu' must be float, got '0.1'"),
    ({"sae_options": {"aux_k": 4}}, ValueError, "'aux_k' is not an option of architecture 'relu'; its options: none"),
    ({"steps": None}, ValueError, "train_sae needs steps="),
    ({"width": 0}, ValueError, "width must be a positive integer"),
    ({"steps": -1}, ValueError, "steps must be a positive integer"),
    ({"l1_coefficient": -1.0}, ValueError, "l1_coefficient must be >= 0"),
    ({"warmup": 5}, ValueError, "Unknown training option\\(s\\) \\['warmup'\\]"),
    ({"resume": True}, ValueError, "resume=True needs a checkpoint_dir"),
    ({"resample_every": -1}, ValueError, "resample_every must be an integer >= 0 \\(steps between resamplings"),
    ({"dead_after": 0}, ValueError, "dead_after must be an integer >= 1 \\(steps without firing"),
    ({"lr_warmup_steps": -5}, ValueError, "lr_warmup_steps must be an integer >= 0"),
    ({"l1_warmup_steps": -1}, ValueError, "l1_warmup_steps must be an integer >= 0"),
    ({"resample_lr_warmup_steps": -1}, ValueError, "resample_lr_warmup_steps must be an integer >= 0"),
    ({"dead_after": 2.5}, ValueError, "dead_after must be an integer >= 1"),
    ({"lr": "3e-4"}, ValueError, "lr must be a finite number, got '3e-4' \\(str\\); pass e.g. lr=float"),
    ({"l1_coefficient": "1.0"}, ValueError, "l1_coefficient must be a finite number, got '1.0' \\(str\\)"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number, got nan"),
    ({"seed": "0"}, ValueError, "seed must be an integer \\(e.g. seed=0\\), got '0' \\(str\\)"),
    ({"seed": 0.5}, ValueError, "seed must be an integer \\(e.g. seed=0\\), got 0.5 \\(float\\)"),
    ({"adam_beta2": 2}, ValueError, "adam_beta2 must be in \\[0, 1\\) \\(a decay rate, e.g. 0.999; adam_beta2=None"),
    ({"adam_beta2": "0.9"}, ValueError, "adam_beta2 must be a finite number, got '0.9'"),
    ({"device": "gpu"}, ValueError, "device='gpu' is not a device: pass 'cpu', 'cuda'"),
])
def test_bad_arguments(kwargs, error, message):
    args = {"arch": "relu", "width": 16, "l1_coefficient": 1.0, "steps": 5, **FAST, **kwargs}
    with pytest.raises(error, match=message):
        train_sae(X, **args)


def test_nan_activations_are_reported_with_their_position():
    bad = X.clone()
    bad[123, 4] = float("nan")
    with pytest.raises(ValueError, match="row 123, column 4"):
        train_sae(bad, "relu", 16, 1.0, 5, **FAST)


def test_a_one_shot_generator_that_runs_out():
    def gen():
        yield from X[:1000].split(100)

    with pytest.raises(ValueError, match="ran out after 3 of 10 steps"):
        train_sae(gen(), "relu", 16, 1.0, 10, **FAST)


def test_jumprelu_thresholds_get_their_own_learning_rate_scale():
    from sae_helpers.training import TrainConfig, TrainingRun

    cfg = TrainConfig(arch="jumprelu", width=16, steps=10, l0_coefficient=1.0, batch_size=64, lr=1e-3,
                      sae_options={"threshold_lr_scale": 10.0})
    run = TrainingRun.start(cfg, X[:256], torch.device("cpu"))
    run.step(X[:64])
    by_name = {id(p): n for n, p in run.sae.named_parameters()}
    lrs = {by_name[id(p)]: group["lr"] for group in run.optimizer.param_groups for p in group["params"]}
    assert set(lrs) == set(by_name.values())
    assert lrs["log_threshold"] == pytest.approx(10 * lrs["W_enc"]) and lrs["W_enc"] > 0
    assert all(lr == lrs["W_enc"] for name, lr in lrs.items() if name != "log_threshold")


def test_decoder_drift_is_one_at_the_start_and_falls_with_training():
    from sae_helpers import SyntheticFeatures, create_sae, train_sae
    from sae_helpers.training import decoder_drift

    x = SyntheticFeatures(d=12, n_features=24, firing_prob=0.1).sample(4000, seed=0).x
    common = {"batch_size": 128, "seed": 4, "progress": False}
    barely = train_sae(x, "relu", 32, 1.0, 1, lr=1e-9, **common)
    trained = train_sae(x, "relu", 32, 1.0, 400, lr=1e-2, **common)
    assert decoder_drift(barely).min() > 0.999999
    assert decoder_drift(trained).median() < 0.9
    with pytest.raises(ValueError, match="training_config"):
        decoder_drift(create_sae("relu", 12, 32))


def test_default_adam_beta2_is_sized_to_the_run_and_reaches_the_optimiser():
    from sae_helpers.training.config import TrainConfig

    def beta2(steps, **kw):
        return TrainConfig(arch="relu", width=8, steps=steps, l1_coefficient=1.0, **kw).beta2

    assert beta2(2400) == pytest.approx(1 - 1 / 96)  # a memory of a 25th of the run
    assert beta2(25_000) == beta2(10**6) == pytest.approx(0.999)  # the paper's value for long runs
    assert beta2(50) == pytest.approx(0.9)  # at least a memory of 10 steps
    assert beta2(2400, adam_beta2=0.95) == 0.95  # an explicit value wins
    with pytest.raises(ValueError, match="adam_beta2 must be in"):
        beta2(100, adam_beta2=1.0)
    sae = train_sae(X, "relu", 16, L1, 250, **FAST)  # the public default path
    assert sae.training_config.get("adam_beta2") is None
    run = TrainingRun.start(TrainConfig.from_dict(sae.training_config), X[:512], torch.device("cpu"))
    assert run.optimizer.param_groups[0]["betas"] == (0.0, pytest.approx(0.9))  # 250 // 25 = 10 steps


def _drop_adam(tensors, info):
    return {k: v for k, v in tensors.items() if not k.startswith("adam.")}, info


def _set(name, value):
    return lambda tensors, info: ({**tensors, name: value(tensors[name])}, info)


@pytest.mark.parametrize("tamper, message", [
    (_drop_adam, "tensor\\(s\\) \\['adam.W_enc.step', .*are missing from state.safetensors"),
    (lambda t, i: (t, {**i, "step": 5}), "Adam state has taken \\[10\\] step\\(s\\), the trainer says step 5"),
    (lambda t, i: (t, {**i, "step": 50}), "step is 50, not an integer in \\[0, steps=20\\]"),
    (lambda t, i: (t, {**i, "step": "10"}), "step is '10', not an integer"),
    (lambda t, i: ({k: v for k, v in t.items() if k != "sae.b_enc"}, i), "\\['sae.b_enc'\\] are missing"),
    (lambda t, i: ({k: v for k, v in t.items() if k != "steps_since_fired"}, i), "\\['steps_since_fired'\\] are miss"),
    (_set("sae.W_dec", lambda v: v[:5]), "'sae.W_dec' is torch.float32 \\(5, 16\\), expected float \\(32, 16\\)"),
    (_set("adam.W_enc.exp_avg_sq", lambda v: v[:, :3].contiguous()), "tensor 'adam.W_enc.exp_avg_sq' is .*\\(16, 3\\)"),
    (_set("resample_rng", lambda v: v[:100]), "tensor 'resample_rng' is torch.uint8 \\(100,\\), expected torch.uint8 "
                                              "\\(5056,\\)"),
    (_set("steps_since_fired", lambda v: v.float()), "'steps_since_fired' is torch.float32 .*expected torch.int"),
    (_set("sae.b_dec", lambda v: v.index_fill(0, torch.tensor([0]), float("nan"))), "'sae.b_dec' is not a finite"),
    (lambda t, i: (t, {**i, "scale": -1.0}), "the activation scale is -1.0"),
])
def test_a_tampered_checkpoint_is_refused(tmp_path, tamper, message):
    """A checkpoint whose Adam state was removed, whose step was changed, or that lacks a tensor or
    has a wrong shape does not resume silently, even when its two files agree with each other (the
    state file records the trainer file's sha256: rewritten here as a faulty writer would)."""
    from safetensors.torch import load_file, save_file

    with crashes_at(12):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path, checkpoint_every=10, **FAST)
    state, trainer = tmp_path / "checkpoint" / "state.safetensors", tmp_path / "checkpoint" / "trainer.json"
    tensors, info = tamper(load_file(str(state)), json.loads(trainer.read_text()))
    text = json.dumps(info)
    save_file(tensors, str(state), metadata={"trainer_sha256": hashlib.sha256(text.encode()).hexdigest()})
    trainer.write_text(text)
    with pytest.raises(ValueError, match=f"checkpoint in .* is damaged or was edited: .*{message}.*Delete it"):
        train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda', but CUDA is not available here: pass device='cpu'"):
        train_sae(X, "relu", 16, 1.0, 5, device="cuda", **FAST)


def test_kill_9_during_checkpoint_writes_leaves_a_complete_checkpoint_and_resumes_exactly(tmp_path, monkeypatch):
    """SIGKILL at 25 seeded random moments of a run that checkpoints every step (resumed after each kill,
    started over once finished): the checkpoint on disk is always the complete state of the uninterrupted
    run at some step, the log a prefix of its log, and resuming gives the uninterrupted SAE."""
    from sae_helpers import load_sae
    from sae_helpers.training import checkpoint, lifecycle
    from sae_helpers.training.config import TrainConfig
    from tests.faults import kill_repeatedly

    opts = {**FAST, "resample_every": 10, "dead_after": 5}
    states = {}

    def recording(directory, tensors, info):
        states[info["step"]] = {k: v.detach().clone() for k, v in tensors.items()}
        return checkpoint.write_checkpoint(directory, tensors, info)

    monkeypatch.setattr(lifecycle, "write_checkpoint", recording)
    whole = train_sae(X, "relu", 32, L1, 60, checkpoint_dir=tmp_path / "whole", checkpoint_every=1, **opts)
    monkeypatch.setattr(lifecycle, "write_checkpoint", checkpoint.write_checkpoint)
    cfg = TrainConfig.from_dict({"arch": "relu", "width": 32, "steps": 60, "l1_coefficient": L1, "batch_size": 256,
                                 "lr": 3e-3, "init_sample_size": 1024, "resample_every": 10, "dead_after": 5})
    run = tmp_path / "run"
    setup = (f"from sae_helpers import train_sae\nfrom tests.training.test_trainer import X, FAST, L1\n"
             f"train_sae(X, 'relu', 32, L1, 1, checkpoint_dir={str(tmp_path / 'warm')!r}, **FAST)  # warm up\n"
             f"def work():\n    while True:\n        train_sae(X, 'relu', 32, L1, 60, checkpoint_dir={str(run)!r}, "
             f"resume=True, checkpoint_every=1, **{{**FAST, 'resample_every': 10, 'dead_after': 5}})\n")
    steps, finished = [], []

    def check(_):
        if not checkpoint.has_checkpoint(run):
            return
        tensors, info = checkpoint.read_checkpoint(run)
        TrainingRun.restore(cfg, 16, tensors, info, torch.device("cpu"))  # complete and consistent
        steps.append(info["step"])
        assert tensors.keys() == states[info["step"]].keys()
        for name, value in states[info["step"]].items():
            assert torch.equal(tensors[name], value), (info["step"], name)
        assert info["log"] == whole.training_log[: len(info["log"])]
        if (run / "training_log.json").exists():
            log = json.loads((run / "training_log.json").read_text())
            assert log == whole.training_log[: len(log)]
        if (run / "sae").exists() or (run / ".sae.old").exists():  # finished: the final SAE, then start over
            assert_same(whole, load_sae(run / "sae"))
            finished.append(info["step"])
            shutil.rmtree(run)

    kill_repeatedly(setup, 25, seed=1, max_delay=0.5, check=check, log=tmp_path / "child.err")
    assert len(set(steps)) >= 3  # kills landed at several points of the run (usually some runs finish too)
    resumed = train_sae(X, "relu", 32, L1, 60, checkpoint_dir=run, resume=True, **opts)
    assert_same(whole, resumed)
    assert resumed.training_log == whole.training_log


@pytest.mark.parametrize("arch, sparsity", [("relu", {"l1_coefficient": 1.0}), ("gated", {"l1_coefficient": 1.0}),
                                            ("topk", {"k": 4}), ("batchtopk", {"k": 4}),
                                            ("jumprelu", {"l0_coefficient": 1.0})])
def test_every_architecture_resumes_past_the_checkpoint_checks(tmp_path, arch, sparsity):
    """The consistency checks accept every architecture's genuine checkpoints (BatchTopK's threshold has
    no Adam state: it is a running estimate, not trained)."""
    whole = train_sae(X, arch, 32, steps=20, **sparsity, **FAST)
    with crashes_at(12):
        train_sae(X, arch, 32, steps=20, checkpoint_dir=tmp_path, checkpoint_every=5, **sparsity, **FAST)
    assert_same(whole, train_sae(X, arch, 32, steps=20, checkpoint_dir=tmp_path, resume=True, **sparsity, **FAST))


def test_two_trainings_in_one_directory_refuse_to_share_it(tmp_path):
    """A second train_sae into a directory another process is training in stops at once and names
    that process, instead of failing later on a checkpoint the other one swapped away."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sae_helpers._io import DirectoryBusy

    root = Path(__file__).resolve().parents[2]
    script = ("import torch\nfrom sae_helpers import train_sae\n"
              "x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))\n"
              f"train_sae(x, 'relu', 32, 1.0, 10**6, checkpoint_dir={str(tmp_path / 'run')!r}, batch_size=64, "
              "progress=False)\n")
    other = subprocess.Popen([sys.executable, "-c", script], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        lock, deadline = tmp_path / "run" / ".lock", time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().strip()):
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(DirectoryBusy, match=f"another process \\(pid {other.pid}\\) is training an SAE there"):
            train_sae(X, "relu", 32, 1.0, 20, checkpoint_dir=tmp_path / "run", resume=True, **FAST)
    finally:
        other.kill()
        other.wait()
