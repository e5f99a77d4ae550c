"""JumpReLU training: the straight-through estimators against their definitions (float64)."""

import math

import pytest
import torch

from sae_helpers.saes import JumpReluSAE, JumpReluTrainingSAE


def _training_sae(d=6, m=20, bandwidth=0.4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReluTrainingSAE(d, m, bandwidth=bandwidth, dtype=torch.float64).init_weights(gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(m, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(0.3 * torch.randn(d, generator=gen, dtype=torch.float64))
        sae.log_threshold.copy_(torch.log(0.2 + 0.6 * torch.rand(m, generator=gen, dtype=torch.float64)))
    return sae, gen


def test_init_threshold_and_inference_form():
    sae = JumpReluTrainingSAE(4, 8, init_threshold=0.05).init_weights()
    torch.testing.assert_close(sae.threshold, torch.full((8,), 0.05))
    x = torch.randn(9, 4)
    inference = sae.for_inference()
    assert type(inference) is JumpReluSAE
    torch.testing.assert_close(inference.encode(x), sae.encode(x), rtol=0, atol=0)


def test_straight_through_gradients_match_the_papers_definitions():
    sae, gen = _training_sae()
    n, eps, lam = 64, sae.bandwidth, 0.7
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    out = sae(x)
    (out.losses["reconstruction"] + lam * out.losses["sparsity"]).backward()

    # The same quantities written out by hand (no autograd).
    W_enc, b_enc, W_dec, b_dec = (t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    theta = sae.log_threshold.detach().exp()
    x_c = x - b_dec
    pre = x_c @ W_enc + b_enc
    active = (pre > theta).double()
    kernel = ((pre - theta).abs() < eps / 2).double()
    assert kernel.sum() > 10, "the test needs pre-activations inside the kernel window"
    f = pre * active
    x_hat = f @ W_dec + b_dec
    grad_x_hat = 2.0 / n * (x_hat - x)
    grad_f = grad_x_hat @ W_dec.T
    # d f / d theta = -(theta / eps) K;  d 1[pre > theta] / d theta = -(1 / eps) K  (L0 is a batch mean)
    grad_theta = (grad_f * -(theta / eps) * kernel).sum(0) + lam * (-(1.0 / eps) * kernel).sum(0) / n
    grad_pre = grad_f * active  # the L0 term sends nothing to pre
    expected = {
        "log_threshold": theta * grad_theta,
        "b_enc": grad_pre.sum(0),
        "W_enc": x_c.T @ grad_pre,
        "W_dec": f.T @ grad_x_hat,
        "b_dec": grad_x_hat.sum(0) - (grad_pre @ W_enc.T).sum(0),
    }
    torch.testing.assert_close(out.losses["sparsity"], active.sum(1).mean())
    torch.testing.assert_close(out.reconstruction, x_hat)
    for name, grad in expected.items():
        torch.testing.assert_close(getattr(sae, name).grad, grad, rtol=1e-10, atol=1e-12, msg=name)


def test_fold_and_reinitialise_keep_log_thresholds_consistent():
    sae, gen = _training_sae()
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    s = 3.1
    scaled = sae.encode(s * x)
    sae.fold_activation_scale_(s)
    torch.testing.assert_close(sae.encode(x), scaled / s)
    sae.reinitialize_latents_(torch.tensor([2, 5]), torch.eye(6, dtype=torch.float64)[:2], 0.5)
    torch.testing.assert_close(sae.threshold[[2, 5]], torch.full((2,), sae.init_threshold, dtype=torch.float64))


@pytest.mark.parametrize("option, value", [("bandwidth", 0.0), ("init_threshold", -1.0), ("bandwidth", math.inf)])
def test_bad_options_are_refused(option, value):
    with pytest.raises(ValueError, match=f"{option} must be a positive number"):
        JumpReluTrainingSAE(4, 8, **{option: value})
