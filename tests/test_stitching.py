"""SAE stitching against independent float64 references.

References used here: latent activations and reconstructions of the source SAEs computed
by their own ``encode`` / ``decode``; MSE changes measured by literally building the
stitched SAE and re-evaluating it; a dense cosine matrix; breadth-first search for the
connected components; brute force over thresholds; and SAEs built by hand from known
feature directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sae_helpers as sh
from sae_helpers import stitching

D = 12
SITE = {"model_name": "m", "hook_name": "blocks.0.hook_resid_post"}
ARCHS = ["relu", "gated", "jumprelu", "batchtopk"]


def random_sae(arch: str, width: int, seed: int, d: int = D, metadata=None) -> sh.SAE:
    """A float64 SAE with random weights and random non-zero biases (b_dec included)."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"k": 4} if arch in ("topk", "batchtopk") else {}
    sae = sh.create_sae(arch, d, width, dtype=torch.float64, metadata=metadata or dict(SITE), **kwargs)
    sae.init_weights(gen)
    with torch.no_grad():
        sae.W_enc.mul_(1 + 0.5 * torch.rand(sae.W_enc.shape, generator=gen, dtype=torch.float64))
        for name, param in sae.named_parameters():
            if name not in ("W_enc", "W_dec"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


def inputs(n: int = 400, seed: int = 5, d: int = D) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3


# ------------------------------------------------------------------------------ stitch
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


def test_analyze_with_saes_of_different_widths_names_both():
    with pytest.raises(ValueError, match="d_in mismatch: the small SAE has d_in=12, the large SAE d_in=8"):
        stitching.analyze(random_sae("relu", 20, 1), random_sae("relu", 33, 2, d=8), torch.randn(64, D))


# ------------------------------------------------------------------------------ analyze
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


# ------------------------------------------------------------------------------ curve
def split_saes(arch: str = "jumprelu"):
    """A small SAE and a larger one whose first 10 latents are perturbed copies of the
    small SAE's (two of them split in two), plus 5 new directions; different b_dec."""
    small = random_sae(arch, 10, seed=21)
    large = random_sae(arch, 17, seed=22)
    gen = torch.Generator().manual_seed(23)
    with torch.no_grad():
        base = torch.cat([small.W_dec[:10], small.W_dec[[0, 1]]])
        rows = base + 0.15 * torch.randn(base.shape, generator=gen, dtype=torch.float64)
        large.W_dec[:12] = rows / rows.norm(dim=1, keepdim=True)
        large.W_enc[:, :12] = large.W_dec[:12].T * 1.2
    return small, large


def reference_groups(large, small, threshold):
    """Connected components by breadth-first search on the dense cosine matrix."""
    cos = (torch.nn.functional.normalize(large.W_dec.detach(), dim=1)
           @ torch.nn.functional.normalize(small.W_dec.detach(), dim=1).T)
    adjacent = cos > threshold
    seen, groups = set(), []
    for start in range(large.d_sae):
        if start in seen or not adjacent[start].any():
            continue
        queue, members = [("L", start)], {("L", start)}
        while queue:
            side, i = queue.pop()
            neighbours = ([("S", int(j)) for j in adjacent[i].nonzero()] if side == "L"
                          else [("L", int(j)) for j in adjacent[:, i].nonzero()])
            for node in neighbours:
                if node not in members:
                    members.add(node)
                    queue.append(node)
        seen |= {i for side, i in members if side == "L"}
        groups.append(tuple(tuple(sorted(i for s, i in members if s == side)) for side in ("L", "S")))
    return groups


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_groups_are_the_connected_components(threshold):
    small, large = split_saes()
    groups = stitching.matching_groups(large, small, threshold, block=4)
    assert [tuple(g) for g in groups] == reference_groups(large, small, threshold)


def test_swap_effects_equal_literal_swaps():
    small, large = split_saes("gated")
    x = inputs(500)
    groups = stitching.matching_groups(large, small, 0.7)
    assert len(groups) >= 8 and any(len(g.large) > 1 for g in groups)
    effects = stitching.swap_effects(small, large, groups, x, batch_size=77)
    base = sh.evaluate(small, x)["mse"]
    for group, effect in zip(groups, effects.tolist(), strict=True):
        literal = sh.evaluate(stitching.stitch(small, large, add=group.large, remove=group.small), x)["mse"] - base
        assert effect == pytest.approx(literal, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
@pytest.mark.parametrize("grouping", stitching.GROUPINGS)
def test_curve_bookkeeping_and_end_points(arch, grouping):
    small, large = split_saes(arch)
    x = inputs(500)
    curve = stitching.curve(small, large, x, threshold=0.7, grouping=grouping, n_points=None).points
    steps = stitching.plan(small, large, x, threshold=0.7, grouping=grouping, n_points=None)
    assert len(curve) == len(steps) + 1 and list(curve.step) == list(range(len(steps) + 1))
    assert (curve.n_latents == small.d_sae + curve.n_added - curve.n_removed).all()
    assert curve.n_added.is_monotonic_increasing and curve.n_removed.is_monotonic_increasing
    assert curve.n_added.iloc[-1] == large.d_sae and curve.n_removed.iloc[-1] == small.d_sae
    kinds = [s.kind for s in steps]  # inserts, then swaps
    assert kinds == sorted(kinds, key=["insert", "swap"].index) and kinds[-1] == "swap"
    first, last = sh.evaluate(small, x), sh.evaluate(large, x)
    for key in ("l0", "mse", "fvu"):
        assert curve[key].iloc[0] == pytest.approx(first[key], rel=1e-12)
        assert curve[key].iloc[-1] == pytest.approx(last[key], rel=1e-12)
    final = stitching.state_after(small, large, steps)
    for name, param in large.named_parameters():  # the complete walk ends at the large SAE itself
        torch.testing.assert_close(getattr(final, name), param, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_every_step_is_the_most_helpful_one_measured_in_context(arch):
    """Re-measured before every step (n_points=None): each step's delta_mse equals the literal
    change of MSE from the state before it (the decoder bias's move included), and no other
    remaining step of its phase would have lowered the MSE more (checked by literal stitching)."""
    small, large = split_saes(arch)
    x = inputs(400)
    steps = stitching.plan(small, large, x, threshold=0.7, n_points=None)
    mse = [sh.evaluate(stitching.state_after(small, large, steps[:i]), x)["mse"] for i in range(len(steps) + 1)]
    for i, step in enumerate(steps):
        assert step.delta_mse == pytest.approx(mse[i + 1] - mse[i], rel=1e-8, abs=1e-13)
        rivals = [s for s in steps[i + 1 :] if s.kind == step.kind]
        for rival in rivals:
            literal = sh.evaluate(stitching.state_after(small, large, [*steps[:i], rival]), x)["mse"] - mse[i]
            assert literal >= step.delta_mse - 1e-12


def nested_orthogonal_features(n_shared: int = 12, n_new: int = 12, d: int = 32, n: int = 20_000):
    """Data built from orthonormal features (coefficients 1-2, each firing with probability
    0.1) plus an offset; a narrow JumpReLU SAE holding the first ``n_shared`` features with a
    slightly wrong decoder bias, and a wide one holding all features (shuffled) with the exact
    offset as its decoder bias, so the wide SAE reconstructs every token exactly."""
    gen = torch.Generator().manual_seed(11)
    features = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0].T[: n_shared + n_new]
    offset = torch.randn(d, generator=gen, dtype=torch.float64)
    fires = torch.rand(n, len(features), generator=gen, dtype=torch.float64) < 0.1
    x = (fires * (1 + torch.rand(n, len(features), generator=gen, dtype=torch.float64))) @ features + offset

    def sae(which, b_dec):
        out = sh.create_sae("jumprelu", d, len(which), dtype=torch.float64, metadata=dict(SITE))
        with torch.no_grad():
            out.W_enc.copy_(features[which].T)
            out.W_dec.copy_(features[which])
            out.b_dec.copy_(b_dec)
            out.b_enc.copy_((b_dec - offset) @ out.W_enc)  # pre = (x - offset) . f_j: the coefficient
            out.threshold.fill_(0.5)
        return out

    order = torch.randperm(len(features), generator=gen)
    wrong = offset + 0.05 * torch.randn(d, generator=gen, dtype=torch.float64)
    return x, sae(list(range(n_shared)), wrong), sae(order.tolist(), offset), order


def test_walk_between_nested_known_features_falls_monotonically_to_the_larger_sae():
    """The wide SAE holds every feature of the narrow one plus 12 more: the walk inserts the 12
    new features, swaps each shared feature for its copy (moving the decoder bias to the exact
    one), falls at every step and ends at the wide SAE (FVU 0)."""
    x, narrow, wide, order = nested_orthogonal_features()
    curve, counts, largest_group = stitching.curve(narrow, wide, x, n_points=None)
    assert counts == {"insert": 12, "swap": 12} and largest_group == 2
    rises, intervals, _ = stitching.count_rises(curve.fvu)
    assert (rises, intervals) == (0, 24) and curve.fvu.iloc[-1] < 1e-20
    steps = stitching.plan(narrow, wide, x, n_points=None)
    assert sorted(j for s in steps if s.kind == "insert" for j in s.add) == sorted(
        (order >= 12).nonzero().flatten().tolist())
    final = stitching.state_after(narrow, wide, steps)
    for name, param in wide.named_parameters():
        torch.testing.assert_close(getattr(final, name), param, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threshold", [0.999, 0.0])
def test_threshold_walk_places_every_latent_between_unrelated_saes(threshold):
    """Independent random SAEs: above 0.999 almost nothing matches, above 0.0 almost everything.
    Every larger-SAE latent is either a novel insert (measured novel, no match above the
    threshold) or in a swap group; every smaller-SAE latent leaves in some swap; the walk
    ends at the larger SAE."""
    small, large = random_sae("relu", 12, seed=31), random_sae("relu", 20, seed=32)
    x = inputs(600)
    table, _ = stitching.analyze(small, large, x, threshold=threshold)
    steps = stitching.plan(small, large, x, threshold=threshold, table=table, grouping="threshold")
    inserted = [j for s in steps if s.kind == "insert" for j in s.add]
    swapped = [j for s in steps if s.kind == "swap" for j in s.add]
    removed = [i for s in steps for i in s.remove]
    assert sorted(inserted + swapped) == list(range(large.d_sae))
    assert sorted(removed) == list(range(small.d_sae))
    assert all(table.novel[j] and table.max_cos[j] <= threshold for j in inserted)
    final = stitching.state_after(small, large, steps)
    for name, param in large.named_parameters():
        torch.testing.assert_close(getattr(final, name), param, rtol=1e-12, atol=1e-12)


def test_best_match_groups_follow_each_latents_best_match():
    small, large = random_sae("relu", 12, seed=31), random_sae("relu", 20, seed=32)
    cos = (torch.nn.functional.normalize(large.W_dec.detach(), dim=1)
           @ torch.nn.functional.normalize(small.W_dec.detach(), dim=1).T)
    inserted = [3, 7]
    groups = stitching.best_match_groups(small, large, inserted)
    group_of = {("L", j): g for g, group in enumerate(groups) for j in group.large}
    group_of |= {("S", i): g for g, group in enumerate(groups) for i in group.small}
    assert sorted(i for g in groups for i in g.small) == list(range(small.d_sae))
    for j in range(large.d_sae):
        if j not in inserted:
            assert group_of[("L", j)] == group_of[("S", int(cos[j].argmax()))]
    for i in range(small.d_sae):
        assert group_of[("S", i)] == group_of[("L", int(cos[:, i].argmax()))]
    assert sum(len(g.large) + len(g.small) for g in groups) <= small.d_sae + large.d_sae


def test_curve_with_fewer_points_is_the_full_walk_re_measured_less_often():
    small, large = split_saes()
    x = inputs(500)
    sparse = stitching.curve(small, large, x, threshold=0.7, n_points=5).points
    assert len(sparse) == 5 and sparse.step.iloc[0] == 0 and sparse.step.iloc[-1] == sparse.step.max()
    steps = stitching.plan(small, large, x, threshold=0.7, n_points=5)
    for row in sparse.itertuples():
        assert row.mse == pytest.approx(sh.evaluate(stitching.state_after(small, large, steps[: row.step]), x)["mse"],
                                        rel=1e-12)
    np.testing.assert_allclose(sparse.delta_mse.iloc[1:], np.diff(sparse.mse))
    end = stitching.stitch(small, large, add=range(large.d_sae), remove=range(small.d_sae), b_dec="large")
    assert sparse.mse.iloc[-1] == pytest.approx(sh.evaluate(end, x)["mse"], rel=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_blended_b_dec_keeps_activations_and_moves_reconstruction_linearly(arch):
    small, large = random_sae(arch, 9, seed=41), random_sae(arch, 14, seed=42)
    x = inputs(300)
    add, remove = [0, 3, 5, 13], [1, 2]
    ends = [stitching.stitch(small, large, add, remove, b_dec=b) for b in ("small", "large")]
    for t in (0.0, 0.3, 1.0):
        mid = stitching.stitch(small, large, add, remove, b_dec=t)
        torch.testing.assert_close(mid.encode(x), ends[0].encode(x), rtol=1e-10, atol=1e-10)
        expected = ends[0].decode(ends[0].encode(x)) + t * (large.b_dec - small.b_dec)
        torch.testing.assert_close(mid.decode(mid.encode(x)), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="blend"):
        stitching.stitch(small, large, add, remove, b_dec=1.5)


def test_walk_keeps_the_small_b_dec_while_inserting_and_moves_it_with_the_swaps():
    small, large = split_saes()
    x = inputs(300)
    steps = stitching.plan(small, large, x, threshold=0.7)
    n_inserts = sum(s.kind == "insert" for s in steps)
    assert n_inserts >= 1
    torch.testing.assert_close(stitching.state_after(small, large, steps[:n_inserts]).b_dec, small.b_dec)
    part = steps[: n_inserts + 3]
    share = sum(len(s.remove) for s in part) / small.d_sae
    torch.testing.assert_close(stitching.state_after(small, large, part).b_dec,
                               torch.lerp(small.b_dec, large.b_dec, share))
    torch.testing.assert_close(stitching.state_after(small, large, steps).b_dec, large.b_dec)


def test_curve_with_a_model_adds_loss_recovered():
    model = sh.tiny_model(seed=0)
    site = "blocks.0.hook_resid_post"
    meta = {"model_name": model.model_name, "hook_name": site, "context_size": 16}
    small = random_sae("jumprelu", 20, seed=1, d=model.cfg.d_model, metadata=meta)
    large = random_sae("jumprelu", 30, seed=2, d=model.cfg.d_model, metadata=meta)
    x = inputs(300, d=model.cfg.d_model)
    curve = stitching.curve(small, large, x, model, threshold=0.5, n_points=3, n_splice_tokens=64).points
    assert len(curve) == 3 and curve.loss_recovered.notna().all()
    fewer = stitching.curve(small, large, x, model, threshold=0.5, n_points=3, n_splice_points=2,
                            n_splice_tokens=64).points
    assert fewer.loss_recovered.isna().tolist() == [False, True, False]
    np.testing.assert_allclose(fewer.loss_recovered.iloc[[0, 2]], curve.loss_recovered.iloc[[0, 2]])
    steps = stitching.plan(small, large, x, threshold=0.5, n_points=3)
    final = stitching.state_after(small, large, steps[: curve.step.iloc[-1]])
    [expected] = [r["loss_recovered"] for r in sh.splice_eval(model, final, 64, progress=False)]
    assert curve.loss_recovered.iloc[-1] == pytest.approx(expected, rel=1e-9)
    [first] = [r["loss_recovered"] for r in sh.splice_eval(model, small, 64, progress=False)]
    assert curve.loss_recovered.iloc[0] == pytest.approx(first, rel=1e-9)
    assert not math.isnan(curve.loss_recovered.iloc[1])


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
