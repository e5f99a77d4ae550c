"""TopK and BatchTopK SAEs against independent (numpy / float64 dense) references."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_helpers.formats import load_sae
from sae_helpers.saes import BatchTopKSAE, JumpReluSAE, TopKSAE


def _sae(cls, d=8, m=24, k=3, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    sae = cls(d, m, k, dtype=torch.float64, **kwargs).init_weights(gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(m, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(0.3 * torch.randn(d, generator=gen, dtype=torch.float64))
    return sae, gen


def _numpy_pre(sae, x):
    w, b_enc, b_dec = (t.detach().numpy() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    return (x.numpy() - b_dec) @ w + b_enc


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 24), seed=st.integers(0, 10_000))
def test_topk_keeps_exactly_the_k_largest_preactivations(n, k, seed):
    sae, gen = _sae(TopKSAE, k=k, seed=seed)
    x = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    pre = _numpy_pre(sae, x)
    expected = np.zeros_like(pre)
    for row, keep in enumerate(np.argsort(-pre, axis=1)[:, :k]):
        expected[row, keep] = np.maximum(pre[row, keep], 0)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    out = sae(x)
    np.testing.assert_allclose(out.latents.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert float(out.losses["sparsity"]) == pytest.approx((expected > 0).sum() / n)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_batchtopk_keeps_exactly_the_kn_largest_activations_of_the_batch(n, k, seed):
    sae, gen = _sae(BatchTopKSAE, k=k, seed=seed)
    x = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    post = np.maximum(_numpy_pre(sae, x), 0).ravel()
    keep = np.argsort(-post)[: k * n]
    expected = np.zeros_like(post)
    expected[keep] = post[keep]
    out = sae(x)
    np.testing.assert_allclose(out.latents.detach().numpy().ravel(), expected, rtol=1e-12, atol=1e-12)
    x_hat = expected.reshape(n, -1) @ sae.W_dec.detach().numpy() + sae.b_dec.detach().numpy()
    np.testing.assert_allclose(out.reconstruction.detach().numpy(), x_hat, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE])
def test_sparse_decoder_and_aux_loss_match_a_dense_float64_rederivation(cls):
    sae, gen = _sae(cls, d=10, m=30, k=4, aux_k=5, aux_k_coefficient=0.25)
    x = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    dead = torch.zeros(30, dtype=torch.bool)
    dead[[1, 4, 7, 11, 19, 22, 29]] = True
    out = sae(x, dead_mask=dead)
    sum(out.losses[name] for name in ("reconstruction", "auxiliary")).backward()

    p = {n: q.detach().clone().requires_grad_(True) for n, q in sae.named_parameters() if q.requires_grad}
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    selected = out.latents.detach() > 0  # which entries: checked exactly by the selection tests
    f = torch.where(selected, torch.relu(pre), 0.0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon = ((x - x_hat) ** 2).sum(1).mean()
    error = (x - x_hat).detach()
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    aux_idx = dead_pre.topk(5, dim=1).indices
    f_aux = torch.zeros_like(pre).scatter(1, aux_idx, torch.relu(pre.gather(1, aux_idx)))
    # Gao et al.'s normalisation, rewritten for an unnormalised main loss: the aux-k error is
    # divided by the batch variance of the error and multiplied by that of x (both constants).
    variance = {name: float(((v - v.mean(0)) ** 2).sum(1).mean()) for name, v in (("x", x), ("e", error))}
    assert abs(variance["x"] / variance["e"] - 1) > 0.05  # the factor matters: an unnormalised loss would fail
    aux = 0.25 * variance["x"] / variance["e"] * ((error - f_aux @ p["W_dec"]) ** 2).sum(1).mean()
    torch.testing.assert_close(out.reconstruction, x_hat.detach())
    torch.testing.assert_close(out.losses["auxiliary"], aux.detach())
    (recon + aux).backward()
    for name, q in p.items():
        torch.testing.assert_close(getattr(sae, name).grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_aux_loss_reaches_only_dead_latents_and_is_zero_without_them():
    sae, gen = _sae(TopKSAE, d=6, m=16, k=2)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    assert float(sae(x).losses["auxiliary"]) == 0.0
    assert float(sae(x, dead_mask=torch.zeros(16, dtype=torch.bool)).losses["auxiliary"]) == 0.0
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 9]] = True
    sae(x, dead_mask=dead).losses["auxiliary"].backward()
    live_columns = sae.W_enc.grad[:, ~dead]
    assert torch.count_nonzero(live_columns) == 0 and torch.count_nonzero(sae.W_dec.grad[~dead]) == 0
    assert torch.count_nonzero(sae.W_enc.grad[:, dead]) > 0


def test_batchtopk_threshold_is_a_moving_average_of_the_smallest_kept_activation():
    sae2, gen2 = _sae(BatchTopKSAE, k=3, threshold_rate=0.25)
    assert float(sae2.threshold) == 0.0  # not estimated yet
    expected = None
    for _ in range(4):
        x = torch.randn(16, 8, generator=gen2, dtype=torch.float64)
        kept = np.sort(np.maximum(_numpy_pre(sae2, x), 0).ravel())[::-1][: 3 * 16]
        smallest = float(kept[kept > 0].min())
        sae2(x)
        expected = smallest if expected is None else expected + 0.25 * (smallest - expected)
    assert float(sae2.threshold) == pytest.approx(expected, rel=1e-12)


def test_batchtopk_infers_with_its_threshold_and_saves_as_jumprelu(tmp_path):
    sae, gen = _sae(BatchTopKSAE, k=3)
    with torch.no_grad():
        sae.threshold.fill_(0.4)
    x = torch.randn(25, 8, generator=gen, dtype=torch.float64)
    pre = torch.as_tensor(_numpy_pre(sae, x))
    torch.testing.assert_close(sae.encode(x), torch.where(pre > 0.4, pre, 0.0))
    jump = sae.for_inference()
    assert isinstance(jump, JumpReluSAE) and jump.metadata["trained_as"] == "batchtopk"
    torch.testing.assert_close(jump.encode(x), sae.encode(x), rtol=0, atol=0)
    sae.save(str(tmp_path / "b"))
    loaded = load_sae(tmp_path / "b")
    assert type(loaded) is JumpReluSAE
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


def test_topk_saves_k_and_loads_back(tmp_path):
    sae, gen = _sae(TopKSAE, k=5)
    sae.save(str(tmp_path / "t"))
    loaded = load_sae(tmp_path / "t")
    assert isinstance(loaded, TopKSAE) and loaded.k == 5
    x = torch.randn(7, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, 25, 2.5, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be an integer between 1 and d_sae=24"):
        TopKSAE(8, 24, k)
