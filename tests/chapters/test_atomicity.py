import math
from types import SimpleNamespace

import numpy as np
import pytest

from sae_helpers.chapters import atomicity as ch
from sae_helpers.meta import MetaSAEResult


def result(fve, fve_null, l0=4.0, dead=0.1):
    return SimpleNamespace(fve=fve, fve_null=fve_null, l0=l0, dead_fraction=dead)


METAS = {"paper ratio": SimpleNamespace(d_sae=10), "d_sae / 4": SimpleNamespace(d_sae=50)}


def test_fve_comparison_when_the_null_gains_as_much():
    v = ch.fve_comparison(METAS, {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.40, 0.35)}, 200, 4)
    assert v.null_gains_as_much and v.gap_shrinks
    text = ch.render_fve(v)
    assert "the null gains at least as much as the meta-SAE, so the difference to the null shrinks " \
           "(+10.0 points to +5.0 points)" in text
    assert "one per 20.0 base latents" in text and "(trained with k = 4)" in text


def test_fve_comparison_when_the_meta_sae_gains_more():
    v = ch.fve_comparison(METAS, {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.50, 0.25)}, 200, 4)
    assert not v.null_gains_as_much and not v.gap_shrinks
    assert "the difference to the null grows (+10.0 points to +25.0 points)" in ch.render_fve(v)


def test_similarity_both_ways():
    values = {"meta → smaller": np.array([0.8, 0.9, 0.5]), "base → smaller": np.array([0.6, 0.4, 0.75]),
              "base → other base": np.array([0.2, 0.3])}
    s = ch.similarity(values)
    assert s.meta_closer and s.medians["meta → smaller"] == 0.8 and s.above["base → smaller"] == pytest.approx(1 / 3)
    assert ch.render_similarity(s, 1152).startswith("**Meta-latents resemble the 1,152-latent SAE's latents")
    swapped = ch.similarity({**values, "meta → smaller": values["base → smaller"],
                             "base → smaller": values["meta → smaller"]})
    assert not swapped.meta_closer and "do not resemble" in ch.render_similarity(swapped, 1152)
    assert list(ch.similarity_table(s, {}).columns) == ["rows", "median max cosine", "fraction above 0.7"]


def test_decompositions_pick_readable_well_reconstructed_latents():
    decompositions = [[(0, 0.5), (1, 0.3)], [(2, 0.9)], [(0, 0.1)], [(1, 0.4), (3, 0.25), (2, 0.2)]]
    meta = MetaSAEResult(0.5, 2.0, 0.0, decompositions, [], np.array([0.9, 0.8, 0.7, 0.3]), math.nan)
    density = np.array([0.01, 0.02, 0.5, 0.01])  # latent 2 fires too often
    d = ch.decompositions(meta, density, 2, 0.2)
    # readable: 0, 1, 3; cosine cap: min(0.6, q90 of (0.9, 0.8, 0.3)) = 0.6, so latent 3 is out
    assert d.min_cosine == pytest.approx(0.6) and d.n_candidates == 2 and d.chosen == [0, 1]
    assert list(d.table["with coefficient >= 0.2"]) == [2, 1] and list(d.n_strong) == [2, 1, 0, 3]
    text = ch.render_decompositions(d, 4)
    assert "picked from 2 base latents" in text and "(3 fire in that range" in text
    assert "50.0% have two or more" in text and "the picked latents have 2, 1." in text
    empty = ch.decompositions(meta, np.zeros(4), 2, 0.2)
    assert empty.chosen == [] and "no latent qualified to be read." in ch.render_decompositions(empty, 4)


def test_smaller_width_is_the_closest_other_width():
    assert ch.smaller_width([1152, 2304, 4608], 4608, 216) == 1152
    assert ch.smaller_width([100, 300, 4608], 4608, 200) == 100  # a tie goes to the smaller


def test_meta_widths_default_to_the_paper_ratio_and_a_quarter():
    from sae_helpers import meta

    assert ch.meta_widths(4608, None, None) == {"paper ratio": meta.default_width(4608), "d_sae / 4": 1152}
    assert ch.meta_widths(4608, 7, 9) == {"paper ratio": 7, "d_sae / 4": 9}


def test_summary_puts_the_null_beside_the_fve():
    v = ch.fve_comparison(METAS, {"paper ratio": result(0.30, 0.20), "d_sae / 4": result(0.40, 0.35)}, 200, 4)
    s = ch.summary(v)
    assert "(10 meta-latents for 200 base latents) explains 30.0% of the variance of the decoder directions, " \
           "against 20.0% for its null" in s.headline and "with 50 meta-latents: 40.0% against 35.0%" in s.headline
    assert s.key_numbers["fve_minus_null_paper_ratio"] == pytest.approx(0.1)
    assert s.key_numbers["fve_null_quarter"] == 0.35
