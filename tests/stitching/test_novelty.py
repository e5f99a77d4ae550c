"""sae_helpers/stitching/novelty.py (insertion effects, the fitted threshold, the cosine nulls) against
independent float64 references.

References: latent activations and reconstructions of the source SAEs computed by their own
``encode`` / ``decode``; MSE changes measured by literally building the stitched SAE and
re-evaluating it; a dense cosine matrix; breadth-first search for connected components; brute
force over thresholds; SAEs built by hand from known feature directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sae_helpers as sh
from sae_helpers import stitching
from tests.stitching.saes import ARCHS, SITE, D, inputs, random_sae


def test_analyze_with_saes_of_different_widths_names_both():
    with pytest.raises(ValueError, match="d_in mismatch: the small SAE has d_in=12, the large SAE d_in=8"):
        stitching.analyze(random_sae("relu", 20, 1), random_sae("relu", 33, 2, d=8), torch.randn(64, D))


@pytest.mark.parametrize("arch", ARCHS)
def test_closed_form_delta_mse_equals_literal_insertion(arch):
    small, large = random_sae(arch, 20, seed=11), random_sae(arch, 33, seed=12)
    x = inputs(600)
    table, summary = stitching.analyze(small, large, x, batch_size=97)
    base = sh.evaluate(small.for_inference(), x)["mse"]
    for j in (0, 4, 17, 32):
        literal = sh.evaluate(stitching.stitch(small, large, add=[j]), x)["mse"] - base
        assert table.delta_mse[j] == pytest.approx(literal, rel=1e-9, abs=1e-14)
    assert table.novel.any() and not table.novel.all()
    assert list(table.columns[:3]) == ["max_cos", "argmax_cos", "delta_mse"]
    assert table.novel.dtype == bool and table.index.name == "latent"
    assert summary["n_tokens"] == 600 and 0 <= summary["proxy_accuracy"] <= 1


def test_delta_mse_streams_from_a_cache_like_a_tensor(tmp_path):
    from safetensors.torch import save_file

    small, large = random_sae("relu", 20, seed=11), random_sae("relu", 33, seed=12)
    x = inputs(300)
    save_file({"activations": x}, str(tmp_path / "x.safetensors"))
    from_file, _ = stitching.analyze(small, large, tmp_path / "x.safetensors", batch_size=64)
    from_tensor, _ = stitching.analyze(small, large, x, batch_size=1000)
    np.testing.assert_allclose(from_file.delta_mse, from_tensor.delta_mse, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("block", [1, 3, 2048])
def test_blockwise_max_cosine_equals_a_dense_reference(block):
    small, large = random_sae("relu", 11, seed=1), random_sae("relu", 17, seed=2)
    dense = torch.nn.functional.normalize(large.W_dec.detach(), dim=1) @ torch.nn.functional.normalize(
        small.W_dec.detach(), dim=1).T
    match = stitching.decoder_match(large, small, block=block)
    torch.testing.assert_close(match.max_cos, dense.max(1).values, rtol=1e-12, atol=1e-12)
    assert torch.equal(match.argmax, dense.argmax(1))


def test_fitted_threshold_maximises_accuracy_by_brute_force():
    rng = np.random.default_rng(0)
    max_cos = np.round(rng.uniform(0, 1, 200), 2)  # ties included
    novel = rng.uniform(0, 1, 200) > max_cos  # noisy: low cosine tends to be novel
    threshold, accuracy = stitching.fit_threshold(max_cos, novel)
    candidates = np.r_[0.0, np.unique(max_cos), 1.01]
    best = max(stitching.proxy_accuracy(max_cos, novel, t) for t in candidates)
    assert accuracy == pytest.approx(best)
    assert stitching.proxy_accuracy(max_cos, novel, threshold) == pytest.approx(accuracy)
    assert stitching.fit_threshold([0.2, 0.9], [True, False])[0] == pytest.approx(0.55)


def test_dead_latents_are_not_novel_and_not_counted():
    small, large = random_sae("jumprelu", 20, seed=11), random_sae("jumprelu", 33, seed=12)
    with torch.no_grad():
        large.threshold[[3, 8]] = 1e9  # never fire
    table, summary = stitching.analyze(small, large, inputs())
    assert summary["n_dead"] == 2 and list(table.index[table.dead]) == [3, 8]
    assert (table.delta_mse[[3, 8]] == 0).all() and not table.novel[[3, 8]].any()
    live = table[~table.dead]
    assert summary["frac_novel"] == pytest.approx(live.novel.mean())
    assert summary["proxy_accuracy"] == pytest.approx(((live.max_cos < summary["threshold"]) == live.novel).mean())


def known_feature_saes(n_known: int = 12, n_features: int = 24, d: int = 32):
    """JumpReLU SAEs built by hand on known features: the narrow one holds the first
    ``n_known`` features, the wide one all of them (shuffled); different b_dec."""
    data = sh.SyntheticFeatures(d=d, n_features=n_features, firing_prob=0.08, offset=1.0, seed=3)
    features = data.features.double()

    def sae(which, b_dec):
        out = sh.create_sae("jumprelu", d, len(which), dtype=torch.float64, metadata=dict(SITE))
        with torch.no_grad():
            out.W_enc.copy_(features[which].T)
            out.W_dec.copy_(features[which])
            out.b_dec.copy_(b_dec)
            out.b_enc.copy_((out.b_dec - data.offset_vector.double()) @ out.W_enc)  # pre = (x - offset) . f_j
            out.threshold.fill_(0.35)
        return out

    order = torch.randperm(n_features, generator=torch.Generator().manual_seed(0))
    narrow = sae(list(range(n_known)), data.offset_vector.double())
    wide = sae(order.tolist(), torch.zeros(d, dtype=torch.float64))
    return data, narrow, wide, order


def test_hand_built_known_features_are_classed_exactly():
    data, narrow, wide, order = known_feature_saes()
    table, summary = stitching.analyze(narrow, wide, data.sample(20_000, seed=1).x.double())
    expected = (order >= 12).numpy()  # wide latent j carries feature order[j]
    assert (table.novel.to_numpy() == expected).all()
    assert summary["proxy_accuracy"] == 1.0 and summary["n_dead"] == 0
    assert summary["frac_novel"] == pytest.approx(0.5)
    assert table.max_cos[~expected].min() > 0.999 > summary["threshold"] > table.max_cos[expected].max()


@pytest.fixture(scope="module")
def trained_known_features():
    """A JumpReLU SAE of 16 latents (too narrow for 48 features) and one of 64, trained on
    features with graded (Zipf) firing rates (about 15 s on one thread)."""
    data = sh.SyntheticFeatures(d=24, n_features=48, firing_prob=sh.data.zipf_firing_probs(48, p_max=0.3, exponent=0.7),
                                seed=0)
    train, held_out = data.sample(60_000, seed=0).x, data.sample(20_000, seed=1).x
    common = dict(steps=2000, batch_size=512, lr=3e-3, seed=0, progress=False, l0_coefficient=3.0)
    return data, sh.train_sae(train, "jumprelu", 16, **common), sh.train_sae(train, "jumprelu", 64, **common), held_out


def test_trained_wide_sae_latents_for_unlearned_features_are_novel(trained_known_features):
    data, narrow, wide, held_out = trained_known_features
    table, _ = stitching.analyze(narrow, wide, held_out)
    features = torch.nn.functional.normalize(data.features.double(), dim=1)
    narrow_cos = features @ torch.nn.functional.normalize(narrow.W_dec.detach().double(), dim=1).T
    wide_cos = features @ torch.nn.functional.normalize(wide.W_dec.detach().double(), dim=1).T
    covered = narrow_cos.max(1).values  # how well the narrow SAE learned each feature
    carried_cos, carried = wide_cos.max(0)  # the feature each wide latent carries
    live = torch.tensor(~table.dead.to_numpy())
    carrying = (carried_cos > 0.9) & live
    learned = carrying & (covered[carried] > 0.9)
    unlearned = carrying & (covered[carried] < 0.7)  # between 0.7 and 0.9: partly learned, not judged
    novel = torch.tensor(table.novel.to_numpy())
    assert learned.sum() >= 5 and unlearned.sum() >= 10
    # Tolerance: at least 80% agreement within each class.
    assert novel[unlearned].double().mean() >= 0.8
    assert (~novel[learned]).double().mean() >= 0.8


def test_cosine_nulls_and_trained_latents_against_independent_computations():
    x = inputs(2_000, d=16)
    common = dict(steps=30, batch_size=200, lr=3e-2, l1_coefficient=1.0, progress=False)
    small = sh.train_sae(x, "relu", 8, seed=1, **common)
    large = sh.train_sae(x, "relu", 12, seed=2, **common)
    nulls = stitching.cosine_nulls(small, large, seed=4)
    gen = torch.Generator().manual_seed(4)
    rand_large, rand_small = (torch.nn.functional.normalize(torch.randn(n, 16, generator=gen, dtype=torch.float64),
                                                            dim=1) for n in (12, 8))
    np.testing.assert_allclose(nulls["random"], (rand_large @ rand_small.T).max(1).values.numpy(), rtol=1e-12)
    initial = [torch.nn.functional.normalize(sh.saes.initial.initial_decoder(s), dim=1) for s in (large, small)]
    np.testing.assert_allclose(nulls["initial"], (initial[0] @ initial[1].T).max(1).values.numpy(), rtol=1e-12)
    np.testing.assert_allclose(nulls["trained"], stitching.decoder_match(large, small).max_cos.numpy())
    table, summary = stitching.analyze(small, large, x)
    trained = (sh.training.decoder_drift(large) <= 0.9).numpy()
    assert 0 < trained.sum() < 12  # 30 steps: some latents moved, some did not
    assert (table.trained.to_numpy() == trained).all() and summary["n_trained"] == trained.sum()
    live_trained = table[trained & ~table.dead.to_numpy()]
    assert summary["frac_novel_trained"] == pytest.approx(live_trained.novel.mean())
    untracked = random_sae("relu", 12, seed=3, d=16)
    assert "initial" not in stitching.cosine_nulls(small, untracked)
    table, summary = stitching.analyze(small, untracked, x)
    assert "trained" not in table and math.isnan(summary["frac_novel_trained"])
