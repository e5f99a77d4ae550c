"""The baseline (ReLU, L1) SAE against a float64 re-derivation."""

import pytest
import torch

from sae_helpers.saes import ReluSAE


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_forward_loss_and_gradients_match_rederivation(decoder):
    gen = torch.Generator().manual_seed(0)
    sae = ReluSAE(10, 30, dtype=torch.float64).init_weights(gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.2 * torch.randn(30, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(0.2 * torch.randn(10, generator=gen, dtype=torch.float64))
    x = torch.randn(50, 10, generator=gen, dtype=torch.float64)
    lam = 0.3
    out = sae(x, decoder=decoder)
    (out.losses["reconstruction"] + lam * out.losses["sparsity"]).backward()

    p = {n: q.detach().clone().requires_grad_(True) for n, q in sae.named_parameters()}
    f = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    recon, l1 = ((x - x_hat) ** 2).sum(1).mean(), f.abs().sum(1).mean()
    torch.testing.assert_close(out.latents, f.detach())
    torch.testing.assert_close(out.reconstruction, x_hat.detach())
    torch.testing.assert_close(out.losses["reconstruction"], recon.detach())
    torch.testing.assert_close(out.losses["sparsity"], l1.detach())
    (recon + lam * l1).backward()
    for name, q in sae.named_parameters():
        torch.testing.assert_close(q.grad, p[name].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_fold_activation_scale_is_exact():
    """An SAE trained on s*x, folded, gives sae(s*x)/s on raw x, for every architecture."""
    from sae_helpers import create_sae

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    for arch, kwargs in [("relu", {}), ("gated", {}), ("jumprelu", {}), ("topk", {"k": 5}), ("batchtopk", {"k": 5})]:
        sae = create_sae(arch, 8, 24, dtype=torch.float64, **kwargs).init_weights(gen)
        with torch.no_grad():
            for name in sae.bias_like:
                getattr(sae, name).copy_(0.3 * torch.randn(getattr(sae, name).shape, generator=gen))
        s = 2.7
        f_scaled, x_hat_scaled = sae.encode(s * x), sae.decode(sae.encode(s * x))
        sae.fold_activation_scale_(s)
        torch.testing.assert_close(sae.encode(x), f_scaled / s, msg=arch)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat_scaled / s, msg=arch)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(24, dtype=torch.float64), msg=arch)
