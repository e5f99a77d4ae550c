"""The row-blocked passes' helpers: blocks, and one thread for the passes (issue 18)."""

from __future__ import annotations

import pytest
import torch

from sae_helpers import GatedSAE, ReluSAE
from sae_helpers.kernels.blocks import CPU_BLOCK_BYTES, row_blocks, single_threaded


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_row_blocks_cover_the_rows_in_cache_sized_pieces():
    t = torch.zeros(1000, 1024)
    blocks = row_blocks(t)
    assert blocks[0].start == 0 and blocks[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    assert all((b.stop - b.start) * 1024 * 4 <= CPU_BLOCK_BYTES for b in blocks)
    assert row_blocks(torch.zeros(5, 3, device="meta")) == [slice(0, 5)]  # one block off the CPU


def test_single_threaded_runs_the_block_on_one_thread_and_restores(two_threads):
    with single_threaded(torch.zeros(3)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), single_threaded(torch.zeros(3)):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with single_threaded(torch.zeros(3, device="meta")):  # not a CPU tensor: nothing changes
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("cls", [ReluSAE, GatedSAE])
def test_fused_step_leaves_the_thread_count_and_matches_one_thread(cls, two_threads):
    torch.manual_seed(0)
    sae = cls(16, 3000)
    x = torch.randn(700, 16)  # four row blocks of 2 MiB / (3000 * 4 bytes) = 174 rows
    outs = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        sae.zero_grad()
        out = sae(x)
        sum(out.losses.values()).backward()
        assert torch.get_num_threads() == threads
        outs.append([out.latents, out.reconstruction, *[p.grad.clone() for p in sae.parameters()]])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
