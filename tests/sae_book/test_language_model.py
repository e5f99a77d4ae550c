import pandas as pd

from sae_book import language_model as ch


def test_configs_give_the_baseline_more_latents():
    relu, gated = ch.configs(100, 1.5, 2.0, 3.0, 0.02, steps=5, seed=0)
    assert relu == {"arch": "relu", "width": 150, "l1_coefficient": 2.0, "steps": 5, "seed": 0,
                    "lr_decay_start": None, "plateau_tolerance": 0.02}
    assert gated["width"] == 100 and gated["l1_coefficient"] == 3.0 and gated["lr_decay_start"] is None


def test_readable_latents_are_inside_the_density_window():
    density = [0.0, 1e-3, 2e-3, 0.01, 0.02, 0.03, 0.5]
    picked = ch.readable_latents(density, 10, seed=0)
    assert sorted(picked) == [2, 3, 4]
    assert len(ch.readable_latents(density, 2, seed=0)) == 2


def test_render_losses():
    table = pd.DataFrame({"arch": ["relu", "gated"], "n_predictions": [1000, 1000], "ce_clean": [3.0, 3.0],
                          "ce_zero_ablation": [9.0, 9.0], "l0": [40.0, 20.0], "loss_recovered": [0.9, 0.95],
                          "delta_lm_loss": [0.6, 0.3], "relative_reconstruction_bias": [0.9, 1.0]})
    text = ch.render_losses(table, "blocks.6.hook_resid_post")
    assert text.startswith("On 1,000 held-out tokens the clean model's loss is 3.000 nats/token")
    assert "(L0 40.0) recovers 90.0% of that loss (ΔLM loss 0.600)" in text and "Gated γ = 1.000." in text


def test_summary_gives_both_saes_loss_recovered():
    table = pd.DataFrame({"arch": ["relu", "gated"], "ce_clean": [3.0, 3.0], "ce_zero_ablation": [9.0, 9.0],
                          "l0": [40.0, 20.0], "loss_recovered": [0.9, 0.95], "delta_lm_loss": [0.6, 0.3],
                          "relative_reconstruction_bias": [0.9, 1.0]})
    s = ch.summary(table, "blocks.6.hook_resid_post")
    assert "the Gated SAE recovers 95.0% of the language-model loss that zero-ablating the site costs (at L0 20.0, " \
           "γ = 1.000) and the baseline 90.0% (at L0 40.0, γ = 0.900)" in s.headline
    assert s.key_numbers["loss_recovered_gated"] == 0.95 and s.key_numbers["gamma_baseline"] == 0.9
    assert s.key_numbers["ce_zero_ablation"] == 9.0
