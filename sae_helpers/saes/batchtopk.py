"""BatchTopK SAE (Bussmann et al. 2024): keep the ``k * N`` largest activations of a batch.

Training: ``pi = (x - b_dec) W_enc + b_enc``; of the ``N x d_sae`` values ``ReLU(pi)`` of
a batch of ``N`` tokens, the ``k N`` largest are kept (so tokens share a budget of ``k``
on average), plus TopK's aux-k loss for dead latents. Inference cannot depend on the
other tokens of a batch, so a single threshold ``theta`` replaces the selection:
``f = ReLU(pi) 1[pi > theta]``. ``theta`` is estimated during training as an exponential
moving average (rate ``threshold_rate``) of the smallest kept activation of each batch;
``theta = 0`` means "not estimated yet". The trained SAE is a JumpReLU SAE with every
threshold equal to ``theta``: :meth:`BatchTopKSAE.for_inference` returns it, and that is
what ``train_sae`` returns and ``save`` writes (SAELens architecture ``"jumprelu"``).

The selection (:func:`batch_topk`) is prefiltered by a threshold estimated from a sample of
the batch and equals the plain one-``topk`` selection (:func:`batch_topk_reference`) exactly;
``bench/meta_sae.py`` times both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .registry import register
from .topk import Selection, TopKSAE

#: Entries of the strided sample from which :func:`batch_topk` estimates its prefilter threshold.
PREFILTER_SAMPLE = 1 << 16
#: The prefilter aims to keep about this many times ``k * N`` candidates.
PREFILTER_MARGIN = 2.0


def _selection(flat: Tensor, values: Tensor, n: int, m: int) -> Selection:
    """The :class:`Selection` of the entries at flat indices ``flat`` of an ``[n, m]`` matrix."""
    flat, order = flat.sort()
    rows = flat.div(m, rounding_mode="floor")
    offsets = torch.searchsorted(rows, torch.arange(n, device=flat.device))
    return Selection(rows, flat - rows * m, torch.relu(values[order]), offsets)


def batch_topk_reference(pre: Tensor, k: int) -> Selection:
    """The ``k * N`` largest entries of ``ReLU(pre) [N, M]`` over the whole batch, row-major:
    one ``topk`` over all ``N * M`` entries (the definition; :func:`batch_topk` is faster)."""
    n, m = pre.shape
    values, flat = pre.reshape(-1).topk(min(k * n, pre.numel()), sorted=False)
    return _selection(flat, values, n, m)


def batch_topk(pre: Tensor, k: int) -> Selection:
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


@register
class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE for training; see the module docstring."""

    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    bias_like = ("b_enc", "threshold", "b_dec")

    def __init__(self, d_in: int, d_sae: int, k: int = 32, *, threshold_rate: float = 0.01, **kwargs) -> None:
        super().__init__(d_in, d_sae, k, **kwargs)
        if not 0 < threshold_rate <= 1:
            raise ValueError(f"threshold_rate must be in (0, 1], got {threshold_rate!r}.")
        self.threshold_rate = float(threshold_rate)
        # A parameter without gradient: saved, checkpointed and folded like the others.
        self.threshold = nn.Parameter(torch.zeros((), dtype=self.dtype, device=self.device), requires_grad=False)

    def select(self, pre: Tensor) -> Selection:
        selection = batch_topk(pre, self.k)
        self._update_threshold(selection.values)
        return selection

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        positive = values[values > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if self.threshold.item() == 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.threshold_rate)

    def encode(self, x: Tensor) -> Tensor:
        """Inference: ``ReLU(pi) 1[pi > theta]`` with the estimated threshold."""
        pre = self.pre_activations(x)
        return torch.where(pre > self.threshold, torch.relu(pre), 0.0)

    @torch.no_grad()
    def for_inference(self):
        """The equivalent JumpReLU SAE (every latent's threshold is ``theta``)."""
        from .jumprelu import JumpReluSAE

        metadata = {**self.metadata, "trained_as": "batchtopk", "k": self.k}
        out = JumpReluSAE(self.d_in, self.d_sae, dtype=self.dtype, device=self.device, metadata=metadata)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(out, name).copy_(getattr(self, name))
        out.threshold.fill_(self.threshold.item())
        out.provenance = self.provenance
        return out
