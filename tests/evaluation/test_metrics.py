"""Metrics against closed forms and direct float64 computations."""

import math

import numpy as np
import pytest
import torch

from sae_helpers import create_sae, evaluate, mmcs
from sae_helpers.evaluation import log10_density_histogram


def scaled_identity_sae(d: int, c: float):
    """A ReLU SAE with latents [relu(x), relu(-x)] whose reconstruction is exactly c * x."""
    sae = create_sae("relu", d, 2 * d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(c * torch.cat([eye, -eye], 0))
    return sae


@pytest.mark.parametrize("c", [1.0, 0.7])
def test_closed_forms_for_a_shrunk_identity(c):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 5, generator=gen, dtype=torch.float64) + 3.0
    res = evaluate(scaled_identity_sae(5, c), x, batch_size=128)
    assert res["relative_reconstruction_bias"] == pytest.approx(c, rel=1e-12)
    variance = ((x - x.mean(0)) ** 2).sum(1).mean().item()
    expected_fvu = (1 - c) ** 2 * (x**2).sum(1).mean().item() / variance
    assert res["fvu"] == pytest.approx(expected_fvu, rel=1e-9, abs=1e-12)
    assert res["explained_variance"] == pytest.approx(1 - expected_fvu, rel=1e-9, abs=1e-12)
    assert res["mse"] == pytest.approx((1 - c) ** 2 * (x**2).mean().item(), rel=1e-9, abs=1e-15)
    assert res["l0"] == 5.0  # exactly one of relu(x_i), relu(-x_i) is non-zero
    assert res["n_tokens"] == 1000


def test_metrics_match_direct_computation_and_ignore_batch_size():
    gen = torch.Generator().manual_seed(1)
    sae = create_sae("gated", 8, 32).init_weights(gen)
    with torch.no_grad():
        sae.b_gate.copy_(torch.linspace(-5.0, 0.5, 32))
    x = torch.randn(3000, 8, generator=gen)
    f = sae.encode(x).double()
    x_hat = sae.decode(sae.encode(x)).double()
    xd = x.double()
    density = (f != 0).double().mean(0)
    direct = {
        "l0": (f != 0).double().sum(1).mean().item(),
        "fvu": ((xd - x_hat) ** 2).sum(1).mean().item() / ((xd - xd.mean(0)) ** 2).sum(1).mean().item(),
        "relative_reconstruction_bias": (x_hat**2).sum(1).mean().item() / (x_hat * xd).sum(1).mean().item(),
        "dead_fraction": (density == 0).double().mean().item(),
        "dense_fraction": (density > 0.1).double().mean().item(),
    }
    for batch_size in (7, 1000, 5000):
        res = evaluate(sae, x, batch_size=batch_size, return_density=True)
        for key, value in direct.items():
            assert res[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
        np.testing.assert_allclose(res["feature_density"], density.numpy())
    assert 0 < direct["dead_fraction"] < 1 and 0 < direct["dense_fraction"] < 1


def test_dead_and_dense_fractions():
    sae = scaled_identity_sae(4, 1.0)
    x = torch.ones(100, 4, dtype=torch.float64)  # only the relu(x) half fires
    res = evaluate(sae, x)
    assert res["dead_fraction"] == 0.5 and res["dense_fraction"] == 0.5
    assert math.isnan(res["fvu"])  # no variance: FVU is undefined, reported as NaN


def test_evaluate_refuses_width_mismatch():
    with pytest.raises(ValueError, match="width mismatch.*d_in=4.*width 3"):
        evaluate(scaled_identity_sae(4, 1.0), torch.randn(10, 3, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer \\(rows per batch, e.g. 4096\\), got 0"),
    ({"batch_size": "64"}, "batch_size must be a positive integer .*got '64'"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer .*got 2.5"),
    ({"max_tokens": 0}, "max_tokens must be a positive integer or None \\(all rows\\), got 0"),
])
def test_evaluate_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=f"evaluate: {message}"):
        evaluate(scaled_identity_sae(4, 1.0), torch.randn(10, 4, dtype=torch.float64), **kwargs)


def test_mmcs():
    gen = torch.Generator().manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(20, 16, generator=gen), dim=1)
    shuffled = 3.0 * feats[torch.randperm(20, generator=gen)]
    assert mmcs(feats, shuffled) == pytest.approx(1.0)
    assert mmcs(feats, torch.cat([shuffled[:10], -shuffled[10:]])) < 0.8
    eye = torch.eye(4)
    assert mmcs(eye[:2], eye[2:]) == pytest.approx(0.0)


def test_density_histogram_counts_dead_separately():
    counts, edges, n_dead = log10_density_histogram(np.array([0, 0, 1e-3, 1e-2, 0.5]), bins=3)
    assert n_dead == 2 and counts.sum() == 3
    assert edges[0] == pytest.approx(-3) and edges[-1] == pytest.approx(math.log10(0.5))
