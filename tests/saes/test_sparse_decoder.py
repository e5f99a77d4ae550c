"""The sparse decoder kernels against dense references, and the fused training steps'
sparse path against their dense path (values and every gradient)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_helpers import GatedSAE, ReluSAE
from sae_helpers.saes import sparse_decoder as sd
from sae_helpers.saes.sparse_decoder import (
    DENSITY_CROSSOVER,
    Support,
    SupportCollector,
    column_sums,
    decode_support,
    decoder_path,
    get_decoder_path,
    sampled_mm,
    set_decoder_path,
    sparse_decode,
    spmm,
    spmm_t,
)

F64 = {"rtol": 1e-12, "atol": 1e-12}
F32 = {"rtol": 1e-4, "atol": 1e-5}


def sparse_matrix(n, m, density, seed=0, dtype=torch.float64, empty_rows=()):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, m, generator=gen) < density
    for r in empty_rows:
        mask[r] = False
    return torch.where(mask, torch.randn(n, m, generator=gen, dtype=dtype), 0.0)


# ------------------------------------------------------------------------------ kernels
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    m=st.integers(1, 12),
    d=st.integers(1, 7),
    density=st.sampled_from([0.0, 0.1, 0.4, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_dense_products(n, m, d, density, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    S = sparse_matrix(n, m, density, seed, empty_rows=[0] if n > 1 else [])
    W = torch.randn(m, d, generator=gen, dtype=torch.float64)
    G = torch.randn(n, d, generator=gen, dtype=torch.float64)
    support = Support.from_dense(S)
    values = support.gather(S)
    assert support.nnz == int((S != 0).sum())
    torch.testing.assert_close(support.to_dense(values), S, **F64)
    torch.testing.assert_close(spmm(support, values, W), S @ W, **F64)
    torch.testing.assert_close(spmm_t(support, values, G), S.T @ G, **F64)
    torch.testing.assert_close(sampled_mm(support, G, W), (G @ W.T)[S != 0], **F64)
    torch.testing.assert_close(column_sums(support, values), S.sum(0), **F64)


def test_support_index_views_agree():
    S = sparse_matrix(7, 11, 0.3, seed=2, empty_rows=[0, 4, 6])
    a = Support.from_dense(S)
    rows, cols = (S != 0).nonzero(as_tuple=True)
    b = Support((7, 11), S.device, rows=rows, cols=cols)  # built from rows, not flat
    for s in (a, b):
        torch.testing.assert_close(s.rows, rows)
        torch.testing.assert_close(s.cols, cols)
        torch.testing.assert_close(s.flat, rows * 11 + cols)
        torch.testing.assert_close(s.crow, torch.cat([torch.zeros(1, dtype=torch.long), (S != 0).sum(1).cumsum(0)]))
        order, ccol, rows_by_col = s.by_column
        torch.testing.assert_close(cols[order], cols.sort(stable=True).values)
        torch.testing.assert_close(rows_by_col, rows[order])
        torch.testing.assert_close(ccol[-1], torch.tensor(s.nnz))
    assert a.density == pytest.approx(a.nnz / 77)


def test_kernels_on_an_empty_support():
    S = torch.zeros(5, 6, dtype=torch.float64)
    W, G = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    support = Support.from_dense(S)
    values = support.gather(S)
    assert support.nnz == 0
    torch.testing.assert_close(spmm(support, values, W), torch.zeros(5, 3, dtype=torch.float64))
    torch.testing.assert_close(spmm_t(support, values, G), torch.zeros(6, 3, dtype=torch.float64))
    assert sampled_mm(support, G, W).shape == (0,)


def test_sampled_mm_in_16_bit():
    S = sparse_matrix(6, 10, 0.4, seed=3, dtype=torch.float32)
    W, G = torch.randn(10, 4), torch.randn(6, 4)
    support = Support.from_dense(S)
    got = sampled_mm(support, G.bfloat16(), W.bfloat16())
    assert got.dtype == torch.bfloat16
    expected = (G.bfloat16().float() @ W.bfloat16().float().T)[S != 0]
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------ autograd
def dense_from_indices(indices, values, m):
    return torch.zeros(*indices.shape[:-1], m, dtype=values.dtype).scatter_add(-1, indices, values)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
def test_sparse_decode_matches_dense_decode(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    n, k, m, d = 13, 4, 20, 6
    indices = torch.rand(2, n, m, generator=gen).argsort(-1)[..., :k]  # unsorted within rows, leading dim
    values = torch.rand(2, n, k, generator=gen, dtype=dtype).requires_grad_(True)
    W = torch.randn(m, d, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(d, generator=gen, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, n, d, generator=gen, dtype=dtype)

    out = sparse_decode(indices, values, W, b)
    (out * upstream).sum().backward()
    grads = [t.grad.clone() for t in (values, W, b)]
    for t in (values, W, b):
        t.grad = None
    ref = dense_from_indices(indices, values, m) @ W + b
    (ref * upstream).sum().backward()
    torch.testing.assert_close(out, ref, **tol)
    for got, t in zip(grads, (values, W, b), strict=True):
        torch.testing.assert_close(got, t.grad, **tol)


def test_decode_support_gradcheck_and_no_bias():
    S = sparse_matrix(6, 9, 0.35, seed=5, empty_rows=[2])
    support = Support.from_dense(S)
    values = support.gather(S).requires_grad_(True)
    W = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w, c: decode_support(support, v, w, c), (values, W, b))
    torch.testing.assert_close(decode_support(support, values, W), S @ W, **F64)
    with pytest.raises(ValueError):
        decode_support(support, values[:-1], W)


def test_sparse_decode_with_k_zero_and_batch_of_one():
    W = torch.randn(8, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    out = sparse_decode(torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 0, dtype=torch.float64), W, b)
    torch.testing.assert_close(out, b.expand(4, 3))
    idx, val = torch.tensor([[5, 1]]), torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(sparse_decode(idx, val, W, b), (0.5 * W[5] - 2 * W[1] + b)[None])


# ------------------------------------------------------------------------------ path setting
def test_decoder_path_setting():
    assert get_decoder_path() == "auto"
    with decoder_path("sparse"):
        assert get_decoder_path() == "sparse"
        with decoder_path("dense"):
            assert get_decoder_path() == "dense"
        assert get_decoder_path() == "sparse"
    assert get_decoder_path() == "auto"
    with pytest.raises(ValueError):
        set_decoder_path("fast")
    with pytest.raises(RuntimeError), decoder_path("dense"):
        raise RuntimeError
    assert get_decoder_path() == "auto"


def test_collector_finishes_a_batch_that_starts_dense():
    """Under "auto", dense first blocks stop the collection; a sparse total resumes it."""
    t = torch.zeros(40, 50)
    t[:2] = 1.0  # 100 of 2000 nonzeros: density 0.05, but the first block is full
    t[30, 7] = 2.0
    collector = SupportCollector(t, d=5000)
    for start in range(0, 40, 4):
        collector.add(slice(start, start + 4))
    assert not collector.collecting
    support = collector.finish()
    assert support is not None
    torch.testing.assert_close(support.flat, Support.from_dense(t).flat)


def test_collector_decides_dense_early():
    t = torch.ones(40, 50)
    collector = SupportCollector(t, d=5000)
    collector.add(slice(0, 20))
    assert not collector.active  # already over the crossover: the rest is not even counted
    collector.add(slice(20, 40))
    assert collector.finish() is None
    with decoder_path("sparse"):
        collector = SupportCollector(t, d=1)
        collector.add(slice(0, 40))
        assert collector.finish().nnz == 2000


# ------------------------------------------------------------------------------ training steps
D, M, B, LAM = 12, 40, 64, 0.7


def make_sae(arch, seed=0, dtype=torch.float64, open_fraction=None):
    gen = torch.Generator().manual_seed(seed)
    cls = GatedSAE if arch == "gated" else ReluSAE
    sae = cls(D, M, dtype=dtype).init_weights(gen)
    with torch.no_grad():
        for p in sae.parameters():
            if p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        sae.W_enc.mul_(1 + 0.5 * torch.rand(D, M, generator=gen))
    return sae


def set_open_fraction(sae, x, fraction):
    """Bias every latent so that ``fraction`` of the rows of ``x`` are active (gate open)."""
    with torch.no_grad():
        u = sae.project(x)
        k = round(fraction * x.shape[0])
        bias = -u.amax(0) - 1.0 if k == 0 else -u.kthvalue(x.shape[0] - k, dim=0).values
        if isinstance(sae, GatedSAE):
            sae.b_gate.copy_(bias)
        else:
            sae.b_enc.copy_(bias)


def run_step(sae, x, path, extra=None, terms=None):
    """Values and gradients of one forward/backward on decoder path ``path``."""
    sae.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with decoder_path(path):
        out = sae(x)
        losses = out.losses
        terms = terms or list(losses)
        loss = sum((LAM if t == "sparsity" else 1.0) * losses[t] for t in terms)
        if extra is not None:  # incoming gradients on the latents and the reconstruction
            r_lat, r_rec = extra
            loss = loss + (out.latents * r_lat).sum() + (out.reconstruction**2 * r_rec).sum()
        loss.backward()
    sparse = losses["reconstruction"].grad_fn.support is not None
    values = {"latents": out.latents.detach(), "x_hat": out.reconstruction.detach()}
    values.update({k: v.detach() for k, v in losses.items()})
    grads = {n: p.grad for n, p in sae.named_parameters()} | {"x": x.grad}
    return sparse, values, grads


def assert_paths_agree(sae, x, tol, extra=None, terms=None):
    dense_used, dense_values, dense_grads = run_step(sae, x, "dense", extra, terms)
    sparse_used, sparse_values, sparse_grads = run_step(sae, x, "sparse", extra, terms)
    assert not dense_used and sparse_used
    for name, value in dense_values.items():
        torch.testing.assert_close(sparse_values[name], value, **tol, msg=name)
    for name, grad in dense_grads.items():
        other = sparse_grads[name]
        if grad is None or other is None:  # a term that does not reach the parameter
            assert (grad is None or not grad.any()) and (other is None or not other.any()), name
        else:
            torch.testing.assert_close(other, grad, **tol, msg=name)
    return dense_grads, sparse_grads


@pytest.mark.parametrize("arch", ["gated", "relu"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, {"rtol": 1e-10, "atol": 1e-12}), (torch.float32, F32)])
def test_sparse_step_equals_dense_step(arch, dtype, tol):
    sae = make_sae(arch, dtype=dtype)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=dtype)
    set_open_fraction(sae, x, 0.2)
    with torch.no_grad():  # a row with no active latent
        x[3] = 0.0
        x[3] -= 10 * sae.W_enc.sum(1) / sae.W_enc.pow(2).sum()
    assert_paths_agree(sae, x, tol)


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_sparse_step_with_incoming_latent_and_reconstruction_gradients(arch):
    sae = make_sae(arch, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    extra = tuple(torch.randn(B, w, generator=gen, dtype=torch.float64) for w in (M, D))
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, extra=extra)
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, extra=extra, terms=["sparsity"])


@pytest.mark.parametrize("term", ["reconstruction", "sparsity", "auxiliary"])
def test_gated_terms_one_at_a_time(term):
    """Each term alone: in particular the auxiliary term's frozen decoder (no W_dec
    gradient; b_dec only through the encoder) and the gate's Heaviside (no b_gate
    gradient from the reconstruction)."""
    sae = make_sae("gated", seed=4)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dense, sparse = assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, terms=[term])
    if term == "auxiliary":
        assert sparse["W_dec"] is None or not sparse["W_dec"].any()
        with torch.no_grad():
            u = sae.project(x)
            pi_gate = u + sae.b_gate
            x_aux = torch.relu(pi_gate) @ sae.W_dec + sae.b_dec
            g_gate = (pi_gate > 0).double() * (2 * (x_aux - x) @ sae.W_dec.T / B)
        torch.testing.assert_close(sparse["b_dec"], -(g_gate.sum(0) @ sae.W_enc.T), rtol=1e-10, atol=1e-12)
    if term == "reconstruction":
        assert sparse["b_gate"] is None or not sparse["b_gate"].any()


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_all_rows_empty_and_batch_of_one(arch):
    sae = make_sae(arch, seed=6)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    set_open_fraction(sae, x, 0.0)
    _, values, _ = run_step(sae, x, "sparse")
    assert not values["latents"].any()
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12})
    set_open_fraction(sae, x, 0.3)
    assert_paths_agree(sae, x[:1], {"rtol": 1e-10, "atol": 1e-12})


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_auto_picks_sparse_at_low_density_and_dense_at_high(arch, monkeypatch):
    monkeypatch.setattr(sd, "MIN_SPARSE_MACS", 0)
    sae = make_sae(arch, seed=8, dtype=torch.float32)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(9))
    set_open_fraction(sae, x, DENSITY_CROSSOVER / 2)
    assert run_step(sae, x, "auto")[0]
    set_open_fraction(sae, x, min(1.0, 2 * DENSITY_CROSSOVER))
    assert not run_step(sae, x, "auto")[0]
    set_open_fraction(sae, x, DENSITY_CROSSOVER / 2)
    assert not run_step(sae, x, "dense")[0]


def test_auto_stays_dense_off_cpu_and_for_tiny_problems():
    big = (4096, 4096)
    assert sd.use_sparse(0, big, 64, "cpu")
    assert not sd.use_sparse(0, big, 64, "meta")
    assert not sd.use_sparse(0, (8, 8), 8, "cpu")
    assert not sd.use_sparse(big[0] * big[1], big, 64, "cpu")
    with decoder_path("sparse"):
        assert sd.use_sparse(100, (10, 10), 1, "meta")
    with decoder_path("dense"):
        assert not sd.use_sparse(0, big, 64, "cpu")


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_sparse_step_in_bfloat16(arch):
    """16-bit parameters work on the sparse path (sampled products in float32) and agree
    with the dense path to bfloat16 precision."""
    sae = make_sae(arch, seed=10, dtype=torch.bfloat16)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(11)).bfloat16()
    set_open_fraction(sae, x, 0.1)
    _, dense_values, dense_grads = run_step(sae, x, "dense")
    _, sparse_values, sparse_grads = run_step(sae, x, "sparse")
    torch.testing.assert_close(sparse_values["latents"], dense_values["latents"], rtol=0, atol=0)
    for name in ("x_hat", "reconstruction"):
        torch.testing.assert_close(sparse_values[name], dense_values[name], rtol=0.02, atol=0.02, msg=name)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=0.05, atol=0.02, msg=name)


def test_training_runs_agree_over_several_steps():
    """Whole ``TrainingRun.step``s (Adam, decoder projection and renormalisation) on both paths."""
    from sae_helpers.training import TrainConfig, TrainingRun

    sample = torch.randn(256, D, generator=torch.Generator().manual_seed(12))
    cfg = TrainConfig(arch="gated", width=M, l1_coefficient=1e-2, steps=100, batch_size=64, resample_every=0,
                      b_dec_init="mean", init_sample_size=256, dtype="float64")
    runs = {}
    for path in ("dense", "sparse"):
        run = TrainingRun.start(cfg, sample, torch.device("cpu"))
        with decoder_path(path):
            for i in range(4):
                run.step(sample[64 * i: 64 * (i + 1)])
        runs[path] = run
    for (name, p), q in zip(runs["dense"].sae.named_parameters(), runs["sparse"].sae.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=name)


def rederivation_tests():
    from tests.saes import test_gated, test_relu

    return [
        test_gated.test_loss_and_gradients_match_float64_rederivation,
        test_gated.test_gradients_match_closed_forms,
        test_gated.test_auxiliary_term_never_trains_the_decoder,
        test_gated.test_gate_bias_gets_gradient_only_from_sparsity_and_auxiliary,
        test_gated.test_decoder_rows_stay_unit_norm_under_projected_updates,
        test_relu.test_forward_loss_and_gradients_match_rederivation,
    ]


@pytest.mark.parametrize("test", rederivation_tests(), ids=lambda t: t.__name__)
def test_float64_rederivations_on_the_sparse_path(test):
    """The Gated and ReLU re-derivation tests, rerun with the sparse decoder forced."""
    with decoder_path("sparse"):
        test()


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_frozen_encoder_or_decoder(arch):
    """Parameters that do not require grad get none on either path; the rest still agree."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    for frozen in ("W_enc", "W_dec", "b_dec"):
        sae = make_sae(arch, seed=14)
        getattr(sae, frozen).requires_grad_(False)
        dense, sparse = assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12})
        assert dense[frozen] is None and sparse[frozen] is None
