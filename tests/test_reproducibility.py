"""The device parameter: "auto" -> CUDA when available, else CPU; a default set once places models and SAEs."""

import pytest
import torch

from sae_helpers import reproducibility
from sae_helpers.reproducibility import default_device, resolve_device, select_device, set_default_device


@pytest.fixture(autouse=True)
def reset_default():
    yield
    set_default_device(None)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend there are two CUDA devices (no tensor is created on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_is_cuda_when_available(fake_cuda):
    assert select_device("auto") == torch.device("cuda")
    assert select_device(None) == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("cuda:1") == torch.device("cuda:1")


def test_auto_is_cpu_without_cuda(no_cuda):
    assert select_device("auto") == torch.device("cpu")
    assert default_device() == torch.device("cpu")


def test_missing_devices_are_clear_errors(no_cuda):
    with pytest.raises(ValueError, match="CUDA is not available here"):
        select_device("cuda")
    with pytest.raises(ValueError, match="is not a device"):
        select_device("gpu0")


def test_missing_cuda_index(fake_cuda):
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        select_device("cuda:2")


def test_set_default_device_is_used_by_training_and_loading(fake_cuda):
    assert default_device() == torch.device("cuda")
    assert set_default_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")   # an explicit device still wins
    from sae_helpers.training import train

    assert train.resolve_device(None) == torch.device("cpu")
    assert set_default_device(None) == torch.device("cuda")  # back to automatic


def test_environment_report_names_the_device_in_use(no_cuda):
    set_default_device("cpu")
    assert reproducibility.environment_report()["device"] == "cpu"
