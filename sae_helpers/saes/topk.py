"""TopK SAE (Gao et al. 2024): keep the ``k`` largest pre-activations of each token.

``pi = (x - b_dec) W_enc + b_enc``; ``f`` keeps ``ReLU(pi)`` at the ``k`` largest
entries of ``pi`` per token and is zero elsewhere; ``x_hat = f W_dec + b_dec``.
Sparsity is fixed by ``k``, so the loss has no sparsity penalty. Dead latents (no
activation for a while; the trainer passes them as ``dead_mask``) are revived by the
auxiliary "aux-k" loss: the ``aux_k`` largest dead pre-activations per token
reconstruct the main reconstruction's (detached) error ``e = x - x_hat``. As in Gao et al.
and OpenAI's and dictionary_learning's code the aux-k error is normalised by the variance
of ``e`` over the batch, and the main loss (here unnormalised) by that of ``x``, so with
our loss scale ``L_aux = aux_k_coefficient * ||e - f_aux W_dec||^2 * Var(x) / Var(e)``
(batch variances, no gradient; paper: ``aux_k = 512``, ``aux_k_coefficient = 1/32``; the
default ``aux_k`` here is ``d_in // 2``). Unnormalised, the term would shrink with the
error: at FVU 0.06 it would pull about 16x more weakly on dead latents.

The decoder touches only the selected latents: the reconstruction is a weighted sum of
``k`` decoder rows per token (the fast path: :func:`~sae_helpers.kernels.sparse.embedding_decode`
on the selection's :class:`~sae_helpers.kernels.sparse.Support`), so its forward and
backward cost ``O(N k d)`` instead of the dense ``O(N M d)``. Saved as SAELens architecture ``"topk"``
with ``k`` in ``cfg.json``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels.sparse import Support, embedding_decode
from .base import SAE, SAEOutput, batch_variance, squared_error
from .registry import register


def topk_per_row(pre: Tensor, k: int) -> tuple[Support, Tensor]:
    """The ``k`` largest entries of each row of ``pre [N, M]``: their :class:`Support` and
    their values with ReLU applied (``[N * k]``)."""
    values, cols = pre.topk(k, dim=-1, sorted=False)
    return Support.from_indices(cols, pre.shape[1]), torch.relu(values).reshape(-1)


@register
class TopKSAE(SAE):
    """TopK SAE (SAELens architecture ``"topk"``); see the module docstring."""

    architecture = "topk"
    saelens_architecture = "topk"
    latent_axes = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    bias_like = ("b_enc", "b_dec")
    reset_on_resample = ("b_enc",)
    hyperparameters = ("k",)
    sparsity_option = None
    training_options = {"aux_k": int, "aux_k_coefficient": float}
    uses_dead_mask = True
    resamples_by_default = False
    coupled_latents = (
        "a TopK SAE keeps the k largest pre-activations of each token, so adding or removing one latent changes "
        "which other latents fire, and a moved latent's activation is not preserved"
    )

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int = 32,
        *,
        aux_k: int | None = None,
        aux_k_coefficient: float = 1 / 32,
        **kwargs,
    ) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"k must be an integer between 1 and d_sae={d_sae}, got {k!r}.")
        if aux_k is not None and (isinstance(aux_k, bool) or not isinstance(aux_k, int) or aux_k < 1):
            raise ValueError(f"aux_k must be a positive integer or None, got {aux_k!r}.")
        if not aux_k_coefficient >= 0:
            raise ValueError(f"aux_k_coefficient must be >= 0, got {aux_k_coefficient!r}.")
        self.k = k
        self.aux_k = aux_k if aux_k is not None else max(1, d_in // 2)
        self.aux_k_coefficient = float(aux_k_coefficient)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))

    def pre_activations(self, x: Tensor) -> Tensor:
        """``(x - b_dec) W_enc + b_enc``."""
        return self.project(x) + self.b_enc

    def select(self, pre: Tensor) -> tuple[Support, Tensor]:
        """The active latents of a training batch of pre-activations ``[N, d_sae]``: their
        support and ``[nnz]`` values."""
        return topk_per_row(pre, self.k)

    def encode(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        pre = self.pre_activations(x.reshape(-1, self.d_in))
        return scatter(*topk_per_row(pre, self.k)).reshape(*lead, self.d_sae)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        """Latents, reconstruction and the loss terms ``reconstruction``, ``sparsity`` (L0,
        reported only) and ``auxiliary`` (aux-k, already weighted; zero without dead latents)."""
        self.check_input(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_in)
        n = flat.shape[0]
        pre = self.pre_activations(flat)
        support, values = self.select(pre)
        x_hat = embedding_decode(support, values, self.W_dec, self.b_dec)  # the fast path: f W_dec + b_dec
        reconstruction = squared_error(flat, x_hat)
        with torch.no_grad():
            sparsity = (values > 0).sum().to(flat.dtype) / max(n, 1)
        auxiliary = self.auxiliary_loss(pre, (flat - x_hat).detach(), dead_mask, flat)
        latents = scatter(support, values)
        losses = {"reconstruction": reconstruction, "sparsity": sparsity, "auxiliary": auxiliary}
        return SAEOutput(latents.reshape(*lead, self.d_sae), x_hat.reshape(*lead, self.d_in), losses)

    def auxiliary_loss(self, pre: Tensor, error: Tensor, dead_mask: Tensor | None, x: Tensor | None = None) -> Tensor:
        """``aux_k_coefficient * mean ||error - f_aux W_dec||^2 * Var(x) / Var(error)``, ``f_aux``
        the ``aux_k`` largest dead pre-activations per token (ReLU applied); 0 when none is dead.

        ``Var`` is the batch variance (mean squared distance to the batch mean), taken without
        gradient; without ``x`` (or for a one-row batch) the factor is left out.
        """
        zero = pre.new_zeros(())
        if dead_mask is None or self.aux_k_coefficient == 0:
            return zero
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return zero
        dead_pre = pre.masked_fill(~dead_mask.to(device=pre.device, dtype=torch.bool), float("-inf"))
        error_hat = embedding_decode(*topk_per_row(dead_pre, min(self.aux_k, n_dead)), self.W_dec)
        weight = self.aux_k_coefficient
        if x is not None and x.shape[0] > 1:
            with torch.no_grad():
                error_variance = float(batch_variance(error))
                weight *= float(batch_variance(x)) / error_variance if error_variance > 0 else 0.0
        return weight * squared_error(error, error_hat)


def scatter(support: Support, values: Tensor) -> Tensor:
    """The dense ``[N, M]`` latents with ``values`` on ``support`` (differentiable in ``values``)."""
    dense = values.new_zeros(support.shape[0] * support.shape[1])
    return dense.index_put((support.flat,), values).view(support.shape)
