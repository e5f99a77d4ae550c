"""sae_helpers.kernels.threads: whole small steps on one thread, chosen by shape alone."""

from __future__ import annotations

import pytest
import torch

from sae_helpers import SyntheticFeatures, train_sae
from sae_helpers.kernels import threads
from sae_helpers.kernels.threads import ONE_THREAD_BELOW, step_work, threads_for
from sae_helpers.training import TrainingRun


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_step_work_sums_the_encoder_matmuls() -> None:
    assert step_work(512, [(32, 64)]) == 512 * 32 * 64
    assert step_work(512, [(576, 864), (576, 1296)]) == 512 * 576 * (864 + 1296)


def test_small_work_runs_on_one_thread_and_restores_the_setting(two_threads) -> None:
    with threads_for(ONE_THREAD_BELOW - 1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"), threads_for(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2  # restored after an error too
    for work, device in ((ONE_THREAD_BELOW, "cpu"), (1, "meta")):  # large work; not the CPU
        with threads_for(work, device) as used:
            assert used == 2 and torch.get_num_threads() == 2


def test_training_a_small_sae_steps_on_one_thread(two_threads, monkeypatch) -> None:
    seen: list[int] = []
    original = TrainingRun.step
    monkeypatch.setattr(TrainingRun, "step",
                        lambda self, *a: seen.append(torch.get_num_threads()) or original(self, *a))
    x = SyntheticFeatures(d=16, n_features=32, firing_prob=0.1).sample(2000, seed=0).x
    small = train_sae(x, "relu", 32, 1.0, 5, batch_size=256, progress=False, init_sample_size=512)
    assert seen == [1] * 5 and torch.get_num_threads() == 2
    seen.clear()
    monkeypatch.setattr(threads, "ONE_THREAD_BELOW", 0)  # as if the step were large
    large = train_sae(x, "relu", 32, 1.0, 5, batch_size=256, progress=False, init_sample_size=512)
    assert seen == [2] * 5
    torch.testing.assert_close(small.W_dec, large.W_dec)  # the same training, whatever the thread count
