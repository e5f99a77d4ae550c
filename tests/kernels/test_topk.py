"""The prefiltered BatchTopK selection (sae_helpers.kernels.topk) selects exactly what the one-``topk``
reference selects."""

import pytest
import torch

from sae_helpers.kernels import topk as batchtopk
from sae_helpers.kernels.topk import batch_topk, batch_topk_reference


def _pre(n, m, skew, seed, dtype=torch.float32):
    """Pre-activations with per-row and per-latent offsets (``skew``): the K largest then
    crowd into a few rows and latents, which a row- or column-wise shortcut would get wrong."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, m, generator=gen, dtype=torch.float64) * 0.1
    rows = torch.randn(n, 1, generator=gen, dtype=torch.float64) * skew
    cols = torch.randn(1, m, generator=gen, dtype=torch.float64) * skew
    return (noise + rows + cols).to(dtype)


def _fields(selection):
    support, values = selection
    return support.rows, support.cols, support.crow, values


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(_fields(a), _fields(b), strict=True))


@pytest.mark.parametrize(("n", "m", "k"), [(1024, 2304, 4), (512, 4608, 32), (300, 1000, 7)])
@pytest.mark.parametrize("skew", [0.0, 0.05, 0.3, 1.0])
def test_prefiltered_selection_equals_the_reference(n, m, k, skew):
    pre = _pre(n, m, skew, seed=n + k)
    assert pre.numel() >= 4 * batchtopk.PREFILTER_SAMPLE  # the prefilter path is the one under test
    fast, ref = batch_topk(pre, k), batch_topk_reference(pre, k)
    assert _same(fast, ref)
    assert len(fast[1]) == k * n


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_prefiltered_selection_in_other_dtypes(dtype):
    pre = _pre(1024, 1024, 0.3, seed=1, dtype=dtype)
    (fast_support, fast_values), (_, ref_values) = fast, ref = batch_topk(pre, 8), batch_topk_reference(pre, 8)
    # bfloat16 has many exact ties: the same multiset of values, each entry >= the K-th value.
    assert torch.equal(fast_values.sort().values, ref_values.sort().values)
    offsets = fast_support.crow[:-1]
    assert torch.equal(offsets[1:] >= offsets[:-1], torch.ones(1023, dtype=torch.bool))
    assert torch.equal(pre[fast_support.rows, fast_support.cols].relu(), fast_values)
    if dtype == torch.float64:
        assert _same(fast, ref)


def test_exact_ties_at_the_boundary_give_the_same_values():
    pre = torch.zeros(512, 1024)
    pre[:, :3] = 1.0  # 3 per row above a huge tie at 0.5: K = 4 * 512 cuts through the tie
    pre[:, 3:10] = 0.5
    (_, fast_values), (_, ref_values) = batch_topk(pre, 4), batch_topk_reference(pre, 4)
    assert torch.equal(fast_values.sort().values, ref_values.sort().values)
    assert int((fast_values == 1.0).sum()) == 3 * 512


def test_gradients_equal_the_reference():
    pre = _pre(1024, 2304, 0.3, seed=3).requires_grad_(True)
    weights = torch.randn(1024 * 4, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (batch_topk, batch_topk_reference):
        pre.grad = None
        (fn(pre, 4)[1] * weights).sum().backward()
        grads.append(pre.grad.clone())
    assert torch.equal(*grads)


def test_fallback_when_too_few_entries_pass(monkeypatch):
    """A threshold that lets fewer than K entries through falls back to the reference."""
    calls = []
    reference = batchtopk.batch_topk_reference
    monkeypatch.setattr(batchtopk, "batch_topk_reference", lambda pre, k: calls.append(k) or reference(pre, k))
    pre = _pre(1024, 1024, 0.3, seed=4)
    assert _same(batch_topk(pre, 8), reference(pre, 8)) and calls == []  # the prefilter sufficed
    monkeypatch.setattr(batchtopk, "PREFILTER_MARGIN", 0.0)  # aim at ~8 sqrt(expected) sample entries: < K pass
    assert _same(batch_topk(pre, 8), reference(pre, 8)) and calls == [8]
