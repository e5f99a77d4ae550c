"""Dead-latent resampling, Anthropic "Towards Monosemanticity" style.

Dead latents are pointed at inputs the SAE reconstructs badly (sampled with
probability proportional to the squared reconstruction loss): the decoder row
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
def resample_dead_latents(
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    dead: Tensor,
    x: Tensor,
    generator: torch.Generator,
    encoder_norm_ratio: float = 0.2,
) -> int:
    """Re-initialise the latents flagged in the boolean mask ``dead`` from batch ``x``.

    Returns how many latents were resampled.
    """
    dead_idx = dead.nonzero().flatten().to(sae.device)
    n_dead = len(dead_idx)
    if n_dead == 0:
        return 0
    out = sae(x)
    per_sample_loss = (x - out.reconstruction).double().pow(2).sum(-1)
    weights = per_sample_loss.pow(2).cpu()
    if not float(weights.sum()) > 0:
        weights = torch.ones_like(weights)
    chosen = torch.multinomial(weights, n_dead, replacement=True, generator=generator).to(x.device)
    centred = x[chosen] - sae.b_dec
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
