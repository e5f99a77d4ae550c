"""Activation sources: tensors, .safetensors files, iterables; and their errors."""

import itertools

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from sae_helpers.data.sources import FileSource, TensorSource, as_source


def test_tensor_batches_are_a_pure_function_of_seed_and_step():
    x = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    src = as_source(x)
    full = [b for _, b in zip(range(12), src.batches(8, seed=3), strict=False)]
    resumed = [b for _, b in zip(range(5), src.batches(8, seed=3, start_step=7), strict=False)]
    for a, b in zip(full[7:], resumed, strict=False):
        assert torch.equal(a, b)
    # every epoch is a permutation of all rows
    rows = torch.cat(full)[:, 0]
    assert sorted(rows[:50].tolist()) == list(range(50))
    assert not torch.equal(full[0], next(src.batches(8, seed=4)))


def test_safetensors_file(tmp_path):
    x = torch.randn(20, 4)
    save_file({"activations": x}, str(tmp_path / "a.safetensors"))
    src = as_source(tmp_path / "a.safetensors")
    assert src.d == 4 and torch.equal(torch.cat(list(src.in_order(6))), x)
    save_file({"acts": x}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="no tensor named 'activations' \\(found \\['acts'\\]\\)"):
        as_source(tmp_path / "b.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        as_source(tmp_path / "missing.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        as_source(tmp_path / "c.safetensors")


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 3, 4), "must be 2-D"),
    (torch.ones(5, 3, dtype=torch.long), "floating point"),
    (torch.empty(0, 3), "empty"),
])
def test_bad_tensors(bad, message):
    with pytest.raises(ValueError, match=message):
        as_source(bad)


def test_non_finite_values_are_located():
    x = torch.randn(100, 6)
    x[42, 5] = float("nan")
    with pytest.raises(ValueError, match="row 42, column 5"):
        as_source(x)
    chunks = [torch.randn(10, 6), torch.randn(10, 6)]
    chunks[1][3, 1] = float("inf")
    src = as_source(chunks)
    with pytest.raises(ValueError, match="item 1\\).*row 13, column 1"):
        list(src.batches(4, seed=0))


def test_iterables_are_rechunked_and_looped():
    chunks = [torch.full((3, 2), float(i)) for i in range(4)]  # 12 rows
    src = as_source(chunks)
    batches = [b for _, b in zip(range(4), src.batches(5, seed=0), strict=False)]
    assert [b.shape[0] for b in batches] == [5, 5, 5, 5]
    assert batches[2][:, 0].tolist() == [3.0, 3.0, 0.0, 0.0, 0.0]  # second epoch begins
    resumed = next(src.batches(5, seed=0, start_step=2))
    assert torch.equal(resumed, batches[2])


def test_generator_is_read_once_and_sample_keeps_rows_for_training():
    def gen():
        for i in range(4):
            yield torch.full((3, 2), float(i))

    src = as_source(gen())
    assert src.d == 2
    assert src.sample(5, seed=0)[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    rows = torch.cat(list(src.batches(4, seed=0)))
    assert rows[:, 0].tolist() == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    with pytest.raises(ValueError, match="one-shot iterator"):
        next(as_source(gen()).batches(4, seed=0, start_step=1))


def test_unsupported_input():
    with pytest.raises(TypeError, match="must be a 2-D tensor"):
        as_source(3.0)
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        as_source("acts.npy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_file_source_gives_the_tensor_sources_batches(tmp_path, dtype):
    x = torch.randn(103, 5).to(dtype)
    save_file({"activations": x, "other": torch.zeros(3)}, str(tmp_path / "a.safetensors"))
    src, ref = as_source(tmp_path / "a.safetensors"), TensorSource(x)
    assert isinstance(src, FileSource) and src.d == 5 and src.n == 103
    for start in (0, 7, 40):  # 40 * 8 rows: past the second epoch's start
        got = list(itertools.islice(src.batches(8, seed=3, start_step=start), 30))
        want = list(itertools.islice(ref.batches(8, seed=3, start_step=start), 30))
        assert all(a.dtype == dtype and torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(src.in_order(10), ref.in_order(10), strict=True))
    assert torch.equal(src.sample(50, seed=1), ref.sample(50, seed=1))
    assert src.fingerprint() == ref.fingerprint()
    batch = next(src.batches(8, seed=0))
    batch.zero_()  # batches are copies: the file is never written
    assert torch.equal(as_source(tmp_path / "a.safetensors").x, x)


def test_file_source_reads_only_the_rows_asked_for(tmp_path, monkeypatch):
    import sae_helpers.data.sources as sources

    n, d = 1000, 16
    x = torch.randn(n, d)
    save_file({"activations": x}, str(tmp_path / "a.safetensors"))
    row = d * 4
    monkeypatch.setattr(sources, "_FILE_CHECK_BYTES", 100 * row)  # the file is 10 blocks
    reads: list[int] = []
    read_into = FileSource._read_into
    monkeypatch.setattr(FileSource, "_read_into", lambda self, buf, off: (reads.append(len(buf)),
                                                                         read_into(self, buf, off)))
    src = as_source(tmp_path / "a.safetensors")
    assert reads == [100 * row] * 10  # the NaN/inf check: one block at a time
    # the source holds no tensor of the data, only where it is
    assert not [v for v in vars(src).values() if isinstance(v, Tensor)]
    reads.clear()
    batch = next(src.batches(32, seed=0))
    assert batch.shape == (32, d) and reads == [row] * 32 and sum(reads) == 32 * row
    reads.clear()
    assert [len(b) for b in src.in_order(300)] == [300, 300, 300, 100]
    assert reads == [300 * row, 300 * row, 300 * row, 100 * row]
    reads.clear()
    src.sample(20, seed=0)
    assert sum(reads) == 20 * row


def test_file_source_locates_non_finite_rows_across_blocks(tmp_path, monkeypatch):
    import sae_helpers.data.sources as sources

    x = torch.randn(500, 8)
    x[333, 6] = float("inf")
    save_file({"activations": x}, str(tmp_path / "a.safetensors"))
    monkeypatch.setattr(sources, "_FILE_CHECK_BYTES", 64 * 8 * 4)
    with pytest.raises(ValueError, match="row 333, column 6"):
        as_source(tmp_path / "a.safetensors")


def test_file_source_refuses_non_float_and_non_matrix_files(tmp_path):
    save_file({"activations": torch.ones(4, 3, dtype=torch.long)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="floating point"):
        as_source(tmp_path / "a.safetensors")
    save_file({"activations": torch.randn(2, 3, 4)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="must be 2-D"):
        as_source(tmp_path / "b.safetensors")


def test_spaced_indices_stay_in_range_past_float32_precision():
    from sae_helpers.data.sources import spaced_indices

    for n in (1, 2, 7, 28_311_552, 2**31 + 5):
        index = spaced_indices(n, 64)
        assert index[0] == 0 and index[-1] == n - 1 and len(index) == min(64, n)
        assert bool((index.diff() > 0).all())
    assert len(spaced_indices(0, 64)) == 0
