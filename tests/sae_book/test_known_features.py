import pandas as pd

from sae_book import known_features as ch


def pairs(relu_gamma, gated_gamma):
    # two pairs; the second has the L0 ratio closest to 1
    return pd.DataFrame({
        "l1_coefficient_relu": [1.0, 2.0], "l0_relu": [10.0, 5.0], "l1_coefficient_gated": [3.0, 4.0],
        "l0_gated": [4.0, 5.1], "l0_ratio": [0.4, 1.02], "relative_reconstruction_bias_relu": [0.5, relu_gamma],
        "relative_reconstruction_bias_gated": [0.5, gated_gamma], "fvu_relu": [0.1, 0.2], "fvu_gated": [0.1, 0.15],
        "mmcs_relu": [0.9, 0.95], "mmcs_gated": [0.9, 0.97]})


def test_matched_pair_shrinks_and_unbiased():
    m = ch.matched_pair(pairs(0.90, 1.01))
    assert m.pair["l1_coefficient_relu"] == 2.0 and m.shrinks and m.unbiased
    text = ch.render_matched_pair(m)
    assert "The baseline shrinks its reconstructions and the Gated SAE is unbiased (|γ − 1| ≤ 0.02)" in text
    assert "baseline γ = 0.900, Gated γ = 1.010" in text and "L0 = 5.10" in text


def test_matched_pair_neither():
    m = ch.matched_pair(pairs(ch.SHRINKS_BELOW + 0.01, 1.05))
    assert not m.shrinks and not m.unbiased
    text = ch.render_matched_pair(m)
    assert "does not shrink clearly here and the Gated SAE is off by |γ − 1| = 0.050." in text


def test_render_toy():
    toy = pd.DataFrame({"arch": ["relu", "gated"], "median_magnitude_ratio": [0.7, 1.0],
                        "relative_reconstruction_bias": [0.8, 0.99], "l0": [3.0, 2.5]})
    assert ch.render_toy(toy) == ("On the toy the baseline's matched latents report a median **0.70x** the true "
                                  "coefficient, the Gated SAE's **1.00x** (γ = 0.800 vs 0.990, at L0 3.00 vs 2.50).")


def test_summary_gives_both_gammas_beside_one():
    toy = pd.DataFrame({"arch": ["relu", "gated"], "median_magnitude_ratio": [0.7, 1.0]})
    s = ch.summary(ch.matched_pair(pairs(0.90, 1.01)), toy)
    assert "(L0 5.00 vs 5.10) the baseline SAE shrinks its reconstructions (γ = 0.900) while the Gated SAE's " \
           "γ = 1.010 stays within 0.02 of 1 (γ = 1: no shrinkage)." in s.headline
    assert s.key_numbers["gamma_baseline"] == 0.90 and s.key_numbers["toy_magnitude_ratio_baseline"] == 0.7
    off = ch.summary(ch.matched_pair(pairs(ch.SHRINKS_BELOW + 0.01, 1.05)), toy).headline
    assert "does not clearly shrink" in off and "off by |γ − 1| = 0.050" in off
