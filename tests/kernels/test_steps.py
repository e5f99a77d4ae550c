"""The fused training steps (sae_helpers.kernels.relu, .gated): their sparse decoder path
against their dense path, and both against the plain autograd forward of the architecture
files (values of every output and loss term, and every gradient)."""

import functools

import pytest
import torch

from sae_helpers.kernels import sparse as sd
from sae_helpers.kernels.sparse import DENSITY_CROSSOVER
from sae_helpers.saes import GatedSAE, ReluSAE

F32 = {"rtol": 1e-4, "atol": 1e-5}


D, M, B, LAM = 12, 40, 64, 0.7


def make_sae(arch, seed=0, dtype=torch.float64, open_fraction=None):
    gen = torch.Generator().manual_seed(seed)
    cls = GatedSAE if arch == "gated" else ReluSAE
    sae = cls(D, M, dtype=dtype).init_weights(gen)
    with torch.no_grad():
        for p in sae.parameters():
            if p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        sae.W_enc.mul_(1 + 0.5 * torch.rand(D, M, generator=gen))
    return sae


def set_open_fraction(sae, x, fraction):
    """Bias every latent so that ``fraction`` of the rows of ``x`` are active (gate open)."""
    with torch.no_grad():
        u = sae.project(x)
        k = round(fraction * x.shape[0])
        bias = -u.amax(0) - 1.0 if k == 0 else -u.kthvalue(x.shape[0] - k, dim=0).values
        if isinstance(sae, GatedSAE):
            sae.b_gate.copy_(bias)
        else:
            sae.b_enc.copy_(bias)


def run_step(sae, x, path, extra=None, terms=None, x_grad=True):
    """Values and gradients of one forward/backward on decoder path ``path`` (``"plain"``:
    the plain autograd forward, ``sae(x, fused=False)``)."""
    sae.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x_grad)
    out = sae(x, fused=False) if path == "plain" else sae(x, decoder=path)
    losses = out.losses
    terms = terms or list(losses)
    loss = sum((LAM if t == "sparsity" else 1.0) * losses[t] for t in terms)
    if extra is not None:  # incoming gradients on the latents and the reconstruction
        r_lat, r_rec = extra
        loss = loss + (out.latents * r_lat).sum() + (out.reconstruction**2 * r_rec).sum()
    loss.backward()
    sparse = getattr(losses["reconstruction"].grad_fn, "support", None) is not None
    values = {"latents": out.latents.detach(), "x_hat": out.reconstruction.detach()}
    values.update({k: v.detach() for k, v in losses.items()})
    grads = {n: p.grad for n, p in sae.named_parameters()} | {"x": x.grad}
    return sparse, values, grads


def assert_paths_agree(sae, x, tol, extra=None, terms=None, paths=("dense", "sparse"), x_grad=True):
    """The values and gradients of decoder path ``paths[1]`` equal those of ``paths[0]``."""
    dense_used, dense_values, dense_grads = run_step(sae, x, paths[0], extra, terms, x_grad)
    sparse_used, sparse_values, sparse_grads = run_step(sae, x, paths[1], extra, terms, x_grad)
    assert not dense_used and sparse_used == (paths[1] == "sparse")
    assert dense_values.keys() == sparse_values.keys() and dense_grads.keys() == sparse_grads.keys()
    for name, value in dense_values.items():
        torch.testing.assert_close(sparse_values[name], value, **tol, msg=name)
    for name, grad in dense_grads.items():
        other = sparse_grads[name]
        if grad is None or other is None:  # a term that does not reach the parameter
            assert (grad is None or not grad.any()) and (other is None or not other.any()), name
        else:
            torch.testing.assert_close(other, grad, **tol, msg=name)
    return dense_grads, sparse_grads


@pytest.mark.parametrize("arch", ["gated", "relu"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, {"rtol": 1e-10, "atol": 1e-12}), (torch.float32, F32)])
def test_sparse_step_equals_dense_step(arch, dtype, tol):
    sae = make_sae(arch, dtype=dtype)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=dtype)
    set_open_fraction(sae, x, 0.2)
    with torch.no_grad():  # a row with no active latent
        x[3] = 0.0
        x[3] -= 10 * sae.W_enc.sum(1) / sae.W_enc.pow(2).sum()
    assert_paths_agree(sae, x, tol)


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_sparse_step_with_incoming_latent_and_reconstruction_gradients(arch):
    sae = make_sae(arch, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    extra = tuple(torch.randn(B, w, generator=gen, dtype=torch.float64) for w in (M, D))
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, extra=extra)
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, extra=extra, terms=["sparsity"])


@pytest.mark.parametrize("term", ["reconstruction", "sparsity", "auxiliary"])
def test_gated_terms_one_at_a_time(term):
    """Each term alone: in particular the auxiliary term's frozen decoder (no W_dec
    gradient; b_dec only through the encoder) and the gate's Heaviside (no b_gate
    gradient from the reconstruction)."""
    sae = make_sae("gated", seed=4)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dense, sparse = assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12}, terms=[term])
    if term == "auxiliary":
        assert sparse["W_dec"] is None or not sparse["W_dec"].any()
        with torch.no_grad():
            u = sae.project(x)
            pi_gate = u + sae.b_gate
            x_aux = torch.relu(pi_gate) @ sae.W_dec + sae.b_dec
            g_gate = (pi_gate > 0).double() * (2 * (x_aux - x) @ sae.W_dec.T / B)
        torch.testing.assert_close(sparse["b_dec"], -(g_gate.sum(0) @ sae.W_enc.T), rtol=1e-10, atol=1e-12)
    if term == "reconstruction":
        assert sparse["b_gate"] is None or not sparse["b_gate"].any()


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_all_rows_empty_and_batch_of_one(arch):
    sae = make_sae(arch, seed=6)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    set_open_fraction(sae, x, 0.0)
    _, values, _ = run_step(sae, x, "sparse")
    assert not values["latents"].any()
    assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12})
    set_open_fraction(sae, x, 0.3)
    assert_paths_agree(sae, x[:1], {"rtol": 1e-10, "atol": 1e-12})


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_auto_picks_sparse_at_low_density_and_dense_at_high(arch, monkeypatch):
    monkeypatch.setattr(sd, "MIN_SPARSE_MACS", 0)
    sae = make_sae(arch, seed=8, dtype=torch.float32)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(9))
    set_open_fraction(sae, x, DENSITY_CROSSOVER / 2)
    assert run_step(sae, x, "auto")[0]
    set_open_fraction(sae, x, min(1.0, 2 * DENSITY_CROSSOVER))
    assert not run_step(sae, x, "auto")[0]
    set_open_fraction(sae, x, DENSITY_CROSSOVER / 2)
    assert not run_step(sae, x, "dense")[0]


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_sparse_step_in_bfloat16(arch):
    """16-bit parameters work on the sparse path (sampled products in float32) and agree
    with the dense path to bfloat16 precision."""
    sae = make_sae(arch, seed=10, dtype=torch.bfloat16)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(11)).bfloat16()
    set_open_fraction(sae, x, 0.1)
    _, dense_values, dense_grads = run_step(sae, x, "dense")
    _, sparse_values, sparse_grads = run_step(sae, x, "sparse")
    torch.testing.assert_close(sparse_values["latents"], dense_values["latents"], rtol=0, atol=0)
    for name in ("x_hat", "reconstruction"):
        torch.testing.assert_close(sparse_values[name], dense_values[name], rtol=0.02, atol=0.02, msg=name)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=0.05, atol=0.02, msg=name)


def test_training_runs_agree_over_several_steps():
    """Whole ``TrainingRun.step``s (Adam, decoder projection and renormalisation) on both paths."""
    from sae_helpers.training import TrainConfig, TrainingRun

    sample = torch.randn(256, D, generator=torch.Generator().manual_seed(12))
    cfg = TrainConfig(arch="gated", width=M, l1_coefficient=1e-2, steps=100, batch_size=64, resample_every=0,
                      b_dec_init="mean", init_sample_size=256, dtype="float64")
    runs = {}
    for path in ("dense", "sparse"):
        run = TrainingRun.start(cfg, sample, torch.device("cpu"))
        run.sae.forward = functools.partial(run.sae.forward, decoder=path)  # training itself runs "auto"
        for i in range(4):
            run.step(sample[64 * i: 64 * (i + 1)])
        runs[path] = run
    for (name, p), q in zip(runs["dense"].sae.named_parameters(), runs["sparse"].sae.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_frozen_encoder_or_decoder(arch):
    """Parameters that do not require grad get none on either path; the rest still agree."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    for frozen in ("W_enc", "W_dec", "b_dec"):
        sae = make_sae(arch, seed=14)
        getattr(sae, frozen).requires_grad_(False)
        dense, sparse = assert_paths_agree(sae, x, {"rtol": 1e-10, "atol": 1e-12})
        assert dense[frozen] is None and sparse[frozen] is None


# ------------------------------------------------------------------------------ fast vs plain
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("arch", ["gated", "relu"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fused_step_equals_plain_forward(arch, path):
    """The fused step (either decoder path) gives the plain autograd forward's latents,
    reconstruction, every loss term and every gradient (parameters and x), in float64."""
    sae = make_sae(arch, seed=15)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    set_open_fraction(sae, x, 0.2)
    with torch.no_grad():  # a row with no active latent
        x[3] = 0.0
        x[3] -= 10 * sae.W_enc.sum(1) / sae.W_enc.pow(2).sum()
    assert_paths_agree(sae, x, TIGHT, paths=("plain", path))
    assert_paths_agree(sae, x, TIGHT, paths=("plain", path), x_grad=False)


@pytest.mark.parametrize("arch", ["gated", "relu"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fused_step_equals_plain_forward_term_by_term(arch, path):
    """Each loss term alone, and with incoming gradients on the latents and the reconstruction."""
    sae = make_sae(arch, seed=17)
    gen = torch.Generator().manual_seed(18)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    extra = tuple(torch.randn(B, w, generator=gen, dtype=torch.float64) for w in (M, D))
    for term in ["reconstruction", "sparsity"] + (["auxiliary"] if arch == "gated" else []):
        assert_paths_agree(sae, x, TIGHT, terms=[term], paths=("plain", path))
    assert_paths_agree(sae, x, TIGHT, extra=extra, paths=("plain", path))
    assert_paths_agree(sae, x, TIGHT, extra=extra, terms=["sparsity"], paths=("plain", path))


@pytest.mark.parametrize("arch", ["gated", "relu"])
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fused_step_equals_plain_forward_with_frozen_parameters(arch, path):
    """Parameters that do not require grad get none on either path; the rest still agree."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    for frozen in ("W_enc", "W_dec", "b_dec"):
        sae = make_sae(arch, seed=20)
        getattr(sae, frozen).requires_grad_(False)
        plain, fused = assert_paths_agree(sae, x, TIGHT, paths=("plain", path))
        assert plain[frozen] is None and fused[frozen] is None


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_plain_forward_keeps_leading_dimensions(arch):
    sae = make_sae(arch, seed=21)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    fused, plain = sae(x), sae(x, fused=False)
    assert plain.latents.shape == (3, 5, M) and plain.reconstruction.shape == (3, 5, D)
    assert fused.losses.keys() == plain.losses.keys()
    for a, b in zip(fused, plain, strict=True):
        if isinstance(a, dict):
            for name in a:
                torch.testing.assert_close(a[name], b[name], **TIGHT, msg=name)
        else:
            torch.testing.assert_close(a, b, **TIGHT)
    with pytest.raises(ValueError):
        sae(x, decoder="fast")
