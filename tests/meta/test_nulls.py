"""The meta-SAE's covariance-matched and initial-decoder nulls, against numpy statistics and hand redraws."""

import hashlib
import math

import numpy as np
import pytest
import torch

from sae_helpers import create_sae, train_sae
from sae_helpers.meta import (
    COVARIANCE_SEED_OFFSET,
    NULLS,
    covariance_matched_rows,
    decoder_directions,
    gaussian_like,
    initial_decoder_rows,
    meta_config,
    null_rows,
    random_unit_rows,
    train_meta_sae,
    train_null_meta_sae,
)
from sae_helpers.saes.initial import initial_decoder
from tests.meta.test_meta_sae import composed_dictionary, float64_fve


def anisotropic_gaussian(n, seed=0):
    """``n`` rows of a Gaussian in 8 dimensions with a known mean and covariance ``Q diag(s^2) Q.T``."""
    gen = torch.Generator().manual_seed(seed)
    std = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1, 0.05], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    mean = torch.linspace(-2, 2, 8, dtype=torch.float64)
    rows = mean + (torch.randn(n, 8, generator=gen, dtype=torch.float64) * std) @ q.T
    return rows, mean.numpy(), (q @ torch.diag(std**2) @ q.T).numpy()


def test_gaussian_like_matches_the_mean_and_covariance_within_sampling_error():
    n = 50_000
    rows, true_mean, true_cov = anisotropic_gaussian(n)
    draws = gaussian_like(rows.float(), n, torch.Generator().manual_seed(1)).numpy()
    assert draws.dtype == np.float64 and draws.shape == (n, 8)
    target_mean, target_cov = rows.numpy().mean(0), np.cov(rows.numpy(), rowvar=False)
    # standard errors of a Gaussian sample's mean and covariance entries
    se_mean = np.sqrt(np.diag(target_cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(target_cov), np.diag(target_cov)) + target_cov**2) / n)
    assert (np.abs(draws.mean(0) - target_mean) < 5 * se_mean).all()
    assert (np.abs(np.cov(draws, rowvar=False) - target_cov) < 5 * se_cov).all()
    # against the known distribution (two samples' errors)
    assert (np.abs(np.cov(draws, rowvar=False) - true_cov) < 5 * np.sqrt(2) * se_cov).all()
    assert (np.abs(draws.mean(0) - true_mean) < 5 * np.sqrt(2) * se_mean).all()
    # the anisotropy is the input's: eigenvalues 9 ... 0.0025
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov(draws, rowvar=False))[::-1],
                               [9, 4, 2.25, 1, 0.25, 0.0625, 0.01, 0.0025], rtol=0.05)


def test_covariance_matched_rows_are_unit_deterministic_and_keep_the_anisotropy():
    n = 20_000
    rows, _, _ = anisotropic_gaussian(n, seed=2)
    units = decoder_directions(rows)
    matched = covariance_matched_rows(rows, seed=3)  # rows are scaled to unit norm first
    assert matched.dtype == torch.float32 and matched.shape == (n, 8)
    torch.testing.assert_close(matched.norm(dim=1), torch.ones(n))
    assert torch.equal(matched, covariance_matched_rows(rows, seed=3))
    torch.testing.assert_close(matched, covariance_matched_rows(units, seed=3), rtol=0, atol=1e-5)
    assert not torch.equal(matched, covariance_matched_rows(units, seed=4))
    # the documented generator
    draws = gaussian_like(units, n, torch.Generator().manual_seed(COVARIANCE_SEED_OFFSET + 3))
    torch.testing.assert_close(matched, (draws / draws.norm(dim=1, keepdim=True)).float())
    # normalising the draws changes their mean and covariance a little, but they keep the unit rows'
    # mean direction and anisotropy (eigenvalues 0.215 ... 0.0002); random unit rows have neither
    u, m, r = units.double().numpy(), matched.double().numpy(), random_unit_rows(n, 8).double().numpy()
    cosine = u.mean(0) @ m.mean(0) / (np.linalg.norm(u.mean(0)) * np.linalg.norm(m.mean(0)))
    assert cosine > 0.99
    cov = {name: np.cov(x, rowvar=False) for name, x in (("units", u), ("matched", m), ("random", r))}
    distance = {name: np.linalg.norm(cov[name] - cov["units"]) for name in ("matched", "random")}
    assert distance["matched"] < 0.3 * distance["random"]  # measured 0.063 against 0.267
    spread = {name: np.linalg.eigvalsh(c)[-1] / np.linalg.eigvalsh(c)[0] for name, c in cov.items()}
    assert spread["matched"] > 0.3 * spread["units"] and spread["random"] < 1.2


def test_rank_deficient_rows_give_draws_in_their_subspace():
    gen = torch.Generator().manual_seed(5)
    basis, _ = torch.linalg.qr(torch.randn(16, 3, generator=gen, dtype=torch.float64))  # [16, 3], orthonormal columns
    rows = decoder_directions(torch.randn(500, 3, generator=gen, dtype=torch.float64) @ basis.T)
    matched = covariance_matched_rows(rows, seed=0).double()
    assert torch.isfinite(matched).all()
    outside = matched - matched @ basis @ basis.T
    assert float(outside.norm(dim=1).max()) < 1e-5
    assert float(torch.linalg.svdvals(matched)[2]) > 1.0  # and they fill all three dimensions


def hand_initial_rows(d_sae, d_in, seed):
    """The trainer's documented initialisation, redrawn by hand: uniform rows scaled to unit norm."""
    w = torch.empty(d_sae, d_in).uniform_(-math.sqrt(6 / d_in), math.sqrt(6 / d_in),
                                          generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def base():
    return train_sae(torch.randn(2048, 16, generator=torch.Generator().manual_seed(0)), "relu", 32,
                     l1_coefficient=1.0, steps=20, batch_size=256, seed=7, progress=False, device="cpu")


def test_initial_decoder_rows_redraw_the_initialisation(base):
    rows = initial_decoder_rows(base)
    assert rows.dtype == torch.float32 and rows.device.type == "cpu" and rows.shape == (32, 16)
    torch.testing.assert_close(rows, hand_initial_rows(32, 16, 7), rtol=0, atol=1e-6)
    torch.testing.assert_close(rows, decoder_directions(initial_decoder(base)), rtol=0, atol=0)
    assert not torch.allclose(rows, decoder_directions(base), atol=1e-3)  # training moved the rows
    assert torch.equal(null_rows(base, "initial"), rows)
    for no_config in (create_sae("relu", 16, 32), base.W_dec):
        with pytest.raises(ValueError, match="training_config"):
            initial_decoder_rows(no_config)
    with pytest.raises(ValueError, match="Unknown null"):
        null_rows(base, "shuffled")


def sha256(rows):
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def test_the_null_meta_sae_trains_on_each_null(base, tmp_path):
    settings = {"epochs": 5, "seed": 2, "lr": 1e-3, "batch_size": 32, "min_steps": 1}
    fves = {}
    for null in NULLS:
        rows = null_rows(base, null, seed=2)
        meta, fves[null] = train_null_meta_sae(32, 16, 8, 2, null=null, rows=rows, progress=False, device="cpu",
                                               **settings)
        info = meta.metadata["meta_sae"]
        assert info["null"] is True and info["null_kind"] == null and info["decoder_sha256"] == sha256(rows)
        assert fves[null] == pytest.approx(float64_fve(meta, rows), abs=1e-5)
        if null == "covariance":  # the meta-SAE configuration, trained by hand on the same rows
            by_hand = train_sae(rows, **meta_config(32, 8, 2, **settings).to_dict(), progress=False, device="cpu")
            assert torch.equal(meta.W_dec, by_hand.W_dec)
    # the random null drawn here is the one null_rows gives
    drawn, fve = train_null_meta_sae(32, 16, 8, 2, progress=False, device="cpu", **settings)
    assert fve == fves["random"] and drawn.metadata["meta_sae"]["null_kind"] == "random"
    # a checkpoint of one null is resumed, and refused for another
    first, _ = train_null_meta_sae(32, 16, 8, 2, null="covariance", rows=null_rows(base, "covariance", 2),
                                   checkpoint_dir=tmp_path / "cov", progress=False, device="cpu", **settings)
    again, _ = train_null_meta_sae(32, 16, 8, 2, null="covariance", rows=null_rows(base, "covariance", 2),
                                   checkpoint_dir=tmp_path / "cov", progress=False, device="cpu", **settings)
    assert torch.equal(first.W_dec, again.W_dec)
    with pytest.raises(ValueError, match="other decoder rows"):
        train_null_meta_sae(32, 16, 8, 2, null="initial", rows=null_rows(base, "initial"),
                            checkpoint_dir=tmp_path / "cov", progress=False, device="cpu", **settings)


def test_null_rows_are_checked(base):
    with pytest.raises(ValueError, match="null_rows"):
        train_null_meta_sae(32, 16, 8, 2, null="covariance", progress=False)
    with pytest.raises(ValueError, match="shape"):
        train_null_meta_sae(31, 16, 8, 2, null="initial", rows=null_rows(base, "initial"), progress=False)
    with pytest.raises(ValueError, match="unit norm"):
        train_null_meta_sae(32, 16, 8, 2, null="mine", rows=2 * null_rows(base, "initial"), progress=False)


def test_planted_atoms_beat_their_covariance_null_which_beats_the_random_null():
    """Rows that are sparse sums of atoms: the covariance null has their anisotropy (a 16-dimensional
    span in 32 dimensions) but not their sparse structure."""
    _, rows, _ = composed_dictionary(n_atoms=16, d=32, n=512, max_atoms=2)
    settings = {"epochs": 200, "seed": 0, "lr": 1e-2, "batch_size": 512, "min_steps": 1}
    _, real = train_meta_sae(rows, 16, 2, null=False, progress=False, device="cpu", **settings)
    fve = {null: train_null_meta_sae(512, 32, 16, 2, null=null, rows=null_rows(rows, null), progress=False,
                                     device="cpu", **settings)[1]
           for null in ("covariance", "random")}
    # measured: 0.996, 0.606, 0.308
    assert real.fve > 0.9
    assert real.fve - fve["covariance"] > 0.2
    assert fve["covariance"] - fve["random"] > 0.15


def test_covariance_matched_rows_have_the_same_bits_whatever_the_thread_count():
    """The checkpoint of a null records its rows' hash: rows drawn on two threads must resume a run drawn on
    one. (At this shape the same computation on two threads, without one_thread, differs in the last bits.)"""
    rows = torch.randn(2048, 256, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 256)
    threads = torch.get_num_threads()
    drawn = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            drawn[n] = covariance_matched_rows(rows, seed=1)
            assert torch.get_num_threads() == n  # restored
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(drawn[1], drawn[2])
