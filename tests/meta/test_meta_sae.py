"""Meta-SAEs on synthetic dictionaries whose latents are sparse sums of known atoms."""

import math

import numpy as np
import pytest
import torch

import sae_helpers as sh
from sae_helpers import create_sae, load_sae, tiny_model, train_sae
from sae_helpers.analysis import logit_tokens
from sae_helpers.evaluation import max_cosine_similarity
from sae_helpers.meta import (
    DEFAULT_LR,
    MIN_STEPS,
    NULL_SEED_OFFSET,
    PAPER,
    SEED_OFFSET,
    analyze_meta_sae,
    decoder_directions,
    max_cosine_to_others,
    meta_config,
    meta_latent_cards,
    pick_decompositions,
    random_unit_rows,
    similarity_to_smaller_sae,
    train_meta_sae,
    train_null_meta_sae,
)


def composed_dictionary(n_atoms=64, d=48, n=3000, max_atoms=4, seed=0):
    """``n`` unit "latents", each the normalised sum of 2..max_atoms random atoms (coefficients
    in [0.75, 1.25]) out of ``n_atoms`` random unit atoms in ``d`` dimensions."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=gen), dim=1)
    members = [torch.randperm(n_atoms, generator=gen)[:c] for c in torch.randint(2, max_atoms + 1, (n,),
                                                                                  generator=gen).tolist()]
    rows = torch.stack([((torch.rand(len(m), generator=gen) * 0.5 + 0.75)[:, None] * atoms[m]).sum(0)
                        for m in members])
    return atoms, torch.nn.functional.normalize(rows, dim=1), members


def decomposition_agreement(atoms, meta_sae, result, members):
    """Fraction of latents whose top-m meta-latents are exactly the meta-latents matched (by max
    cosine) to their m atoms."""
    match = (atoms @ meta_sae.W_dec.detach().T).argmax(1)
    hits = [{j for j, _ in result.decompositions[i][: len(m)]} == set(match[m].tolist())
            for i, m in enumerate(members)]
    return float(np.mean(hits))


def names_own_atoms(atoms, meta_sae, result, members):
    """Fraction of latents whose top-m meta-latents (m = its atom count) each have one of the
    latent's own atoms as their closest atom."""
    closest = (atoms @ meta_sae.W_dec.detach().T).argmax(0)  # per meta-latent
    hits = []
    for i, m in enumerate(members):
        top = [j for j, _ in result.decompositions[i][: len(m)]]
        hits.append(len(top) == len(m) and set(closest[top].tolist()) <= set(m.tolist()))
    return float(np.mean(hits))


def float64_fve(meta_sae, rows):
    """FVE of a meta-SAE's inference encoder (JumpReLU with the BatchTopK threshold) on ``rows``,
    computed by hand in float64."""
    p = {name: getattr(meta_sae, name).detach().double().numpy() for name in ("W_enc", "b_enc", "W_dec", "b_dec",
                                                                              "threshold")}
    d = rows.double().numpy()
    pre = (d - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np.where(pre > p["threshold"], np.maximum(pre, 0), 0.0)
    d_hat = f @ p["W_dec"] + p["b_dec"]
    return 1 - ((d - d_hat) ** 2).sum() / ((d - d.mean(0)) ** 2).sum()


@pytest.fixture(scope="module")
def trained():
    atoms, rows, members = composed_dictionary()
    base = create_sae("relu", 48, len(rows), metadata={"model_name": "synthetic", "hook_name": "x"})
    with torch.no_grad():
        base.W_dec.copy_(rows * 1.7)  # not unit norm: the meta-SAE must normalise the rows itself
    meta, result = train_meta_sae(base, width=64, k=3, epochs=200, lr=3e-3, batch_size=512, min_steps=1, null=False,
                                  progress=False)
    return atoms, rows, members, base, meta, result


@pytest.fixture(scope="module")
def trained_by_default():
    """Planted atoms, a meta-SAE with nothing but width and k given (DEFAULT lr and length)."""
    atoms, rows, members = composed_dictionary(n_atoms=32, d=48, n=512, seed=2)
    meta, result = train_meta_sae(rows, width=32, k=3, progress=False)  # 2,000 steps, and 2,000 for the null
    return atoms, rows, members, meta, result


def test_default_meta_sae_recovers_planted_atoms_and_beats_its_null(trained_by_default):
    atoms, rows, members, meta, result = trained_by_default
    config = meta.training_config
    assert config["lr"] == DEFAULT_LR and config["steps"] == MIN_STEPS  # 2,000 epochs of 512 rows: one step each
    assert float(max_cosine_similarity(atoms, meta.W_dec).mean()) >= 0.9  # measured 1.000 (the paper's lr: 0.701)
    assert names_own_atoms(atoms, meta, result, members) >= 0.8  # measured 1.000 (0.348)
    assert decomposition_agreement(atoms, meta, result, members) >= 0.8  # measured 1.000 (0.436)
    assert result.fve >= 0.9  # measured 1.000 (0.671)
    assert result.fve - result.fve_null >= 0.5  # measured 1.000 - 0.382


def test_paper_defaults_undertrain_a_small_base():
    """The paper's lr and length (2,000 epochs = 2,000 steps for a base of <= 4,096 rows) leave
    planted atoms partly found on a base of 512 rows: why the defaults differ."""
    atoms, rows, members = composed_dictionary(n_atoms=32, d=48, n=512, seed=2)
    meta, result = train_meta_sae(rows, width=32, k=3, lr=PAPER["lr"], min_steps=1, null=False, progress=False)
    assert meta.training_config["steps"] == PAPER["epochs"]
    assert float(max_cosine_similarity(atoms, meta.W_dec).mean()) < 0.9  # measured 0.701


def test_fve_null_matches_an_independent_computation(tmp_path):
    n, d, width, k = 300, 16, 24, 2
    settings = {"epochs": 40, "seed": 3, "lr": 3e-3, "batch_size": 128, "min_steps": 1}
    _, rows, _ = composed_dictionary(n_atoms=16, d=d, n=n)
    meta, result = train_meta_sae(rows, width, k, progress=False, checkpoint_dir=tmp_path / "m", **settings)
    # the null's rows: the documented generator
    null_rows = random_unit_rows(n, d, seed=3)
    gaussian = torch.randn(n, d, generator=torch.Generator().manual_seed(NULL_SEED_OFFSET + 3))
    torch.testing.assert_close(null_rows, gaussian / gaussian.norm(dim=1, keepdim=True))
    assert not torch.equal(null_rows, random_unit_rows(n, d, seed=4))
    # the same configuration, trained here by hand on those rows
    cfg = meta_config(n, width, k, **settings)
    assert cfg.steps == math.ceil(40 * n / 128)
    null = train_sae(null_rows, **cfg.to_dict(), progress=False)
    assert result.fve_null == pytest.approx(float64_fve(null, null_rows), abs=1e-5)
    assert result.fve == pytest.approx(float64_fve(meta, rows), abs=1e-5)
    assert result.fve > result.fve_null  # a short run: 0.64 against 0.45
    # the null was kept in checkpoint_dir / "null": it is returned at once, equal to the one above
    again, fve_null = train_null_meta_sae(n, d, width, k, progress=False, checkpoint_dir=tmp_path / "m" / "null",
                                          **settings)
    assert torch.equal(again.W_dec, null.W_dec) and fve_null == result.fve_null
    assert again.metadata["meta_sae"]["null"] is True
    # null=False skips it
    _, skipped = train_meta_sae(rows, width, k, progress=False, null=False, **settings)
    assert math.isnan(skipped.fve_null) and skipped.fve == result.fve
    assert math.isnan(analyze_meta_sae(meta, rows).fve_null)


def test_training_health_applies_to_meta_saes(trained_by_default):
    """A meta-SAE is an ordinary SAE with a training_log: the health checks of activation SAEs apply."""
    _, rows, _, meta, result = trained_by_default
    health = sh.training_health(meta, rows)
    assert health["dead_fraction"] == pytest.approx(result.dead_fraction)
    assert health["near_initial_fraction"] <= 0.05
    # The plateau is read from the meta-SAE's curve on its own rows, at constant learning rate (before the decay).
    from sae_helpers.training import TrainConfig
    from sae_helpers.training.plateau import run_plateau

    check = run_plateau(TrainConfig.from_dict(meta.training_config), meta.training_log)
    assert health["plateaued"] == check.plateaued and health["passes"] == check.plateaued
    assert health["heldout_fvu_change"] == check.changes["heldout_fvu"]
    # the plateau is reported: here the planted rows are reconstructed almost exactly (FVE 1.000), so the loss
    # itself heads to 0 and its *relative* change over the last tenth is large although tiny in absolute terms
    assert math.isfinite(health["loss_plateau"]) and math.isfinite(health["fvu_plateau"])
    paper = train_meta_sae(rows, width=32, k=3, lr=PAPER["lr"], min_steps=1, epochs=100, null=False,
                           progress=False)[0]
    assert not sh.training_health(paper, rows)["passes"]  # 100 steps at 1e-4: meta-latents near their start


def test_meta_sae_recovers_the_atoms_and_the_decompositions_name_them(trained):
    atoms, _, members, _, meta, result = trained
    mcs = max_cosine_similarity(atoms, meta.W_dec)
    assert float(mcs.mean()) >= 0.9  # measured 0.990
    agreement = decomposition_agreement(atoms, meta, result, members)
    assert agreement >= 0.8  # measured 0.979: the top-m meta-latents are the latent's m atoms
    assert result.fve >= 0.9
    assert result.l0 == pytest.approx(3, rel=0.15)  # the inference threshold keeps ~k per row


def test_result_matches_an_independent_float64_computation(trained):
    _, rows, _, base, meta, result = trained
    assert meta.architecture == "jumprelu" and meta.metadata["trained_as"] == "batchtopk"
    p = {name: getattr(meta, name).detach().double().numpy() for name in ("W_enc", "b_enc", "W_dec", "b_dec",
                                                                          "threshold")}
    d = base.W_dec.detach().double().numpy()
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    pre = (d - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = np.where(pre > p["threshold"], np.maximum(pre, 0), 0.0)
    d_hat = f @ p["W_dec"] + p["b_dec"]
    fve = 1 - ((d - d_hat) ** 2).sum() / ((d - d.mean(0)) ** 2).sum()
    assert result.fve == pytest.approx(fve, abs=1e-5)
    assert result.l0 == pytest.approx((f > 0).sum(1).mean(), abs=2 / len(d))  # float32 vs 64 at the threshold
    assert result.dead_fraction == pytest.approx(((f > 0).sum(0) == 0).mean(), abs=2 / f.shape[1])
    cosine = (d * d_hat).sum(1) / np.linalg.norm(d_hat, axis=1)
    np.testing.assert_allclose(result.reconstruction_cosine, cosine, atol=1e-5)
    for i in (0, 17, 2999):
        pairs = result.decompositions[i]
        assert [c for _, c in pairs] == sorted((c for _, c in pairs), reverse=True)
        active = {int(j) for j in np.flatnonzero(f[i] > 0)}
        assert {j for j, _ in pairs} ^ active <= {j for j in range(64) if abs(pre[i, j] - p["threshold"][j]) < 1e-5}
        for j, c in pairs:
            assert c == pytest.approx(f[i, j], abs=1e-5)
    for m in range(64):
        top = result.top_base_latents[m]
        expected = np.sort(f[:, m][f[:, m] > 0])[::-1][:10]
        assert len(top) == len(expected)
        np.testing.assert_allclose([a for _, a in top], expected, atol=1e-5)
        for i, a in top:
            assert a == pytest.approx(f[i, m], abs=1e-5)


def test_meta_sae_saves_loads_and_analyses_alike(trained, tmp_path):
    _, rows, _, base, meta, result = trained
    loaded = load_sae(meta.save(str(tmp_path / "meta")))
    assert loaded.metadata["meta_sae"]["base_d_sae"] == len(rows)
    assert loaded.metadata["meta_sae"]["base_metadata"]["model_name"] == "synthetic"
    again = analyze_meta_sae(loaded, base)
    assert again.fve == pytest.approx(result.fve, abs=1e-9)
    assert again.decompositions == result.decompositions
    assert again.top_base_latents == result.top_base_latents


def test_training_sees_each_row_once_per_epoch(trained):
    *_, meta, _ = trained
    config = meta.training_config
    assert config["steps"] == math.ceil(200 * 3000 / 512)  # min_steps=1: exactly the epochs
    assert config["normalize_activations"] is False and config["adam_beta1"] == 0.9
    assert config["dead_after"] == math.ceil(3000 / 512)
    assert config["sae_options"] == {"threshold_rate": 0.01}  # 1,172 steps: the default rate
    short = meta_config(3000, 64, 3, epochs=20, batch_size=512, min_steps=1)  # 118 steps: the average spans ~12
    assert short.steps == 118 and short.sae_options["threshold_rate"] == pytest.approx(10 / 118)
    assert meta_config(3000, epochs=1, sae_options={"threshold_rate": 0.5, "aux_k": 3}).sae_options == {
        "threshold_rate": 0.5, "aux_k": 3}


def test_default_width_and_length():
    assert meta_config(3000, epochs=1).width == 141  # the paper's ratio, 3/64 (about d_sae / 21)
    assert meta_config(PAPER["base_width"]).width == PAPER["width"]
    assert meta_config(4608).width == 216
    # length: the paper's 2,000 epochs, but at least MIN_STEPS optimiser steps
    assert meta_config(PAPER["base_width"]).steps == PAPER["steps"] == 24_000
    assert meta_config(4608).steps == 2250  # 2,000 epochs of 4,608 rows in batches of 4,096
    assert meta_config(1024).steps == MIN_STEPS  # 2,000 epochs of one step each
    assert meta_config(1024, epochs=5).steps == MIN_STEPS and meta_config(1024, epochs=5, min_steps=1).steps == 5
    assert meta_config(3000).lr == DEFAULT_LR
    with pytest.raises(ValueError, match="min_steps"):
        meta_config(3000, min_steps=0)


def test_meta_sae_does_not_start_from_the_base_sae_initialisation():
    """Same seed, same input width: the trainer would give the meta-SAE the base SAE's first
    initial rows; the meta-SAE's own seed avoids that."""
    base = create_sae("relu", 48, 3000).init_weights(torch.Generator().manual_seed(0))  # the trainer's init, seed 0
    meta, _ = train_meta_sae(base, width=64, k=3, epochs=1, lr=1e-9, batch_size=3000, seed=0, min_steps=1,
                             null=False, progress=False)
    assert meta.training_config["seed"] == SEED_OFFSET
    assert float(max_cosine_similarity(meta.W_dec, base.W_dec).max()) < 0.8
    same_seed = create_sae("relu", 48, 64).init_weights(torch.Generator().manual_seed(0))
    assert torch.allclose(same_seed.W_dec, base.W_dec[:64])  # what the offset avoids


def test_checkpoint_resumes_and_refuses_other_rows(tmp_path):
    _, rows, _ = composed_dictionary(n_atoms=16, d=12, n=200)
    settings = {"width": 16, "k": 2, "epochs": 5, "lr": 1e-3, "batch_size": 64, "min_steps": 1, "progress": False}
    first, result = train_meta_sae(rows, **settings, checkpoint_dir=tmp_path / "m")
    assert (tmp_path / "m" / "sae").is_dir() and (tmp_path / "m" / "null" / "sae").is_dir()
    again, result_again = train_meta_sae(rows, **settings, checkpoint_dir=tmp_path / "m")  # finished: returned at once
    assert torch.equal(first.W_dec, again.W_dec) and result_again.fve == result.fve
    assert result_again.fve_null == result.fve_null and not math.isnan(result.fve_null)
    with pytest.raises(ValueError, match="other decoder rows"):
        train_meta_sae(rows.flip(0), **settings, checkpoint_dir=tmp_path / "m")
    with pytest.raises(ValueError, match="other decoder rows"):  # the null's rows depend on the seed
        train_null_meta_sae(200, 12, 16, 2, 5, 1, 1e-3, 64, min_steps=1, progress=False,
                            checkpoint_dir=tmp_path / "m" / "null")


def test_helpers_pick_and_compare():
    _, rows, _ = composed_dictionary(n_atoms=16, d=12, n=50)
    assert torch.allclose(decoder_directions(rows * 3), rows, atol=1e-6)
    others = max_cosine_to_others(rows)
    cos = rows.double() @ rows.double().T
    cos.fill_diagonal_(-2)
    torch.testing.assert_close(others, cos.max(1).values)

    class Result:
        decompositions = [[(0, 0.9)], [(1, 0.5), (2, 0.3), (3, 0.1)], [(4, 0.25), (5, 0.25)], [(6, 0.5), (7, 0.4)]]
        reconstruction_cosine = np.array([0.9, 0.8, 0.3, 0.5])

    assert pick_decompositions(Result, n=2) == [3, 1]  # two strong meta-latents each; more weight first
    assert pick_decompositions(Result, n=2, candidates=[0, 2]) == [2, 0]
    assert pick_decompositions(Result, n=1, candidates=np.array([True, False, False, False])) == [0]
    assert pick_decompositions(Result, n=2, min_cosine=0.6) == [1, 0]

    base, small, meta = (create_sae("relu", 12, w) for w in (50, 20, 10))
    with torch.no_grad():
        base.W_dec.copy_(rows)
        small.W_dec.copy_(rows[:20])
        meta.W_dec.copy_(rows[5:15])
    sims = similarity_to_smaller_sae(meta, base, small)
    assert np.allclose(sims["meta → smaller"], 1.0) and np.allclose(sims["base → smaller"][:20], 1.0)
    np.testing.assert_allclose(sims["base → other base"], others.numpy())


def test_meta_latent_cards_show_usage_tokens_and_top_base_latents():
    model = tiny_model(seed=0)
    _, rows, _ = composed_dictionary(n_atoms=24, d=16, n=400)
    base = create_sae("relu", 16, 400, metadata={"hook_name": "blocks.1.hook_resid_post"})
    with torch.no_grad():
        base.W_dec.copy_(rows)
    meta, result = train_meta_sae(base, width=24, k=2, epochs=20, lr=3e-3, batch_size=128, min_steps=1, null=False,
                                  progress=False)
    used = [m for m in range(24) if result.top_base_latents[m]][:2]
    page = meta_latent_cards(meta, result, used, model, base, coefficients={used[0]: 0.5}, n_base=3, k_tokens=4)
    assert page.count("class='sae-latent-card'") == 2
    assert f"Meta-latent {used[0]} (coefficient 0.500)" in page and f"Meta-latent {used[1]}<" in page
    uses = sum(used[1] in {m for m, _ in pairs} for pairs in result.decompositions)
    assert f"{uses / 400:.2%} of base latents ({uses:,})" in page
    for i, activation in result.top_base_latents[used[1]][:3]:
        assert f"<tr><td>{i}</td><td>{activation:.3f}</td>" in page
    top_token = logit_tokens(model, meta.W_dec.detach()[used[1]][None], k=1).token.iloc[0]
    assert top_token.replace(" ", "␣") in page


@pytest.mark.slow
def test_larger_dictionary_is_recovered():
    atoms, rows, members = composed_dictionary(n_atoms=128, d=64, n=8000, max_atoms=4, seed=1)
    meta, result = train_meta_sae(rows, width=128, k=3, epochs=200, lr=3e-3, batch_size=1024, min_steps=1,
                                  null=False, progress=False)
    assert float(max_cosine_similarity(atoms, meta.W_dec).mean()) >= 0.9  # measured 0.984
    assert decomposition_agreement(atoms, meta, result, members) >= 0.8  # measured 0.960
