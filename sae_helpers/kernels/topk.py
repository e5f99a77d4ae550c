"""The BatchTopK selection: the ``k * N`` largest activations of a batch, found fast.

:func:`batch_topk_reference` is the definition (one ``topk`` over the whole batch);
:func:`batch_topk`, what :class:`sae_helpers.saes.BatchTopKSAE` trains with, selects exactly
the same entries faster, and :func:`batch_topk_across` the selection over a batch split
between processes (``torchrun``). All return the selection's
:class:`~sae_helpers.kernels.sparse.Support` and its ``[nnz]`` values (ReLU applied).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributed import World, all_gather
from .sparse import Support

#: Entries of the strided sample from which :func:`batch_topk` estimates its prefilter threshold.
PREFILTER_SAMPLE = 1 << 16
#: The prefilter aims to keep about this many times ``k * N`` candidates.
PREFILTER_MARGIN = 2.0


def _selection(flat: Tensor, values: Tensor, n: int, m: int) -> tuple[Support, Tensor]:
    """The support of the entries at flat indices ``flat`` of an ``[n, m]`` matrix and their
    ``values`` (ReLU applied), in row-major order."""
    flat, order = flat.sort()
    return Support.from_flat(flat, (n, m)), torch.relu(values[order])


def batch_topk_reference(pre: Tensor, k: int) -> tuple[Support, Tensor]:
    """The ``k * N`` largest entries of ``ReLU(pre) [N, M]`` over the whole batch, row-major:
    one ``topk`` over all ``N * M`` entries (the definition; :func:`batch_topk` is faster)."""
    n, m = pre.shape
    values, flat = pre.reshape(-1).topk(min(k * n, pre.numel()), sorted=False)
    return _selection(flat, values, n, m)


def batch_topk(pre: Tensor, k: int) -> tuple[Support, Tensor]:
    """The ``k * N`` largest entries of ``ReLU(pre) [N, M]`` over the whole batch, row-major.

    The same selection as :func:`batch_topk_reference`, found faster: a ``topk`` of ``K``
    out of ``N * M`` entries costs several passes over the batch, so the entries are first
    filtered by a threshold ``t`` (one comparison pass) and the ``topk`` runs on the few
    survivors. ``t`` is the ``r``-th largest entry of a fixed strided sample of
    :data:`PREFILTER_SAMPLE` entries, with ``r`` chosen so that about
    :data:`PREFILTER_MARGIN` ``K`` entries pass. Whenever at least ``K`` entries pass, every
    one of the ``K`` largest passes, so the result is exact; otherwise (rare, or for small
    batches) the plain ``topk`` runs. Values and gradients are those of the reference;
    only among entries *exactly tied* at the ``K``-th value may the two pick different
    (equal-valued) entries, as two ``topk`` implementations may. Inputs must be finite.
    """
    n, m = pre.shape
    total = pre.numel()
    want = min(k * n, total)
    if total < 4 * PREFILTER_SAMPLE or 4 * PREFILTER_MARGIN * want > total:
        return batch_topk_reference(pre, k)
    flat_pre = pre.reshape(-1)
    with torch.no_grad():
        entries = flat_pre.detach()
        stride = total // PREFILTER_SAMPLE
        while math.gcd(stride, m) != 1:  # a stride sharing a factor with M would sample few latents
            stride -= 1
        sample = entries[::stride]
        expected = want * len(sample) / total  # sample entries expected among the K largest
        rank = min(len(sample), math.ceil(PREFILTER_MARGIN * expected + 8 * math.sqrt(expected)) + 1)
        threshold = sample.kthvalue(len(sample) - rank + 1).values
        flat = (entries >= threshold).nonzero().squeeze(1)
    if len(flat) < want:
        return batch_topk_reference(pre, k)
    values, index = flat_pre[flat].topk(want, sorted=False)
    return _selection(flat[index], values, n, m)


def batch_topk_across(pre: Tensor, k: int, world: World) -> tuple[Support, Tensor]:
    """The BatchTopK selection when the batch is split over the processes of ``world`` (each
    holding ``pre``, the same number ``N`` of its rows): the entries of this process's rows among
    the ``k * N * W`` largest of the whole batch, ``W`` the number of processes.

    Each process offers its own largest ``min(k N W, N M)`` entries (no more of its entries can
    be among the largest), all offers are gathered, and the ``k N W``-th largest of them is the
    threshold every process applies to its own offer. Exact up to entries tied at that value.
    """
    n, m = pre.shape
    want = k * n * world.size
    values, flat = pre.reshape(-1).topk(min(want, pre.numel()), sorted=False)
    offers = all_gather(values.detach(), world)
    threshold = offers.topk(min(want, offers.numel()), sorted=False).values.min()
    keep = values >= threshold
    return _selection(flat[keep], values[keep], n, m)
