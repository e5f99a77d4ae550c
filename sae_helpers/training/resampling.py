"""Dead-latent resampling, Anthropic "Towards Monosemanticity" style.

Dead latents are pointed at inputs the SAE reconstructs badly, sampled with
probability proportional to the squared reconstruction loss from a pool of inputs much
larger than one batch (Anthropic draw from 819,200; the trainer passes
``TrainConfig.resample_pool_size`` rows sampled from the training data): the decoder row
becomes the centred input's direction, the encoder column the same direction
scaled to 0.2x the mean norm of the live encoder columns, the latent's biases go to
zero, and its Adam moments are reset. The trainer then drops the learning rate to
0.1x and warms it back up.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..saes.base import SAE


@torch.no_grad()
def per_sample_squared_error(sae: SAE, x: Tensor, chunk: int = 8192) -> Tensor:
    """``||x - x_hat||^2`` of every row of ``x`` (float64, on the CPU), in chunks of ``chunk`` rows."""
    losses = []
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk].to(device=sae.device, dtype=sae.dtype)
        losses.append((rows - sae(rows).reconstruction).double().pow(2).sum(-1).cpu())
    return torch.cat(losses)


@torch.no_grad()
def resample_dead_latents(
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    dead: Tensor,
    x: Tensor,
    generator: torch.Generator,
    encoder_norm_ratio: float = 0.2,
) -> int:
    """Re-initialise the latents flagged in the boolean mask ``dead`` from the input pool ``x``
    (rows in the units the SAE is trained on; any number, processed in chunks).

    Returns how many latents were resampled.
    """
    dead_idx = dead.nonzero().flatten().to(sae.device)
    n_dead = len(dead_idx)
    if n_dead == 0:
        return 0
    weights = per_sample_squared_error(sae, x).pow(2)
    if not float(weights.sum()) > 0:
        weights = torch.ones_like(weights)
    chosen = torch.multinomial(weights, n_dead, replacement=True, generator=generator)
    centred = x[chosen].to(device=sae.device, dtype=sae.dtype) - sae.b_dec
    directions = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)

    alive = ~dead.to(sae.device)
    enc_norms = sae.W_enc.norm(dim=0)
    encoder_norm = float(enc_norms[alive].mean()) if bool(alive.any()) else 1.0
    sae.reinitialize_latents_(dead_idx, directions, encoder_norm * encoder_norm_ratio)

    params = dict(sae.named_parameters())
    for name, axis in sae.latent_axes.items():
        state = optimizer.state.get(params[name])
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(axis, dead_idx, 0.0)
    return n_dead
