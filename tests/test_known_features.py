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
