"""SAEs and inputs shared by the stitching tests: float64 SAEs with random weights and biases."""

from __future__ import annotations

import torch

import sae_helpers as sh

D = 12
SITE = {"model_name": "m", "hook_name": "blocks.0.hook_resid_post"}
ARCHS = ["relu", "gated", "jumprelu", "batchtopk"]


def random_sae(arch: str, width: int, seed: int, d: int = D, metadata=None) -> sh.SAE:
    """A float64 SAE with random weights and random non-zero biases (b_dec included)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"k": 4} if arch in ("topk", "batchtopk") else {}
    sae = sh.create_sae(arch, d, width, dtype=torch.float64, metadata=metadata or dict(SITE), **kwargs)
    sae.init_weights(gen)
    with torch.no_grad():
        sae.W_enc.mul_(1 + 0.5 * torch.rand(sae.W_enc.shape, generator=gen, dtype=torch.float64))
        for name, param in sae.named_parameters():
            if name not in ("W_enc", "W_dec"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


def inputs(n: int = 400, seed: int = 5, d: int = D) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3
