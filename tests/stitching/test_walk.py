"""sae_helpers/stitching/walk.py (groups, swaps, the curve from the small SAE to the large one) against
independent float64 references.

References: latent activations and reconstructions of the source SAEs computed by their own
``encode`` / ``decode``; MSE changes measured by literally building the stitched SAE and
re-evaluating it; a dense cosine matrix; breadth-first search for connected components; brute
force over thresholds; SAEs built by hand from known feature directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sae_helpers as sh
from sae_helpers import stitching
from tests.stitching.saes import ARCHS, SITE, inputs, random_sae


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
