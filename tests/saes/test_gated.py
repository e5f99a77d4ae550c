"""The Gated SAE against an independent float64 re-derivation of the paper's equations."""

import pytest
import torch

from sae_helpers.saes import GatedSAE

B, D, M, LAM = 64, 12, 40, 0.7


def random_gated(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    sae = GatedSAE(D, M, dtype=dtype).init_weights(gen)
    with torch.no_grad():
        sae.b_gate.copy_(0.3 * torch.randn(M, generator=gen))
        sae.r_mag.copy_(0.5 * torch.randn(M, generator=gen))
        sae.b_mag.copy_(0.3 * torch.randn(M, generator=gen))
        sae.b_dec.copy_(0.2 * torch.randn(D, generator=gen))
        sae.W_enc.mul_(1 + 0.5 * torch.rand(D, M, generator=gen))
    return sae


def data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=gen, dtype=torch.float64)


def reference_terms(p, x, lam):
    """The paper's loss with separate W_gate / W_mag matmuls and explicit frozen copies."""
    W_gate, b_gate, r_mag, b_mag, W_dec, b_dec = (p[k] for k in ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"))
    x_c = x - b_dec
    pi_gate = x_c @ W_gate + b_gate
    W_mag = torch.exp(r_mag)[None, :] * W_gate
    pi_mag = x_c @ W_mag + b_mag
    f = (pi_gate > 0).to(x.dtype) * torch.relu(pi_mag)
    x_hat = f @ W_dec + b_dec
    W_dec_frozen, b_dec_frozen = W_dec.detach().clone(), b_dec.detach().clone()
    x_aux = torch.relu(pi_gate) @ W_dec_frozen + b_dec_frozen
    return {
        "reconstruction": ((x - x_hat) ** 2).sum(-1).mean(),
        "sparsity": lam * torch.relu(pi_gate).sum(-1).mean(),
        "auxiliary": ((x - x_aux) ** 2).sum(-1).mean(),
    }


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_loss_and_gradients_match_float64_rederivation(decoder):
    sae, x = random_gated(), data()
    out = sae(x, decoder=decoder)
    ours = out.losses["reconstruction"] + LAM * out.losses["sparsity"] + out.losses["auxiliary"]
    ours.backward()

    params = {n: p.detach().clone().requires_grad_(True) for n, p in sae.named_parameters()}
    ref_terms = reference_terms(params, x, LAM)
    for name in ref_terms:
        scale = LAM if name == "sparsity" else 1.0
        torch.testing.assert_close(scale * out.losses[name], ref_terms[name], rtol=1e-12, atol=1e-12)
    sum(ref_terms.values()).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_gradients_match_closed_forms(decoder):
    """Hand-derived gradients, independent of autograd."""
    sae, x = random_gated(seed=3), data(seed=4)
    out = sae(x, decoder=decoder)
    (out.losses["reconstruction"] + LAM * out.losses["sparsity"] + out.losses["auxiliary"]).backward()
    with torch.no_grad():
        u = (x - sae.b_dec) @ sae.W_enc
        pi_gate, pi_mag = u + sae.b_gate, torch.exp(sae.r_mag) * u + sae.b_mag
        gate, mag_on = (pi_gate > 0).double(), (pi_mag > 0).double()
        f = gate * torch.relu(pi_mag)
        x_hat = f @ sae.W_dec + sae.b_dec
        x_aux = torch.relu(pi_gate) @ sae.W_dec + sae.b_dec
        g_f = 2 * (x_hat - x) @ sae.W_dec.T / B  # dL_recon / df
        g_gate = gate * (LAM / B + 2 * (x_aux - x) @ sae.W_dec.T / B)  # dL / dpi_gate
        expected = {
            "W_dec": 2 * f.T @ (x_hat - x) / B,
            "b_gate": g_gate.sum(0),
            "b_mag": (gate * mag_on * g_f).sum(0),
            "r_mag": (gate * mag_on * g_f * torch.exp(sae.r_mag) * u).sum(0),
        }
    for name, value in expected.items():
        torch.testing.assert_close(getattr(sae, name).grad, value, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_auxiliary_term_never_trains_the_decoder(decoder):
    sae, x = random_gated(), data()
    sae(x, decoder=decoder).losses["auxiliary"].backward()
    assert sae.W_dec.grad is None or torch.count_nonzero(sae.W_dec.grad) == 0
    # b_dec's only gradient from the auxiliary term comes through x_c = x - b_dec in the
    # encoder (not detached); through the frozen decoder bias it gets none.
    with torch.no_grad():
        u = (x - sae.b_dec) @ sae.W_enc
        pi_gate = u + sae.b_gate
        x_aux = torch.relu(pi_gate) @ sae.W_dec + sae.b_dec
        g_gate = (pi_gate > 0).double() * (2 * (x_aux - x) @ sae.W_dec.T / B)
        through_encoder_only = -(g_gate.sum(0) @ sae.W_enc.T)
    torch.testing.assert_close(sae.b_dec.grad, through_encoder_only, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_gate_bias_gets_gradient_only_from_sparsity_and_auxiliary(decoder):
    sae, x = random_gated(), data()
    sae(x, decoder=decoder).losses["reconstruction"].backward()
    assert sae.b_gate.grad is None or torch.count_nonzero(sae.b_gate.grad) == 0
    for term in ("sparsity", "auxiliary"):
        sae.zero_grad()
        sae(x, decoder=decoder).losses[term].backward()
        assert torch.count_nonzero(sae.b_gate.grad) > 0, term


def test_one_encoder_matmul(monkeypatch):
    """W_gate (x - b_dec) is computed once and shared by the gate and magnitude paths."""
    sae, x = random_gated(), data()
    calls = []
    original = GatedSAE.project

    def counting(self, inp):
        calls.append(1)
        return original(self, inp)

    monkeypatch.setattr(GatedSAE, "project", counting)
    sae(x)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jumprelu_conversion_is_exact(dtype):
    sae = random_gated(seed=5, dtype=dtype)
    x = data(seed=6).to(dtype) * 2
    jump = sae.to_jumprelu()
    f_gated, f_jump = sae.encode(x), jump.encode(x)
    assert torch.equal(f_gated > 0, f_jump > 0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(f_jump, f_gated, rtol=tol, atol=tol)
    torch.testing.assert_close(jump.decode(f_jump), sae.decode(f_gated), rtol=tol, atol=tol)
    assert (f_gated > 0).any() and (f_gated == 0).any()


@pytest.mark.parametrize("decoder", ["auto", "sparse"])  # the fused step on both decoder paths
def test_decoder_rows_stay_unit_norm_under_projected_updates(decoder):
    sae, x = random_gated(), data()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(20):
        out = sae(x, decoder=decoder)
        opt.zero_grad()
        (out.losses["reconstruction"] + LAM * out.losses["sparsity"] + out.losses["auxiliary"]).backward()
        sae.remove_parallel_decoder_grad_()
        rows = sae.W_dec.detach()
        assert torch.allclose((sae.W_dec.grad * rows).sum(1), torch.zeros(M, dtype=rows.dtype), atol=1e-12)
        opt.step()
        sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(M, dtype=torch.float64))
