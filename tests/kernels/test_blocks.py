"""The row-blocked passes' helpers: blocks, and the measured thread count of the passes (issue 18)."""

from __future__ import annotations

import pytest
import torch

from sae_helpers.kernels.blocks import CPU_BLOCK_BYTES, row_blocks
from sae_helpers.kernels.threads import PassThreads, pass_threads
from sae_helpers.saes import GatedSAE, ReluSAE


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def forced():
    """Set ``pass_threads.force`` inside a test; restored afterwards."""
    before = pass_threads.force
    yield pass_threads
    pass_threads.force = before


def test_row_blocks_cover_the_rows_in_cache_sized_pieces():
    t = torch.zeros(1000, 1024)
    blocks = row_blocks(t)
    assert blocks[0].start == 0 and blocks[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    assert all((b.stop - b.start) * 1024 * 4 <= CPU_BLOCK_BYTES for b in blocks)
    assert row_blocks(torch.zeros(5, 3, device="meta")) == [slice(0, 5)]  # one block off the CPU


@pytest.mark.parametrize(("force", "inside"), [("one", 1), ("all", 2)])
def test_a_pass_runs_on_the_chosen_threads_and_restores_them(two_threads, force, inside):
    passes = PassThreads()
    passes.force = force
    with passes("p", torch.zeros(3, 3)):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), passes("p", torch.zeros(3, 3)):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with passes("p", torch.zeros(3, 3, device="meta")):  # not a CPU tensor: nothing changes
        assert torch.get_num_threads() == 2


def test_the_choice_tries_both_then_takes_the_faster_and_keeps_exploring():
    passes, key = PassThreads(), ("p", (4, 4), torch.float32)
    assert passes.choose_one(key) is True  # first: one thread
    passes.record(key, True, 1.0)
    assert passes.choose_one(key) is False  # second: all threads
    passes.record(key, False, 2.0)
    picks = []
    for _ in range(2 * passes.explore_every):
        one = passes.choose_one(key)
        picks.append(one)
        passes.record(key, one, 1.0 if one else 2.0)
    assert picks.count(False) == 2  # one thread is faster; all threads tried every explore_every calls
    for _ in range(3 * passes.explore_every):  # the load goes: all threads become the faster
        one = passes.choose_one(key)
        passes.record(key, one, 3.0 if one else 0.5)
    assert passes.choose_one(key) is False


def test_the_choice_is_measured_in_a_real_pass(two_threads):
    passes = PassThreads()
    seen = []
    for _ in range(4):
        with passes("p", torch.zeros(8, 8)):
            seen.append(torch.get_num_threads())
    assert seen[:2] == [1, 2] and all(v is not None for v in passes.times[("p", (8, 8), torch.float32)])


@pytest.mark.parametrize("cls", [ReluSAE, GatedSAE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_thread_and_all_threads_give_the_same_bits(cls, dtype, two_threads, forced):
    torch.manual_seed(0)
    sae = cls(16, 3000, dtype=dtype)
    x = torch.randn(700, 16, dtype=dtype)  # four row blocks of 2 MiB / (3000 * 4 bytes) = 174 rows
    outs = []
    for force in ("one", "all"):
        forced.force = force
        sae.zero_grad()
        out = sae(x)
        sum(out.losses.values()).backward()
        assert torch.get_num_threads() == 2
        grads = [p.grad.clone() for p in sae.parameters()]
        outs.append([out.latents, out.reconstruction, *out.losses.values(), *grads])
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
