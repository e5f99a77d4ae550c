"""The activation cache: shards, manifest, checksums, resume, reading it back, half-precision storage,
and several sites written in one pass."""

import json

import pytest
import torch

from sae_helpers import evaluate, train_sae
from sae_helpers.data.cache import CacheError, CacheSource, build_cache, build_caches
from sae_helpers.data.sources import as_source

CTX, D = 8, 5
INFO = {"model": "fake", "hook_name": "blocks.0.hook_resid_post", "context_size": CTX, "dataset": "synthetic"}


def windows(n=40):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield torch.randint(0, 100, (CTX,), generator=gen)


def fake_activations(tokens):
    """Row encodes (token, position): activation[..., 0] = token, [..., 1] = position."""
    b, t = tokens.shape
    out = torch.zeros(b, t, D)
    out[..., 0] = tokens.float()
    out[..., 1] = torch.arange(t).float()
    out[..., 2:] = torch.randn(b, t, D - 2, generator=torch.Generator().manual_seed(int(tokens.sum())))
    return out


def build(path, n_tokens=150, fn=fake_activations, **kw):
    return build_cache(path, windows(), fn, n_tokens, INFO, batch_size=3, shard_tokens=40, progress=False, **kw)


def test_layout_manifest_and_token_mapping(tmp_path):
    build(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert {"model", "hook_name", "d_model", "n_tokens", "context_size", "dtype", "shards"} <= set(manifest)
    assert manifest["n_tokens"] == 150 and manifest["d_model"] == D and manifest["complete"]
    assert [s["n_tokens"] for s in manifest["shards"]] == [40, 40, 40, 30]
    src = CacheSource(tmp_path / "c")
    all_windows = torch.stack(list(windows()))
    rows = 0
    for i in range(len(src.shards)):
        token_ids, positions = src.tokens_of_rows(i)
        acts = src.shard_activations(i)
        # each row's stored token is the token its activation was computed on, never position 0
        assert torch.equal(token_ids.reshape(-1)[positions].float(), acts[:, 0])
        assert torch.equal(positions % CTX, acts[:, 1].long()) and bool((acts[:, 1] > 0).all())
        first = int(src.load_shard(i)["first_window"])
        assert torch.equal(token_ids, all_windows[first:first + len(token_ids)])
        rows += len(acts)
    assert rows == 150 == src.n


def test_killed_harvest_resumes_to_the_same_cache(tmp_path):
    build(tmp_path / "whole")
    calls = []

    def dying(tokens):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return fake_activations(tokens)

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "run", fn=dying)
    partial = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert not partial["complete"] and 0 < len(partial["shards"]) < 4
    build(tmp_path / "run")
    whole, resumed = CacheSource(tmp_path / "whole"), CacheSource(tmp_path / "run")
    assert [s["sha256"] for s in whole.shards] == [s["sha256"] for s in resumed.shards]


def test_corrupted_shard_is_named(tmp_path):
    build(tmp_path / "c")
    shard = tmp_path / "c" / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    src = CacheSource(tmp_path / "c")
    src.shard_activations(0)
    with pytest.raises(CacheError, match="shard_00001.safetensors is corrupted"):
        src.shard_activations(1)


def test_other_settings_are_refused_and_finished_caches_reused(tmp_path):
    build(tmp_path / "c")
    with pytest.raises(CacheError, match="other settings.*n_tokens_requested: cache 150, now 160"):
        build(tmp_path / "c", n_tokens=160)
    build(tmp_path / "c")  # same settings: nothing to do
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(CacheError, match="not empty"):
        build(tmp_path / "junk")


def test_block_shuffle_covers_every_row_once_per_epoch_and_resumes(tmp_path):
    build(tmp_path / "c")
    src = CacheSource(tmp_path / "c", buffer_tokens=80)
    assert src.shards_per_block == 2
    stream = src.batches(10, seed=3)
    epoch = torch.cat([next(stream) for _ in range(15)])
    ordered = torch.cat(list(src.in_order(64)))
    key = lambda t: sorted(map(tuple, t[:, :3].tolist()))  # noqa: E731
    assert key(epoch) == key(ordered)
    assert not torch.equal(epoch, ordered)
    again = list(zip(range(20), src.batches(10, seed=3), strict=False))
    resumed = list(zip(range(8), src.batches(10, seed=3, start_step=12), strict=False))
    for (_, a), (_, b) in zip(again[12:], resumed, strict=True):
        assert torch.equal(a, b)


def test_outlier_filter_and_first_position(tmp_path):
    def with_outliers(tokens):
        out = fake_activations(tokens)
        out[:, 3] *= 1000.0
        return out

    build(tmp_path / "c", fn=with_outliers, outlier_factor=10.0)
    src = CacheSource(tmp_path / "c")
    assert not bool((torch.cat(list(src.in_order(100)))[:, 1] == 3).any())


def test_a_cache_directory_trains_and_evaluates(tmp_path):
    build(tmp_path / "c")
    assert as_source(tmp_path / "c").d == D
    sae = train_sae(tmp_path / "c", "gated", 8, 0.1, 5, batch_size=16, progress=False, init_sample_size=50)
    assert sae.d_in == D
    with pytest.raises(FileNotFoundError, match="not an activation cache"):
        as_source(tmp_path)


def test_a_cache_carries_its_manifests_site_into_the_sae(tmp_path):
    build(tmp_path / "c")
    assert CacheSource(tmp_path / "c").metadata == {"model_name": "fake", "hook_name": "blocks.0.hook_resid_post",
                                                    "context_size": CTX, "dataset_path": "synthetic"}
    assert as_source(torch.zeros(4, D)).metadata == {}
    opts = {"batch_size": 16, "progress": False, "init_sample_size": 50}
    sae = train_sae(tmp_path / "c", "gated", 8, 0.1, 5, **opts)
    assert sae.metadata == CacheSource(tmp_path / "c").metadata
    # The caller's metadata wins, key by key; the cache fills the rest.
    sae = train_sae(tmp_path / "c", "gated", 8, 0.1, 5, metadata={"hook_name": "mine", "note": 1}, **opts)
    assert sae.metadata == {"model_name": "fake", "hook_name": "mine", "context_size": CTX, "dataset_path": "synthetic",
                            "note": 1}


# ---------------------------------------------------------------- half-precision storage
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_round_trip(tmp_path, dtype):
    build(tmp_path / "full")
    build(tmp_path / "half", dtype=dtype)
    full, half = CacheSource(tmp_path / "full"), CacheSource(tmp_path / "half")
    assert half.dtype == dtype and half.manifest["dtype"] == dtype
    stored = getattr(torch, dtype)
    for i in range(len(full.shards)):
        assert half.load_shard(i)["activations"].dtype == stored
        assert torch.equal(half.shard_activations(i), full.shard_activations(i).to(stored).float())
        assert torch.equal(half.tokens_of_rows(i)[1], full.tokens_of_rows(i)[1])
    # every reader hands out float32: the same rows as the float32 cache, rounded
    for a, b in zip(half.batches(16, seed=1), full.batches(16, seed=1), strict=False):
        assert a.dtype == torch.float32 and torch.equal(a, b.to(stored).float())
        break
    assert torch.equal(torch.cat(list(half.in_order(64))), torch.cat(list(full.in_order(64))).to(stored).float())
    assert torch.equal(half.sample(50, seed=2), full.sample(50, seed=2).to(stored).float())


def test_float16_overflow_is_an_error_naming_the_row_and_the_fix(tmp_path):
    window_6 = list(windows())[6]

    def huge_in_window_7(tokens):
        out = fake_activations(tokens)
        if torch.equal(tokens[0], window_6):  # the batch of windows 6, 7, 8
            out[1, 5, 3] = 1e5
        return out

    row = 7 * (CTX - 1) + 4  # windows 0..6, then positions 1..4 of window 7
    with pytest.raises(ValueError, match=rf"'blocks.0.hook_resid_post': activation row {row} of the cache "
                                         r"\(window 7, position 5, column 3\) is 100000.*inf in float16.*65504.*"
                                         r"dtype='bfloat16'.*dtype='float32'"):
        build(tmp_path / "f16", fn=huge_in_window_7, dtype="float16")
    build(tmp_path / "bf16", fn=huge_in_window_7, dtype="bfloat16")
    top = float(torch.cat(list(CacheSource(tmp_path / "bf16").in_order(200))).max())
    assert top == float(torch.tensor(1e5).bfloat16())  # 99840: bfloat16 keeps the range, not the digits


def test_float16_check_is_on_the_stored_rows_after_the_outlier_filter(tmp_path):
    def with_outliers(tokens):
        out = fake_activations(tokens)
        out[:, 3] *= 1000.0  # up to 1e5: would overflow float16, but the filter drops them
        return out

    build(tmp_path / "c", fn=with_outliers, outlier_factor=10.0, dtype="float16")
    assert bool(torch.isfinite(torch.cat(list(CacheSource(tmp_path / "c").in_order(100)))).all())


def test_a_float16_cache_trains_and_evaluates(tmp_path):
    build(tmp_path / "c", dtype="float16")
    sae = train_sae(tmp_path / "c", "gated", 8, 0.1, 5, batch_size=16, progress=False, init_sample_size=50)
    result = evaluate(sae, tmp_path / "c")
    assert result["n_tokens"] == 150 and result["fvu"] == result["fvu"]  # finite, not NaN


def test_unknown_or_integer_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown dtype"):
        build(tmp_path / "a", dtype="float8")
    with pytest.raises(ValueError, match="floating-point"):
        build(tmp_path / "b", dtype=torch.int32)


# ---------------------------------------------------------------- several sites
def two_sites(tokens, sites):
    """Site "a" as fake_activations; site "b" = 2 * a, with a huge row where a is normal."""
    a = fake_activations(tokens)
    b = 2 * a
    b[:, 2] *= 1000.0
    return {name: {"a": a, "b": b}[name] for name in sites}


def build_two(root, fn=two_sites, sites=("a", "b"), n_tokens=150, **kw):
    infos = {s: {**INFO, "hook_name": f"site.{s}"} for s in sites}
    return build_caches({s: root / s for s in sites}, windows(), fn, n_tokens, infos, batch_size=3,
                        shard_tokens=40, progress=False, **kw)


def global_positions(path):
    """Each row's window * CTX + position, over the whole cache."""
    src = CacheSource(path)
    return torch.cat([src.tokens_of_rows(i)[1] + CTX * int(src.load_shard(i)["first_window"])
                      for i in range(len(src.shards))])


def test_build_caches_match_build_cache_and_filter_on_one_site(tmp_path):
    out = build_two(tmp_path / "m")
    build_cache(tmp_path / "a", windows(), lambda t: two_sites(t, ["a"])["a"], 150,
                {**INFO, "hook_name": "site.a"}, batch_size=3, shard_tokens=40, progress=False)
    digests = [[s["sha256"] for s in CacheSource(path).shards] for path in (out["a"], tmp_path / "a")]
    assert digests[0] == digests[1]
    rows_a = torch.cat(list(CacheSource(out["a"]).in_order(200)))
    assert torch.equal(torch.cat(list(CacheSource(out["b"]).in_order(200))), 2 * rows_a * torch.tensor(
        [1.0 if p != 2 else 1000.0 for p in rows_a[:, 1].long().tolist()])[:, None])
    # with the filter, the first site decides: b's huge position-2 rows are kept, and aligned with a's
    filtered = build_two(tmp_path / "f", outlier_factor=10.0)
    pos = [global_positions(filtered[s]) for s in "ab"]
    assert torch.equal(pos[0], pos[1]) and bool((pos[0] % CTX == 2).any())
    assert CacheSource(filtered["b"]).manifest["settings"]["outlier_site"] == "site.a"
    assert "outlier_site" not in CacheSource(filtered["a"]).manifest["settings"]
    by_b = build_two(tmp_path / "g", outlier_factor=10.0, filter_site="b")
    assert not bool((torch.cat(list(CacheSource(by_b["a"]).in_order(200)))[:, 1] == 2).any())


def test_build_caches_only_computes_what_is_missing(tmp_path):
    asked = []

    def recording(tokens, sites):
        asked.append(tuple(sites))
        return two_sites(tokens, sites)

    build_two(tmp_path / "m", sites=("a",))
    build_two(tmp_path / "m", fn=recording)
    assert set(asked) == {("b",)}
    asked.clear()
    build_two(tmp_path / "m", fn=recording)
    assert asked == []


def test_a_refused_multi_site_call_creates_nothing(tmp_path):
    build_two(tmp_path / "m", sites=("a",))
    with pytest.raises(CacheError, match="other settings.*n_tokens_requested: cache 150, now 160"):
        build_two(tmp_path / "m", n_tokens=160)
    assert not (tmp_path / "m" / "b").exists()


def test_build_caches_warn_for_every_site_when_the_text_runs_out(tmp_path):
    with pytest.warns(UserWarning, match="text ran out after 280 of 1,000") as record:
        out = build_two(tmp_path / "m", n_tokens=1000)
    assert len(record) == 2
    assert all(CacheSource(out[s]).manifest["complete"] and CacheSource(out[s]).n == 280 for s in "ab")


def test_a_new_harvest_removes_what_a_killed_one_left(tmp_path):
    build(tmp_path / "c", n_tokens=60)
    junk = [tmp_path / "c" / ".shard_00002.safetensors.k3j4.tmp", tmp_path / "c" / ".manifest.json.a1b2.tmp"]
    for file in junk:
        file.write_bytes(b"half written")
    build(tmp_path / "c", n_tokens=60)
    assert not any(file.exists() for file in junk)


def edit_manifest(cache, change):
    manifest = json.loads((cache / "manifest.json").read_text())
    change(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("path", ["../other/shard_00001.safetensors", "/etc/passwd", "sub/shard_00001.safetensors",
                                  "..", "manifest.json"])
def test_manifest_paths_outside_the_cache_are_refused(tmp_path, path):
    build(tmp_path / "other")
    build(tmp_path / "c")
    sha = json.loads((tmp_path / "other" / "manifest.json").read_text())["shards"][1]["sha256"]
    edit_manifest(tmp_path / "c", lambda m: m["shards"][0].update(path=path, sha256=sha))
    with pytest.raises(CacheError, match=r"c/manifest.json: shards\[0\].path is .*not a shard file name"):
        CacheSource(tmp_path / "c")
    with pytest.raises(CacheError, match=r"shards\[0\].path"):
        build(tmp_path / "c", n_tokens=150)  # resuming the harvest refuses it too


def test_a_file_that_is_not_the_shard_is_refused_before_hashing(tmp_path, monkeypatch):
    from sae_helpers.data.cache import reading

    build(tmp_path / "c")
    shard = tmp_path / "c" / "shard_00001.safetensors"
    hashed = []
    monkeypatch.setattr(reading, "sha256_file", lambda p: hashed.append(p) or "x")
    for content in (b"root:x:0:0:root:/root:/bin/bash\n" * 100, shard.read_bytes() + b"\0" * 300_000):
        shard.write_bytes(content)
        with pytest.raises(CacheError, match="shard_00001.safetensors does not match .*manifest.json.*harvest again"):
            CacheSource(tmp_path / "c").shard_activations(1)
    other = tmp_path / "c" / "shard_00003.safetensors"
    shard.write_bytes(other.read_bytes())  # a valid shard of another size
    with pytest.raises(CacheError, match=r"activations are F32 \[30, 5\], the manifest says F32 \[40, 5\]"):
        CacheSource(tmp_path / "c").shard_activations(1)
    assert hashed == []


def test_duplicate_shard_entries_are_refused(tmp_path):
    build(tmp_path / "c")
    edit_manifest(tmp_path / "c", lambda m: m["shards"].append(m["shards"][0]))
    with pytest.raises(CacheError, match=r"shards\[4\].path 'shard_00000.safetensors' is listed twice"):
        CacheSource(tmp_path / "c")


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_rows_in_a_shard_are_an_error_naming_the_shard(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    from sae_helpers._io import sha256_file

    build(tmp_path / "c", dtype="float16")
    sae = train_sae(tmp_path / "c", "gated", 8, 0.1, 5, batch_size=16, progress=False, init_sample_size=50)
    # What a harvest without the float16 check wrote: an inf (or NaN) in shard 2, with a matching checksum.
    shard = tmp_path / "c" / "shard_00002.safetensors"
    tensors = load_file(str(shard))
    tensors["activations"][7, 2] = bad
    save_file(tensors, str(shard))
    edit_manifest(tmp_path / "c", lambda m: m["shards"][2].update(sha256=sha256_file(shard)))
    message = rf"shard_00002.safetensors holds a non-finite activation \({bad}\) at row 7, column 2.*harvest again"
    with pytest.raises(CacheError, match=message):
        evaluate(sae, tmp_path / "c")
    with pytest.raises(CacheError, match=message):
        train_sae(tmp_path / "c", "gated", 8, 0.1, 40, batch_size=16, progress=False, init_sample_size=50)


def test_a_text_too_short_for_one_window_is_an_error_not_an_empty_complete_cache(tmp_path):
    for _ in range(2):  # running it again gives the same clear error
        with pytest.raises(CacheError, match="text ran out before one window of 8 tokens.*smaller context_size"):
            build_cache(tmp_path / "c", iter([]), fake_activations, 100, INFO, progress=False)
        assert not json.loads((tmp_path / "c" / "manifest.json").read_text())["complete"]


def test_a_manifest_whose_n_tokens_lies_is_refused(tmp_path):
    calls = []

    def stop_after_two_batches(tokens):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_activations(tokens)

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "c", fn=stop_after_two_batches)  # one shard of 40 written
    edit_manifest(tmp_path / "c", lambda m: m.update(n_tokens=140))
    with pytest.raises(CacheError, match=r"manifest.json: n_tokens is 140, but its shards hold 40 rows.*harvest again"):
        build(tmp_path / "c")


def _drop_activations(cache, manifest):
    from safetensors.torch import load_file, save_file

    from sae_helpers._io import sha256_file

    shard = cache / manifest["shards"][0]["path"]
    tensors = load_file(str(shard))
    tensors["acts"] = tensors.pop("activations")
    save_file(tensors, str(shard))
    manifest["shards"][0]["sha256"] = sha256_file(shard)


def _no_rows(cache, manifest):
    for shard in manifest["shards"]:
        shard["n_tokens"] = 0
    manifest["n_tokens"] = 0


@pytest.mark.parametrize("change, message", [
    (lambda c, m: m["shards"][0].pop("path"), r"shards\[0\] lacks \['path'\]"),
    (lambda c, m: m["shards"][1].pop("sha256"), r"shards\[1\] lacks \['sha256'\]"),
    (lambda c, m: m.update(shards={"shard_00000.safetensors": {}}), "'shards' must be a list of shard entries, found "
                                                                   "dict"),
    (_no_rows, r"shards\[0\].n_tokens is 0, not a positive number of rows"),
    (lambda c, m: m["shards"][2].update(n_tokens="40"), r"shards\[2\].n_tokens is '40', not a positive number"),
    (_drop_activations, "shard_00000.safetensors does not match .*no 'activations' tensor"),
])
def test_a_damaged_manifest_or_shard_is_a_clear_error(tmp_path, change, message):
    build(tmp_path / "c")
    edit_manifest(tmp_path / "c", lambda m: change(tmp_path / "c", m))
    with pytest.raises(CacheError, match=f"{message}.*harvest again"):
        evaluate(train_sae(torch.randn(100, D), "relu", 8, 0.1, 2, batch_size=16, progress=False,
                           init_sample_size=50), tmp_path / "c")


@pytest.mark.parametrize("kwargs, message", [
    ({"n_tokens": 150.5}, "n_tokens must be a positive integer, got 150.5 \\(float\\); pass e.g. n_tokens=int"),
    ({"n_tokens": "150"}, "n_tokens must be a positive integer, got '150' \\(str\\)"),
    ({"n_tokens": 0}, "n_tokens must be a positive integer, got 0"),
    ({"shard_tokens": 4.0}, "shard_tokens must be a positive integer, got 4.0"),
])
def test_build_cache_counts_must_be_positive_integers(tmp_path, kwargs, message):
    args = {"n_tokens": 150, "shard_tokens": 40, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_cache(tmp_path / "c", windows(), fake_activations, args["n_tokens"], INFO, batch_size=3,
                    shard_tokens=args["shard_tokens"], progress=False)
    assert not (tmp_path / "c").exists()
