import pandas as pd
import pytest

from sae_book import shrinkage as ch


def at_site(gated_l0_factor=0.5, relu_gamma=(0.80, 0.85), gated_gamma=(0.99, 1.01), others=True):
    rows = [{"arch": "relu", "l0": 10.0, "loss_recovered": 0.80, "relative_reconstruction_bias": relu_gamma[0]},
            {"arch": "relu", "l0": 40.0, "loss_recovered": 0.90, "relative_reconstruction_bias": relu_gamma[1]},
            {"arch": "gated", "l0": 10.0 * gated_l0_factor, "loss_recovered": 0.80,
             "relative_reconstruction_bias": gated_gamma[0]},
            {"arch": "gated", "l0": 40.0 * gated_l0_factor, "loss_recovered": 0.90,
             "relative_reconstruction_bias": gated_gamma[1]}]
    if others:
        rows.append({"arch": "topk", "l0": 16.0, "loss_recovered": 0.85, "relative_reconstruction_bias": 0.97})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("factor", "words"), [(0.5, "clearly lower L0"), (1.0, "about the same L0"),
                                               (2.0, "higher L0")])
def test_claim_a_reads_the_median_ratio(factor, words):
    v = ch.site_verdict(at_site(factor), "s")
    assert v.l0_ratio == pytest.approx(factor) and v.n_matched >= 1
    assert f"median {factor:.2f}x the baseline's L0" in ch.render_verdict(v) and words in ch.render_verdict(v)


def test_claim_a_without_overlap():
    frame = at_site()
    frame.loc[frame.arch == "gated", "loss_recovered"] = [0.95, 0.99]
    v = ch.site_verdict(frame, "s")
    assert v.l0_ratio is None and "do not overlap in loss recovered" in ch.render_verdict(v)


@pytest.mark.parametrize(("relu", "gated", "words"), [
    ((0.80, 0.85), (0.99, 1.01), "the baseline shrinks and the Gated SAE does not (all its |γ − 1| ≤ 0.02)"),
    ((0.80, 0.85), (0.90, 0.95), "both shrink here, the baseline more"),
    ((0.80, 0.95), (0.90, 1.00), "the two architectures' γ ranges overlap"),
])
def test_claim_b_contrasts_the_gamma_ranges(relu, gated, words):
    text = ch.render_verdict(ch.site_verdict(at_site(relu_gamma=relu, gated_gamma=gated), "s"))
    assert words in text and f"Gated γ ranges over {gated[0]:.3f}-{gated[1]:.3f}" in text


def test_claim_c_lists_the_other_architectures_only_when_present():
    assert "Without an L1 penalty, γ ranges over: TopK 0.970-0.970." in ch.render_verdict(ch.site_verdict(at_site(),
                                                                                                         "s"))
    assert "Without an L1 penalty" not in ch.render_verdict(ch.site_verdict(at_site(others=False), "s"))


def test_sweep_configs_cover_every_setting():
    configs = ch.sweep_configs(10, 1.5, [1.0], [2.0, 3.0], [4], [0.5], 10.0, steps=1)
    assert [c["arch"] for c in configs] == ["relu", "gated", "gated", "topk", "batchtopk", "jumprelu"]
    assert configs[0]["width"] == 15 and configs[-1]["sae_options"] == {"threshold_lr_scale": 10.0}


def test_render_equivalence():
    checks = pd.DataFrame({"same active latents (fraction of tokens)": [1.0, 0.999],
                           "max |reconstruction difference|": [1e-6, 2e-6], "max |activation|": [10.0, 20.0],
                           "spliced CE, Gated": [3.0, 3.1], "spliced CE, JumpReLU": [3.0, 3.1 + 1e-7],
                           "n_samples": [4000, 4000]})
    assert ch.render_equivalence(checks) == (
        "On 4,000 held-out activations per site the converted JumpReLU SAE selects the same active latents on "
        "99.90% of tokens; its reconstructions differ from the Gated SAE's by at most 2.0e-07 of the largest "
        "activation, and the spliced losses differ by at most 1.0e-07 nats per token.")


def test_summary_gives_the_l0_ratio_and_gamma_ranges_of_every_site():
    frame = at_site()
    frame.loc[frame.arch == "gated", "loss_recovered"] = [0.95, 0.99]
    verdicts = [ch.site_verdict(at_site(0.5), "a"), ch.site_verdict(frame, "b")]
    s = ch.summary(verdicts)
    assert s.headline == ("At equal loss recovered the Gated SAEs' median L0 is 0.50x the baseline's at `a` (baseline "
                          "γ 0.800-0.850, Gated 0.990-1.010), and not comparable (no overlap in loss recovered) at `b` "
                          "(baseline γ 0.800-0.850, Gated 0.990-1.010); a ratio of 1 would be the same L0, and γ = 1 "
                          "no shrinkage.")
    assert s.key_numbers["a: l0_ratio_gated_to_baseline"] == pytest.approx(0.5)
    assert s.key_numbers["b: l0_ratio_gated_to_baseline"] is None and s.key_numbers["a: gamma_gated_max"] == 1.01


def test_results_display_names_each_sae_by_its_one_setting():
    results = pd.DataFrame({
        "site": ["blocks.6.hook_resid_post", "blocks.6.hook_mlp_out", "blocks.6.hook_mlp_out"],
        "arch": ["gated", "batchtopk", "jumprelu"], "l1_coefficient": [2.0, float("nan"), float("nan")],
        "k": [float("nan"), 32.0, float("nan")], "l0_coefficient": [float("nan"), float("nan"), 0.3],
        "l0": [17.06, 32.0, 61.86], "fvu": [0.12345, 0.2, 0.3], "relative_reconstruction_bias": [1.0061, 0.998, 1.2],
        "loss_recovered": [0.9891, 0.95, 0.97], "delta_lm_loss": [0.0612, 0.1, 0.2],
        "delta_lm_loss_se": [0.0041, 0.01, 0.02], "dead_fraction": [0.0812, 0, 0]})
    shown = ch.results_display(results)
    assert list(shown["site"]) == ["resid_post", "mlp_out", "mlp_out"]
    assert list(shown["SAE"]) == ["gated, L1 2", "batchtopk, k 32", "jumprelu, L0 coef. 0.3"]
    assert list(shown.columns) == ["site", "SAE", "L0", "FVU", "γ", "loss recovered", "ΔLM loss", "± (SE)", "dead %"]
    assert shown["± (SE)"].tolist()[0] == 0.004
    assert shown["L0"].tolist() == [17.1, 32.0, 61.9] and shown["dead %"].tolist()[0] == 8.1
    assert shown["FVU"].tolist()[0] == 0.123


def sweep_frame(factor=0.5):
    """Runs on fvu = 0.6 - 0.1 ln(L0 / f): the Gated SAEs (f = factor) reach every FVU at ``factor`` times the
    baseline's L0; delta LM loss = fvu / 2 and loss recovered = 1 - fvu behave alike."""
    import numpy as np

    rows = []
    for arch, f in (("relu", 1.0), ("gated", factor)):
        for l0 in np.geomspace(4, 64, 6) * f:
            fvu = 0.6 - 0.1 * np.log(l0 / f)
            rows.append({"arch": arch, "l0": l0, "fvu": fvu, "delta_lm_loss": fvu / 2, "loss_recovered": 1 - fvu,
                         "delta_lm_loss_se": 0.01 if arch == "relu" else 0.02,
                         "relative_reconstruction_bias": 0.9 if arch == "relu" else 1.0})
    return pd.DataFrame(rows)


def test_fidelity_ratios_read_the_closed_form_at_three_fidelities():
    ratios = ch.fidelity_ratios(sweep_frame(0.5), n_boot=100)
    assert list(ratios.metric) == ["fvu"] * 3 + ["delta_lm_loss"] * 3 + ["loss_recovered"] * 3
    assert ratios["ratio"].to_numpy() == pytest.approx([0.5] * 9)
    v = ch.site_verdict(sweep_frame(0.5), "s")
    text = ch.render_verdict(v)
    assert "matched fidelity" in text and "at FVU " in text and "0.50x [0.50, 0.50]" in text
    assert "standard error of 0.010-0.020 nats per token" in text
    summary = ch.summary([v])
    assert "At matched FVU the ratio is 0.50x" in summary.headline
    assert summary.key_numbers["s: l0_ratio_at_fvu low"] == pytest.approx(0.5)


def test_ratio_trend_reads_each_stage():
    stages = []
    for stage, factor, tokens in (("100", 0.8, 1000), ("final", 0.5, 2000)):
        frame = sweep_frame(factor)[["arch", "l0", "fvu"]].assign(site="s", stage=stage, tokens=tokens)
        stages.append(frame)
    trend = ch.ratio_trend(pd.concat(stages), n_boot=50)
    assert list(trend.stage) == ["100", "final"] and list(trend.tokens) == [1000, 2000]
    assert trend["l0_ratio"].to_numpy() == pytest.approx([0.8, 0.5])
