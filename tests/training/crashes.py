"""A planted crash in the middle of training, for the resume tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sae_helpers.training import TrainingRun


class Crash(Exception):
    """The planted crash."""


@contextmanager
def crashes_at(step: int) -> Iterator[None]:
    """Inside the block, a training run raises :class:`Crash` when it reaches ``step``; the block
    must crash (the test fails otherwise), and training is normal again after it."""
    original = TrainingRun.step

    def crashing_step(self: TrainingRun, batch, pool=None):
        if self.step_count == step:
            raise Crash
        return original(self, batch, pool)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        patch.setattr(TrainingRun, "step", crashing_step)
        yield
