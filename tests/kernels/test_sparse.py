"""The sparse decoder kernels against dense references, and the choice of the decoder path."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_helpers.kernels import sparse as sd
from sae_helpers.kernels.sparse import (
    Support,
    SupportCollector,
    column_sums,
    decode_support,
    embedding_decode,
    sampled_mm,
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


@pytest.mark.parametrize("decode", [decode_support, embedding_decode])
def test_decode_support_gradcheck_and_no_bias(decode):
    S = sparse_matrix(6, 9, 0.35, seed=5, empty_rows=[2])
    support = Support.from_dense(S)
    values = support.gather(S).requires_grad_(True)
    W = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w, c: decode(support, v, w, c), (values, W, b))
    torch.testing.assert_close(decode(support, values, W), S @ W, **F64)
    torch.testing.assert_close(decode(support, values, W, b), S @ W + b, **F64)
    with pytest.raises(ValueError):
        decode_support(support, values[:-1], W)


def test_sparse_decode_with_k_zero_and_batch_of_one():
    W = torch.randn(8, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    out = sparse_decode(torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 0, dtype=torch.float64), W, b)
    torch.testing.assert_close(out, b.expand(4, 3))
    idx, val = torch.tensor([[5, 1]]), torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(sparse_decode(idx, val, W, b), (0.5 * W[5] - 2 * W[1] + b)[None])


# ------------------------------------------------------------------------------ path choice
def test_decoder_path_is_checked():
    """The decoder path is an argument (no process-wide setting); unknown values are refused."""
    t = torch.ones(4, 5)
    for path in sd.DECODER_PATHS:
        SupportCollector(t, d=1, decoder=path)
    with pytest.raises(ValueError):
        SupportCollector(t, d=1, decoder="fast")
    with pytest.raises(ValueError):
        sd.use_sparse(0, (4, 5), 1, decoder="fast")


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
    collector = SupportCollector(t, d=1, decoder="sparse")
    collector.add(slice(0, 40))
    assert collector.finish().nnz == 2000


def test_auto_stays_dense_off_cpu_and_for_tiny_problems():
    big = (4096, 4096)
    assert sd.use_sparse(0, big, 64, "cpu")
    assert not sd.use_sparse(0, big, 64, "meta")
    assert not sd.use_sparse(0, (8, 8), 8, "cpu")
    assert not sd.use_sparse(big[0] * big[1], big, 64, "cpu")
    assert sd.use_sparse(100, (10, 10), 1, "meta", decoder="sparse")
    assert not sd.use_sparse(0, big, 64, "cpu", decoder="dense")
