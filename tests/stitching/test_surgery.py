"""sae_helpers/stitching/surgery.py (stitch, prepare, the compatibility checks) against independent
float64 references.

References: latent activations and reconstructions of the source SAEs computed by their own
``encode`` / ``decode``; MSE changes measured by literally building the stitched SAE and
re-evaluating it; a dense cosine matrix; breadth-first search for connected components; brute
force over thresholds; SAEs built by hand from known feature directions.
"""

from __future__ import annotations

import pytest
import torch

import sae_helpers as sh
from sae_helpers import stitching
from tests.stitching.saes import ARCHS, SITE, D, inputs, random_sae


@pytest.mark.parametrize("arch", ARCHS)
def test_moving_every_latent_reproduces_the_other_sae(arch):
    a, b = random_sae(arch, 20, seed=1), random_sae(arch, 33, seed=2)
    assert not torch.allclose(a.b_dec, b.b_dec)
    x = inputs()
    stitched = sh.stitching.stitch(a, b, add=range(33), remove=range(20))
    reference = b.for_inference()  # BatchTopK: its JumpReLU inference form
    f_ref, f = reference.encode(x), stitched.encode(x)
    assert (f_ref > 0).any() and (f_ref == 0).any()  # the test exercises both branches
    torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stitched.decode(f), reference.decode(f_ref) + (a.b_dec - b.b_dec), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(stitched.b_dec, a.b_dec)


@pytest.mark.parametrize("arch", ARCHS)
def test_partial_stitch_keeps_every_latent_activation(arch):
    a, b = random_sae(arch, 20, seed=3), random_sae(arch, 33, seed=4)
    x = inputs()
    remove, add = [0, 7, 19], [32, 1, 5]
    stitched = stitching.stitch(a, b, add=add, remove=remove)
    keep = [i for i in range(20) if i not in remove]
    expected = torch.cat([a.for_inference().encode(x)[:, keep], b.for_inference().encode(x)[:, add]], 1)
    torch.testing.assert_close(stitched.encode(x), expected, rtol=1e-12, atol=1e-12)
    assert stitched.d_sae == 20
    assert stitched.metadata["stitched"]["added"] == add and stitched.metadata["stitched"]["removed"] == remove
    assert stitched.metadata["hook_name"] == SITE["hook_name"]


@pytest.mark.parametrize("arch", ARCHS)
def test_taking_the_large_b_dec_keeps_activations_too(arch):
    a, b = random_sae(arch, 20, seed=5), random_sae(arch, 33, seed=6)
    x = inputs()
    stitched = stitching.stitch(a, b, add=[3, 4], remove=[1], b_dec="large")
    expected = torch.cat([a.for_inference().encode(x)[:, [0, *range(2, 20)]], b.for_inference().encode(x)[:, [3, 4]]],
                         1)
    torch.testing.assert_close(stitched.encode(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stitched.b_dec, b.b_dec)


def test_stitched_sae_saves_loads_and_evaluates(tmp_path):
    a, b = random_sae("gated", 20, seed=7), random_sae("gated", 33, seed=8)
    stitched = stitching.stitch(a, b, add=[0, 9, 31], remove=[2, 3])
    stitched.save(str(tmp_path / "s"))
    loaded = sh.load_sae(tmp_path / "s")
    assert type(loaded) is type(stitched) and loaded.d_sae == 21
    for name, param in stitched.named_parameters():
        assert torch.equal(getattr(loaded, name), param), name
    assert loaded.metadata["stitched"]["added"] == [0, 9, 31]
    x = inputs()
    assert sh.evaluate(loaded, x) == sh.evaluate(stitched, x)


def test_topk_is_refused_with_the_reason():
    a, b = random_sae("topk", 20, seed=1), random_sae("topk", 33, seed=2)
    with pytest.raises(ValueError, match="TopK SAEs cannot be stitched.*changes which other latents fire"):
        stitching.stitch(a, b, add=[0])
    with pytest.raises(ValueError, match="TopK"):
        stitching.analyze(random_sae("jumprelu", 20, 1), b, inputs())


@pytest.mark.parametrize(
    ("large", "message"),
    [
        (random_sae("gated", 33, 2), "Architecture mismatch.*'jumprelu'.*'gated'.*to_jumprelu"),
        (random_sae("jumprelu", 33, 2, d=D + 1), "d_in mismatch.*d_in=12.*d_in=13"),
        (random_sae("jumprelu", 33, 2, metadata={**SITE, "hook_name": "blocks.1.hook_resid_post"}),
         r"Site mismatch: metadata\['hook_name'\].*same site"),
        (random_sae("jumprelu", 33, 2, metadata={**SITE, "model_name": "other"}),
         r"Site mismatch: metadata\['model_name'\]"),
    ],
)
def test_mismatched_saes_are_refused(large, message):
    small = random_sae("jumprelu", 20, 1)
    with pytest.raises(ValueError, match=message):
        stitching.stitch(small, large, add=[0])


def test_missing_site_metadata_is_not_a_mismatch():
    small = random_sae("relu", 20, 1, metadata={"hook_name": SITE["hook_name"]})
    assert stitching.stitch(small, random_sae("relu", 33, 2), add=[0]).d_sae == 21


@pytest.mark.parametrize(
    ("add", "remove", "error", "message"),
    [
        ([33], [], IndexError, "add holds index 33, outside 0..32"),
        ([], [-1], IndexError, "remove holds index -1"),
        ([1, 2, 1], [], ValueError, "add holds index 1 more than once"),
        (torch.ones(33, dtype=torch.bool), [], TypeError, "boolean mask"),
        ([], list(range(20)), ValueError, "no latents"),
    ],
)
def test_bad_indices_are_refused(add, remove, error, message):
    with pytest.raises(error, match=message):
        stitching.stitch(random_sae("relu", 20, 1), random_sae("relu", 33, 2), add=add, remove=remove)


@pytest.mark.parametrize("call", ["stitch", "analyze"])
def test_an_sae_with_a_nan_decoder_row_is_refused(call):
    small, large = random_sae("relu", 20, 1), random_sae("relu", 33, 2)
    with torch.no_grad():
        large.W_dec[3] = float("nan")
    with pytest.raises(ValueError, match="W_dec holds 12 NaN/inf value\\(s\\).*Train it again"):
        if call == "stitch":
            stitching.stitch(small, large, add=[0])
        else:
            stitching.analyze(small, large, torch.randn(64, D))
