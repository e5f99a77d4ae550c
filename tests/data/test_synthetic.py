import pytest
import torch

from sae_helpers import SyntheticFeatures
from sae_helpers.data import appendix_f_toy, zipf_firing_probs


def test_samples_are_the_stated_combinations():
    syn = SyntheticFeatures(d=8, n_features=20, firing_prob=0.2, offset=1.5, noise=0.0, seed=3)
    x, c = syn.sample(5000, seed=1)
    torch.testing.assert_close(x, c @ syn.features + syn.offset_vector)
    torch.testing.assert_close(syn.features.norm(dim=1), torch.ones(20))
    assert syn.offset_vector.norm().item() == pytest.approx(1.5)
    active = c > 0
    assert active.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert c[active].min() >= 0.5 and c[active].max() <= 1.5
    assert torch.equal(syn.sample(10, seed=7).x, syn.sample(10, seed=7).x)


def test_graded_firing_probabilities():
    probs = zipf_firing_probs(50, p_max=0.3)
    syn = SyntheticFeatures(d=16, n_features=50, firing_prob=probs)
    _, c = syn.sample(40000)
    freq = (c > 0).float().mean(0)
    assert freq[0].item() == pytest.approx(0.3, abs=0.02)
    assert freq[:5].mean() > freq[-5:].mean() * 10


def test_bad_configuration():
    with pytest.raises(ValueError, match="magnitude"):
        SyntheticFeatures(magnitude="gaussian")
    with pytest.raises(ValueError, match="firing_prob"):
        SyntheticFeatures(n_features=3, firing_prob=(0.1, 0.2))


def test_appendix_f_toy_is_superposed():
    toy = appendix_f_toy()
    assert toy.n_features == 2 * toy.d
    _, c = toy.sample(1000)
    assert c[c > 0].min() >= 1.0
