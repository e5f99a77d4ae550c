"""Activation sources: tensors, .safetensors files, iterables; and their errors."""

import pytest
import torch
from safetensors.torch import save_file

from sae_helpers.data.sources import as_source


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
