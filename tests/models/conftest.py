"""Tests of sae_helpers.models: no test may reach the network.

Every test here runs with ``socket.connect`` and ``getaddrinfo`` replaced by functions
that record the attempt and fail, and the test fails if anything was attempted.
"""

import socket

import pytest
import torch

from sae_helpers.models import tiny_model


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    attempts = []

    def refuse_connect(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted in a test: {address}")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"network access attempted in a test: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse_connect(None, address))
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture
def tokens(model):
    """Ten sequences of 12 random ids, each starting with the BOS id."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.cfg.d_vocab, (10, 12), generator=generator)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids
