"""The activation cache: shards, manifest, checksums, resume, and reading it back."""

import json

import pytest
import torch

from sae_helpers import train_sae
from sae_helpers.data.cache import CacheError, CacheSource, build_cache
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
