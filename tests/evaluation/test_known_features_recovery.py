"""End to end on synthetic data with known features: recovery and shrinkage."""

import pytest

from sae_helpers import SyntheticFeatures, evaluate, mmcs, train_sae

SYN = SyntheticFeatures(d=32, n_features=64, firing_prob=0.05, magnitude="uniform")


@pytest.fixture(scope="module")
def trained():
    train = SYN.sample(100_000, seed=0).x
    held_out = SYN.sample(20_000, seed=1).x
    out = {}
    for arch in ("relu", "gated"):
        sae = train_sae(train, arch, 64, 3.0, 3000, batch_size=512, lr=1e-3, seed=0, progress=False)
        out[arch] = (sae, evaluate(sae, held_out))
    return out


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_both_architectures_recover_the_known_features(trained, arch):
    sae, _ = trained[arch]
    assert mmcs(SYN.features, sae.W_dec) >= 0.9


def test_gated_does_not_shrink_while_the_baseline_does_at_comparable_l0(trained):
    relu, gated = trained["relu"][1], trained["gated"][1]
    assert abs(gated["l0"] - relu["l0"]) <= 0.25 * relu["l0"]
    assert abs(gated["relative_reconstruction_bias"] - 1) <= 0.02
    assert relu["relative_reconstruction_bias"] < 0.8
    assert gated["fvu"] < relu["fvu"]


# TopK, BatchTopK and JumpReLU set sparsity without an L1 penalty: they should recover the
# features too, without shrinkage, and BatchTopK's single inference threshold should give
# about the L0 it was trained at (k per token on average) on held-out data.
SELECTION = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "jumprelu": {"l0_coefficient": 3.0},
}


@pytest.fixture(scope="module")
def trained_selection():
    train = SYN.sample(100_000, seed=0).x
    held_out = SYN.sample(20_000, seed=1).x
    out = {}
    for arch, sparsity in SELECTION.items():
        sae = train_sae(train, arch, 64, steps=2000, batch_size=512, lr=1e-3, seed=0, progress=False, **sparsity)
        out[arch] = (sae, evaluate(sae, held_out))
    return out


@pytest.mark.parametrize("arch", list(SELECTION))
def test_selection_architectures_recover_the_features_without_shrinkage(trained_selection, arch):
    sae, metrics = trained_selection[arch]
    assert mmcs(SYN.features, sae.W_dec) >= 0.9
    assert abs(metrics["relative_reconstruction_bias"] - 1) <= 0.02


def test_batchtopk_threshold_gives_the_training_l0_on_held_out_data(trained_selection):
    _, metrics = trained_selection["batchtopk"]
    assert metrics["l0"] == pytest.approx(SELECTION["batchtopk"]["k"], rel=0.15)
