"""Several processes as one: the ``torch.distributed`` group that training runs in.

Launched by ``torchrun --nproc-per-node N ...``, every process (rank) trains the same SAEs on its
slice of each global batch; :func:`process_group` joins the group that torchrun describes in the
environment (``gloo`` on the CPU, ``nccl`` on CUDA). With one process nothing here communicates.

A training step that needs a statistic of the *whole* batch (BatchTopK's selection of the
``k * N`` largest activations, the aux-k loss's batch variance) asks :func:`batch_group` for the
group it is being computed over: the trainer sets it for the duration of a step
(:func:`over_batch_group`), so an SAE used outside training never communicates.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["SINGLE", "World", "all_gather", "all_gather_objects", "all_max", "all_mean_", "all_min", "all_sum",
           "barrier", "batch_group", "broadcast_object", "check_same_everywhere", "gather_objects",
           "over_batch_group", "process_group"]


class World(NamedTuple):
    """This process's place among the processes that train together."""

    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World(0, 1)


def process_group(device: torch.device) -> World:
    """This process's :class:`World`: the initialised ``torch.distributed`` group, or the one that
    ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), joined here with ``nccl`` on
    CUDA and ``gloo`` on the CPU; one process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE is set but this torch build has no torch.distributed.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


_batch_world: contextvars.ContextVar[World] = contextvars.ContextVar("batch_world", default=SINGLE)


def batch_group() -> World:
    """The processes whose rows make up the batch now being computed (one process outside training)."""
    return _batch_world.get()


@contextlib.contextmanager
def over_batch_group(world: World) -> Iterator[None]:
    """Within the block, whole-batch statistics are reduced over ``world``."""
    token = _batch_world.set(world)
    try:
        yield
    finally:
        _batch_world.reset(token)


def _reduce(tensor: Tensor, op) -> Tensor:
    out = tensor.clone()
    dist.all_reduce(out, op=op)
    return out


def all_sum(tensor: Tensor, world: World) -> Tensor:
    """The sum of ``tensor`` over the processes (a copy; ``tensor`` itself with one process)."""
    return _reduce(tensor, dist.ReduceOp.SUM) if world.distributed else tensor


def all_max(tensor: Tensor, world: World) -> Tensor:
    return _reduce(tensor, dist.ReduceOp.MAX) if world.distributed else tensor


def all_min(tensor: Tensor, world: World) -> Tensor:
    return _reduce(tensor, dist.ReduceOp.MIN) if world.distributed else tensor


def all_gather(tensor: Tensor, world: World) -> Tensor:
    """The processes' ``tensor`` (the same shape on each) concatenated along dim 0, in rank order."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_mean_(tensors: Sequence[Tensor], world: World) -> None:
    """Replace each tensor by its mean over the processes, in place, in one all-reduce per dtype."""
    if not world.distributed or not tensors:
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world.size
        offset = 0
        for tensor in group:
            tensor.copy_(flat[offset: offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def barrier(world: World) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if world.distributed:
        dist.barrier()


def check_same_everywhere(value: object, what: str, world: World) -> None:
    """Refuse to go on unless every process holds the same ``value`` (e.g. the data's fingerprint).
    For dictionaries the error names the entries that differ."""
    values = all_gather_objects(value, world)
    if all(v == values[0] for v in values):
        return
    flat = [_flatten(v) for v in values]
    if all(isinstance(f, dict) for f in flat):
        keys = sorted({k for f in flat for k in f if any(g.get(k) != f.get(k) for g in flat)})
        shown = "; ".join(f"{key}: " + ", ".join(f"process {rank} {f.get(key)!r:.80}" for rank, f in enumerate(flat))
                          for key in keys)
    else:
        shown = "; ".join(f"process {rank}: {v!r:.120}" for rank, v in enumerate(values))
    raise ValueError(f"The processes disagree on {what} ({shown}). Launch every process with the same "
                     "arguments and the same data (the same activation cache, harvested with the same settings).")


def _flatten(value: object, prefix: str = "") -> object:
    """A nested dictionary as one ``{"a.b": leaf}`` dictionary (anything else as it is)."""
    if not isinstance(value, dict):
        return value
    flat: dict[str, object] = {}
    for key, item in value.items():
        inner = _flatten(item, f"{prefix}{key}.")
        flat.update(inner if isinstance(inner, dict) else {f"{prefix}{key}": inner})
    return flat


def all_gather_objects(value: object, world: World) -> list[object]:
    """Every process's ``value`` (picklable), in rank order (``[value]`` with one process)."""
    if not world.distributed:
        return [value]
    values: list[object] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: object, world: World) -> object:
    """Process 0's ``value`` (picklable) in every process; the other processes' ``value`` is ignored."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: object, world: World) -> list[object]:
    """Every process's ``value`` (picklable), in rank order, on process 0 only (``[]`` in the others).

    Tensors inside ``value`` travel pickled: keep them on the CPU."""
    if not world.distributed:
        return [value]
    values: list[object] | None = [None] * world.size if world.is_main else None
    dist.gather_object(value, values, dst=0)
    return values if values is not None else []
