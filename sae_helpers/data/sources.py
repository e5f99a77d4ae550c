"""Turn the ``activations`` argument into batches.

``activations`` may be a 2-D tensor, a ``.safetensors`` file holding one 2-D tensor
named ``activations``, an activation cache directory (see :mod:`.cache`), or any
iterable of ``[batch, d]`` tensors. Every source gives

* ``d``: the activation width;
* ``batches(batch_size, seed, start_step)``: training batches whose order is a pure
  function of ``(seed, step)`` (tensors and files) or of the iterable's order, so a
  resumed run sees exactly the batches an uninterrupted one would;
* ``in_order(batch_size)``: every row once, in order (evaluation);
* ``sample(n, seed)``: a few rows to initialise ``b_dec`` and the activation scale;
* ``fingerprint()``: a short string that identifies the data (cheap: a cache's shard
  checksums, a tensor's shape and a hash of a sample of its rows), stored in training
  checkpoints so that a run is never resumed on other data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

TENSOR_NAME = "activations"
_CHECK_CHUNK = 65536


class ActivationSource(Protocol):
    d: int
    description: str

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[Tensor]: ...

    def in_order(self, batch_size: int) -> Iterator[Tensor]: ...

    def sample(self, n: int, seed: int) -> Tensor: ...


def check_finite(x: Tensor, description: str, row_offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first row and column holding NaN or inf."""
    for start in range(0, x.shape[0], _CHECK_CHUNK):
        chunk = x[start : start + _CHECK_CHUNK]
        finite = torch.isfinite(chunk)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0]
            row, col = int(bad[0]) + start + row_offset, int(bad[1])
            value = chunk[bad[0], bad[1]].item()
            raise ValueError(
                f"Activations in {description} contain a non-finite value ({value}) at row {row}, "
                f"column {col}. Remove or repair those rows (e.g. x[torch.isfinite(x).all(1)]) "
                "before training or evaluating."
            )


def _check_matrix(x: Tensor, description: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Activations in {description} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != 2:
        raise ValueError(
            f"Activations in {description} must be 2-D [n_tokens, d], got shape {tuple(x.shape)}. "
            "Flatten batch and position dimensions first, e.g. x.reshape(-1, x.shape[-1])."
        )
    if not x.is_floating_point():
        raise ValueError(f"Activations in {description} must be floating point, got {x.dtype}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"Activations in {description} are empty (shape {tuple(x.shape)}).")


def rows_fingerprint(x: Tensor, n_rows: int = 256) -> str:
    """Shape plus the sha256 of ``n_rows`` evenly spaced rows (first and last included)."""
    index = torch.linspace(0, x.shape[0] - 1, min(n_rows, x.shape[0])).round().long().unique()
    digest = hashlib.sha256(f"{tuple(x.shape)}".encode())
    digest.update(x[index].detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return f"rows {x.shape[0]}x{x.shape[1]} sample-sha256 {digest.hexdigest()[:16]}"


def data_fingerprint(source: ActivationSource) -> str | None:
    """``source.fingerprint()``, or ``None`` for a source that has none."""
    fingerprint = getattr(source, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


class TensorSource:
    """An in-memory (or memory-mapped) ``[n, d]`` tensor, reshuffled every epoch."""

    def __init__(self, x: Tensor, description: str = "the activations tensor") -> None:
        _check_matrix(x, description)
        check_finite(x, description)
        self.x = x
        self.n, self.d = x.shape
        self.description = description

    def _epoch_permutation(self, seed: int, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def fingerprint(self) -> str:
        return rows_fingerprint(self.x)

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[Tensor]:
        position = start_step * batch_size  # index into the endless concatenation of epochs
        epoch, offset = divmod(position, self.n)
        perm = self._epoch_permutation(seed, epoch)
        while True:
            parts, need = [], batch_size
            while need:
                take = perm[offset : offset + need]
                parts.append(take)
                need -= len(take)
                offset += len(take)
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    perm = self._epoch_permutation(seed, epoch)
            yield self.x[torch.cat(parts)]

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, self.n, batch_size):
            yield self.x[start : start + batch_size]

    def sample(self, n: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed + 7919)
        return self.x[torch.randperm(self.n, generator=gen)[: min(n, self.n)]]


class IterableSource:
    """Any iterable of ``[batch, d]`` tensors, re-chunked to the training batch size.

    Re-iterable inputs (lists, datasets) are looped over for further epochs; a one-shot
    iterator (a generator) is read once. Resuming skips the batches already consumed,
    which needs the iterable to yield the same tensors again.
    """

    def __init__(self, iterable: Iterable[Tensor], description: str = "the activations iterable") -> None:
        self.iterable = iterable
        self.description = description
        self.one_shot = iter(iterable) is iterable
        self._head: list[Tensor] = []  # chunks read ahead (to learn d) on one-shot iterators
        self._iterator: Iterator[Tensor] | None = None
        first = self._peek()
        self.d = first.shape[1]

    def fingerprint(self) -> str:
        """Width and a hash of a sample of the first tensor's rows (the only cheap part to read)."""
        first = self._head[0] if self.one_shot and self._head else next(iter(self.iterable))
        return f"iterable, first item {rows_fingerprint(first)}"

    def _raw(self) -> Iterator[Tensor]:
        if self.one_shot:
            if self._iterator is None:
                self._iterator = iter(self.iterable)
            while self._head:
                yield self._head.pop(0)
            yield from self._iterator
        else:
            yield from self.iterable

    def _peek(self) -> Tensor:
        if self.one_shot:
            self._iterator = iter(self.iterable)
            try:
                chunk = next(self._iterator)
            except StopIteration:
                raise ValueError(f"{self.description} yielded no tensors.") from None
            self._head.append(chunk)
        else:
            try:
                chunk = next(iter(self.iterable))
            except StopIteration:
                raise ValueError(f"{self.description} yielded no tensors.") from None
        _check_matrix(chunk, self.description)
        return chunk

    def _checked(self) -> Iterator[Tensor]:
        rows = 0
        for i, chunk in enumerate(self._raw()):
            _check_matrix(chunk, f"{self.description} (item {i})")
            if chunk.shape[1] != self.d:
                raise ValueError(
                    f"{self.description}: item {i} has width {chunk.shape[1]}, earlier items {self.d}. "
                    "All tensors must come from the same site."
                )
            check_finite(chunk, f"{self.description} (item {i})", row_offset=rows)
            rows += chunk.shape[0]
            yield chunk

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[Tensor]:
        del seed  # the iterable's own order is the data order
        skip = start_step * batch_size
        if skip and self.one_shot:
            raise ValueError(
                f"Cannot resume from {self.description}: it is a one-shot iterator. Pass a tensor, "
                "a .safetensors file, or a re-iterable (list) of tensors to resume training."
            )
        buffer: list[Tensor] = []
        buffered = 0
        while True:
            produced = False
            for chunk in self._checked():
                produced = True
                if skip:
                    if chunk.shape[0] <= skip:
                        skip -= chunk.shape[0]
                        continue
                    chunk, skip = chunk[skip:], 0
                buffer.append(chunk)
                buffered += chunk.shape[0]
                while buffered >= batch_size:
                    joined = torch.cat(buffer)
                    yield joined[:batch_size]
                    rest = joined[batch_size:]
                    buffer, buffered = ([rest] if len(rest) else []), len(rest)
            if self.one_shot or not produced:
                return

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        del batch_size
        yield from self._checked()

    def sample(self, n: int, seed: int) -> Tensor:
        del seed
        rows, got = [], 0
        if self.one_shot:
            # Read ahead and keep the chunks so training still sees them.
            assert self._iterator is not None
            for chunk in self._head:
                rows.append(chunk)
                got += chunk.shape[0]
            while got < n:
                try:
                    chunk = next(self._iterator)
                except StopIteration:
                    break
                self._head.append(chunk)
                rows.append(chunk)
                got += chunk.shape[0]
        else:
            for chunk in self.iterable:
                rows.append(chunk)
                got += chunk.shape[0]
                if got >= n:
                    break
        x = torch.cat(rows)[:n]
        check_finite(x, self.description)
        return x


def load_activation_file(path: str | os.PathLike) -> Tensor:
    """The ``activations`` tensor of a ``.safetensors`` file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Activation file not found: {path}. Check the path.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if TENSOR_NAME not in names:
                raise ValueError(
                    f"Activation file {path} has no tensor named {TENSOR_NAME!r} (found {names}). "
                    f"Save the activations with safetensors.torch.save_file({{'{TENSOR_NAME}': x}}, path)."
                )
            return handle.get_tensor(TENSOR_NAME)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"Activation file {path} is not a readable .safetensors file ({err}).") from err


def as_source(activations) -> ActivationSource:
    """Wrap any supported ``activations`` argument as an :class:`ActivationSource`."""
    if isinstance(activations, Tensor):
        return TensorSource(activations)
    if isinstance(activations, (str, os.PathLike)):
        path = Path(activations)
        if path.is_dir():
            from .cache import CacheSource, is_cache_dir

            if not is_cache_dir(path):
                raise FileNotFoundError(
                    f"{path} is a directory without a manifest.json, so not an activation cache. "
                    "Pass a cache written by sae_helpers.harvest, a .safetensors file or a tensor."
                )
            return CacheSource(path)
        if path.suffix != ".safetensors":
            raise ValueError(
                f"Activation file {path} must be a .safetensors file holding a 2-D tensor named "
                f"{TENSOR_NAME!r}."
            )
        return TensorSource(load_activation_file(path), description=f"file {path}")
    if isinstance(activations, Iterable):
        return IterableSource(activations)
    raise TypeError(
        "activations must be a 2-D tensor, a .safetensors file path, or an iterable of [batch, d] "
        f"tensors; got {type(activations).__name__}."
    )
