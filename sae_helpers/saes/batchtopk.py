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

The selection (the fast path, :func:`sae_helpers.kernels.topk.batch_topk`) is prefiltered by
a threshold estimated from a sample of the batch and equals the plain one-``topk``
selection (:func:`~sae_helpers.kernels.topk.batch_topk_reference`) exactly;
``bench/meta_sae.py`` times both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..distributed import SINGLE, World, all_min, batch_group
from ..kernels.sparse import Support
from ..kernels.topk import batch_topk, batch_topk_across
from .registry import register
from .topk import TopKSAE


@register
class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE for training; see the module docstring."""

    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    bias_like = ("b_enc", "threshold", "b_dec")
    training_options = {**TopKSAE.training_options, "threshold_rate": float}

    def __init__(self, d_in: int, d_sae: int, k: int = 32, *, threshold_rate: float = 0.01, **kwargs) -> None:
        super().__init__(d_in, d_sae, k, **kwargs)
        if not 0 < threshold_rate <= 1:
            raise ValueError(f"threshold_rate must be in (0, 1], got {threshold_rate!r}.")
        self.threshold_rate = float(threshold_rate)
        # A parameter without gradient: saved, checkpointed and folded like the others.
        self.threshold = nn.Parameter(torch.zeros((), dtype=self.dtype, device=self.device), requires_grad=False)

    def select(self, pre: Tensor) -> tuple[Support, Tensor]:
        world = batch_group()  # the processes sharing this batch (torchrun); one outside training
        support, values = batch_topk_across(pre, self.k, world) if world.distributed else batch_topk(pre, self.k)
        self._update_threshold(values, world)
        return support, values

    @torch.no_grad()
    def _update_threshold(self, values: Tensor, world: World = SINGLE) -> None:
        positive = values[values > 0]
        if world.distributed:  # the smallest kept activation of the whole batch
            mine = positive.min() if positive.numel() else values.new_full((), math.inf)
            smallest = all_min(mine, world).to(self.threshold.dtype)
            if math.isinf(smallest.item()):
                return
        elif positive.numel() == 0:
            return
        else:
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
