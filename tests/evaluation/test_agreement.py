"""Cross-seed dictionary agreement against float64 numpy brute force, constructed cases and closed forms."""

import math

import numpy as np
import pytest
import torch

from sae_helpers import create_sae, train_sae
from sae_helpers.evaluation import Agreement, agreement_nulls, agreement_table, dictionary_agreement
from sae_helpers.saes.initial import initial_decoder
from sae_helpers.stitching.novelty import cosine_nulls


def brute_force(a, b, threshold):
    """Best cosines both ways and the summaries, from the full float64 cosine matrix."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    best_a, best_b = cos.max(1), cos.max(0)
    return ((best_a > threshold).mean(), (best_b > threshold).mean(), np.median(best_a), np.median(best_b),
            best_a, best_b)


def assert_matches(result, expected):
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_matches_brute_force_on_random_rows_of_different_widths_and_scales():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(300, 24, generator=gen) * torch.rand(300, 1, generator=gen) * 5
    b = torch.randn(170, 24, generator=gen)
    expected = brute_force(a.numpy(), b.numpy(), 0.55)
    assert 0.1 < expected[0] < 0.9 and 0.1 < expected[1] < 0.9  # the threshold splits both sides
    for block in (37, 300, 4096):
        assert_matches(dictionary_agreement(a, b, 0.55, block=block), expected)
    # an SAE is read through its decoder rows
    sae_a, sae_b = create_sae("relu", 24, 300), create_sae("relu", 24, 170)
    with torch.no_grad():
        sae_a.W_dec.copy_(a)
        sae_b.W_dec.copy_(b)
    result = dictionary_agreement(sae_a, sae_b, 0.55)
    assert isinstance(result, Agreement)
    assert_matches(result, expected)
    # swapping the SAEs swaps the directions
    swapped = dictionary_agreement(b, a, 0.55)
    assert swapped.shared_fraction == result.shared_fraction_reverse
    np.testing.assert_allclose(swapped.best_cosine, result.best_cosine_reverse, rtol=0, atol=1e-15)


def orthogonal_to(rows, n, gen):
    """``n`` random unit vectors orthogonal to every row of ``rows``."""
    q, _ = torch.linalg.qr(rows.double().T, mode="complete")
    complement = q[:, rows.shape[0]:]  # [d, d - rank]
    out = torch.randn(n, complement.shape[1], generator=gen, dtype=torch.float64) @ complement.T
    return out / out.norm(dim=1, keepdim=True)


def test_permuted_copy_with_replaced_rows_has_the_known_shared_fraction():
    gen = torch.Generator().manual_seed(2)
    a = torch.nn.functional.normalize(torch.randn(40, 64, generator=gen, dtype=torch.float64), dim=1)
    others = a @ a.T - 2 * torch.eye(40, dtype=torch.float64)
    assert others.max() < 0.7  # no row of a is close to another: a row's only partner is its copy
    kept = torch.randperm(40, generator=gen)[:34]
    dropped = sorted(set(range(40)) - set(kept.tolist()))
    copies = a[kept] * (0.5 + torch.rand(34, 1, generator=gen, dtype=torch.float64))  # positive rescaling
    negated = -a[dropped[:1]]  # a dropped row's negation: the opposite latent, not a copy
    b = torch.cat([copies, negated, orthogonal_to(a, 15, gen)])
    b = b[torch.randperm(len(b), generator=gen)]
    result = dictionary_agreement(a, b)
    assert result.shared_fraction == 34 / 40
    assert result.shared_fraction_reverse == 34 / 50
    np.testing.assert_allclose(result.best_cosine[kept.numpy()], 1.0, atol=1e-12)
    assert (result.best_cosine[dropped] < 0.7).all()
    assert result.best_cosine[dropped[0]] == pytest.approx(float(others[dropped[0]].max()), abs=1e-12)
    assert np.sort(result.best_cosine_reverse)[:15] == pytest.approx(np.zeros(15), abs=1e-12)
    assert result.median_best == pytest.approx(1.0, abs=1e-12)  # 34 of 40 at 1


def test_a_cosine_equal_to_the_threshold_is_not_shared():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]])  # cosines 3/5 and 0, exact in float64
    result = dictionary_agreement(a, b, threshold=0.6)
    assert result.best_cosine[0] == 0.6
    assert result.shared_fraction == 0.0
    assert dictionary_agreement(a, b, threshold=float(np.nextafter(0.6, -1))).shared_fraction == 1.0
    # every value of a random case taken as the threshold: strictly greater counts
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 8, generator=gen), torch.randn(30, 8, generator=gen)
    best = dictionary_agreement(x, y).best_cosine
    for t in best[:10]:
        assert dictionary_agreement(x, y, float(t)).shared_fraction == (best > t).mean() < 1


def best_of_n_quantile(d, n, q):
    """The ``q`` quantile of the best cosine of a fixed unit vector to ``n`` independent uniform
    unit vectors in ``d`` dimensions: one cosine has density proportional to (1 - t^2)^((d-3)/2),
    the best of ``n`` has CDF F(t)^n."""
    t = np.linspace(-1, 1, 2_000_001)
    density = (1 - t**2) ** ((d - 3) / 2)
    cdf = np.concatenate([[0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cdf /= cdf[-1]
    return float(np.interp(q ** (1 / n), cdf, t))


def test_random_null_matches_the_closed_form_and_its_documented_generator():
    d, n = 64, 256
    a = create_sae("relu", d, n)
    b = create_sae("relu", d, n)
    nulls = agreement_nulls(a, b, seed=5)
    assert set(nulls) == {"trained", "random"}  # no training_config: no initial null
    random = nulls["random"]
    assert random.median_best == pytest.approx(best_of_n_quantile(d, n, 0.5), abs=0.015)
    assert random.median_best_reverse == pytest.approx(best_of_n_quantile(d, n, 0.5), abs=0.015)
    # fractions above a threshold: the tail of F^n
    t = best_of_n_quantile(d, n, 0.25)
    assert (random.best_cosine > t).mean() == pytest.approx(0.75, abs=0.08)
    assert random.shared_fraction == 0.0 and random.shared_fraction_reverse == 0.0  # 0.7 is far in the tail
    # the documented generator, with a's rows drawn first
    gen = torch.Generator().manual_seed(5)
    ra = torch.randn(n, d, generator=gen, dtype=torch.float64)
    rb = torch.randn(n, d, generator=gen, dtype=torch.float64)
    assert_matches(random, brute_force(ra.numpy(), rb.numpy(), 0.7))
    assert not np.array_equal(agreement_nulls(a, b, seed=6)["random"].best_cosine, random.best_cosine)


def hand_initial_decoder(d_sae, d_in, seed):
    """The trainer's documented initialisation, redrawn by hand: uniform rows, scaled to unit norm."""
    w = torch.empty(d_sae, d_in).uniform_(-math.sqrt(6 / d_in), math.sqrt(6 / d_in),
                                          generator=torch.Generator().manual_seed(seed))
    return (w / w.norm(dim=1, keepdim=True)).double()


@pytest.fixture(scope="module")
def tiny_saes():
    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    settings = {"l1_coefficient": 1.0, "steps": 20, "batch_size": 256, "progress": False, "device": "cpu"}
    return {"s0": train_sae(x, "relu", 32, seed=0, **settings),
            "s1": train_sae(x, "relu", 48, seed=1, **settings),
            "s0_again": train_sae(x, "relu", 32, seed=0, **{**settings, "l1_coefficient": 3.0})}


def test_initial_null_is_the_agreement_of_the_initial_decoders(tiny_saes):
    a, b = tiny_saes["s0"], tiny_saes["s1"]
    nulls = agreement_nulls(a, b)
    assert set(nulls) == {"trained", "random", "initial"}
    start_a, start_b = hand_initial_decoder(32, 16, 0), hand_initial_decoder(48, 16, 1)
    torch.testing.assert_close(initial_decoder(a), start_a, rtol=0, atol=1e-6)
    expected = brute_force(start_a.numpy(), start_b.numpy(), 0.7)
    for got, want in zip(nulls["initial"], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert_matches(nulls["trained"], brute_force(a.W_dec.detach().numpy(), b.W_dec.detach().numpy(), 0.7))
    # two SAEs of one seed start from the same rows: the initial null shares everything
    same_seed = agreement_nulls(a, tiny_saes["s0_again"])["initial"]
    assert same_seed.shared_fraction == 1.0 and same_seed.shared_fraction_reverse == 1.0
    np.testing.assert_allclose(same_seed.best_cosine, 1.0, atol=1e-12)
    # tensors and SAEs without a training_config have no initial null
    assert "initial" not in agreement_nulls(a.W_dec, b)
    assert "initial" not in agreement_nulls(a, create_sae("relu", 16, 48))


def test_nulls_agree_with_the_novelty_cosine_nulls(tiny_saes):
    small, large = tiny_saes["s0"], tiny_saes["s1"]
    ours = agreement_nulls(large, small, seed=4)
    theirs = cosine_nulls(small, large, seed=4)
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name].best_cosine, theirs[name], rtol=0, atol=1e-12)


def test_agreement_table_rows_are_the_pairwise_agreements(tiny_saes):
    table = agreement_table(tiny_saes, threshold=0.3)
    assert list(table.index) == [("s0", "s1"), ("s0", "s0_again"), ("s1", "s0_again")]
    row = table.loc[("s0", "s1")]
    expected = dictionary_agreement(tiny_saes["s0"], tiny_saes["s1"], 0.3)
    assert row.to_dict() == pytest.approx(dict(zip(Agreement._fields[:4], expected[:4], strict=False)))
    with_nulls = agreement_table(tiny_saes, [("s1", "s0")], nulls=True)
    assert list(with_nulls.index) == [("s1", "s0", "trained"), ("s1", "s0", "random"), ("s1", "s0", "initial")]
    assert with_nulls.loc[("s1", "s0", "initial"), "median_best"] == pytest.approx(
        agreement_nulls(tiny_saes["s1"], tiny_saes["s0"])["initial"].median_best)


def test_bad_inputs():
    with pytest.raises(ValueError, match="different sites"):
        dictionary_agreement(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="2-D"):
        dictionary_agreement(torch.randn(8), torch.randn(4, 8))
    empty = dictionary_agreement(torch.randn(0, 8), torch.randn(4, 8))
    assert math.isnan(empty.shared_fraction) and math.isnan(empty.median_best)
    assert (empty.best_cosine_reverse == -np.inf).all()  # nothing to match
