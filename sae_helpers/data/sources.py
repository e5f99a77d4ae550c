"""Turn the ``activations`` argument into batches.

``activations`` may be a 2-D tensor, a ``.safetensors`` file holding one 2-D tensor
named ``activations`` (read a batch at a time, never whole: :class:`FileSource`), an
activation cache directory (see :mod:`.cache`), or any
iterable of ``[batch, d]`` tensors. Every source gives

* ``d``: the activation width;
* ``batches(batch_size, seed, start_step)``: training batches whose order is a pure
  function of ``(seed, step)`` (tensors and files) or of the iterable's order, so a
  resumed run sees exactly the batches an uninterrupted one would;
* ``in_order(batch_size)``: every row once, in order (evaluation);
* ``sample(n, seed)``: a few rows to initialise ``b_dec`` and the activation scale;
* ``fingerprint()``: a short string that identifies the data (cheap: a cache's shard
  checksums, a tensor's shape and a hash of a sample of its rows), stored in training
  checkpoints so that a run is never resumed on other data;
* ``metadata``: what the data says about where it comes from, in the keys of an SAE's
  ``metadata`` (``model_name``, ``hook_name``, ``context_size``): a cache's manifest
  knows them, a tensor, file or iterable does not (``{}``). Training puts them into
  the SAE's metadata, so an SAE trained on a cache knows its site.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

TENSOR_NAME = "activations"
_CHECK_CHUNK = 65536
_FILE_CHECK_BYTES = 8 << 20  # a file source checks for NaN/inf this many bytes of rows at a time
_SAFETENSORS_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class ActivationSource(Protocol):
    d: int
    description: str

    @property
    def metadata(self) -> dict[str, Any]: ...

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


def spaced_indices(n: int, k: int) -> Tensor:
    """``min(k, n)`` evenly spaced indices into ``range(n)``, first and last included (integer
    arithmetic: a float32 ``linspace`` rounds indices past 2**24 out of range)."""
    k = min(k, n)
    if k <= 1:
        return torch.zeros(k, dtype=torch.long)
    return torch.arange(k, dtype=torch.long) * (n - 1) // (k - 1)


def rows_fingerprint(x: Tensor | TensorSource, chunk_rows: int = 1 << 16) -> str:
    """Shape, dtype and the sha256 of every row, read ``chunk_rows`` at a time (memory bounded;
    a :class:`FileSource` streams its file). Any changed value changes it."""
    n, d = (x.n, x.d) if isinstance(x, TensorSource) else x.shape
    digest = hashlib.sha256(f"{(n, d)}".encode())
    for start in range(0, n, chunk_rows):
        rows = x._range(start, start + chunk_rows) if isinstance(x, TensorSource) else x[start:start + chunk_rows]
        digest.update(str(rows.dtype).encode())
        digest.update(rows.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return f"rows {n}x{d} sha256 {digest.hexdigest()[:16]}"


def data_fingerprint(source: ActivationSource) -> str | None:
    """``source.fingerprint()``, or ``None`` for a source that has none."""
    fingerprint = getattr(source, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


class TensorSource:
    """An in-memory ``[n, d]`` tensor, reshuffled every epoch."""

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

    @property
    def metadata(self) -> dict[str, Any]:
        """Nothing is known about where the rows come from."""
        return {}

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
            yield self._gather(torch.cat(parts))

    def in_order(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, self.n, batch_size):
            yield self._range(start, start + batch_size)

    def sample(self, n: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed + 7919)
        return self._gather(torch.randperm(self.n, generator=gen)[: min(n, self.n)])

    def _gather(self, index: Tensor) -> Tensor:
        return self.x[index]

    def _range(self, start: int, stop: int) -> Tensor:
        return self.x[start:stop]


class FileSource(TensorSource):
    """The ``activations`` tensor of a ``.safetensors`` file, read a batch at a time.

    It gives exactly the rows a :class:`TensorSource` of the loaded tensor gives (same
    permutations, same batches, same samples, same fingerprint), but never holds the file:
    every batch reads just its rows with positional reads (``os.preadv``) into a fresh
    tensor, so resident memory stays at about one batch whatever the file's size. (A memory
    map would not do: the kernel maps whole neighbourhoods, up to huge pages, around every
    page a random row touches, so a shuffled batch makes most of the file resident.) The
    NaN/inf check at opening reads the file in blocks of ``_FILE_CHECK_BYTES``.
    """

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype, shape: list[int], begin: int) -> None:
        description = f"file {path}"
        _check_matrix(torch.empty((), dtype=dtype).expand(shape), description)  # shape and dtype only
        self.path = Path(path)
        self.n, self.d = shape
        self.dtype = dtype
        self.description = description
        self._begin = begin
        self._row_bytes = self.d * torch.empty(0, dtype=dtype).element_size()
        self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        chunk = max(1, _FILE_CHECK_BYTES // self._row_bytes)
        for start in range(0, self.n, chunk):
            check_finite(self._range(start, start + chunk), description, row_offset=start)

    @classmethod
    def open(cls, path: str | os.PathLike) -> TensorSource:
        """A :class:`FileSource` for ``path``; a :class:`TensorSource` of the loaded tensor when the
        file cannot be read in place (a dtype torch cannot view, an empty tensor, a big-endian machine)."""
        layout = _activation_layout(path)  # also validates the file, with the errors of load_activation_file
        if layout is None:
            return TensorSource(load_activation_file(path), description=f"file {path}")
        return cls(path, *layout)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()

    @property
    def x(self) -> Tensor:
        """The whole tensor, read into memory (what this source avoids; for small files and tests)."""
        return self._range(0, self.n)

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        if self._fd is None:
            raise ValueError(f"{self.description} is closed.")
        done = 0
        while done < len(buffer):
            part = buffer[done:]
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [part], offset + done)
            else:  # pragma: no cover - platforms without preadv (Windows)
                os.lseek(self._fd, offset + done, os.SEEK_SET)
                data = os.read(self._fd, len(part))
                part[: len(data)] = data
                got = len(data)
            if got == 0:
                raise ValueError(f"{self.description} ended early (was it changed or truncated while in use?).")
            done += got

    def _range(self, start: int, stop: int) -> Tensor:
        start, stop = max(0, start), min(stop, self.n)
        out = torch.empty(max(0, stop - start), self.d, dtype=self.dtype)
        if len(out):
            self._read_into(memoryview(out.view(torch.uint8).numpy()).cast("B"),
                            self._begin + start * self._row_bytes)
        return out

    def _gather(self, index: Tensor) -> Tensor:
        out = torch.empty(len(index), self.d, dtype=self.dtype)
        raw, size = memoryview(out.view(torch.uint8).numpy()).cast("B"), self._row_bytes
        rows = index.tolist()
        for k in sorted(range(len(rows)), key=rows.__getitem__):  # in file order
            self._read_into(raw[k * size : (k + 1) * size], self._begin + rows[k] * size)
        return out

    def fingerprint(self) -> str:
        return rows_fingerprint(self)


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

    @property
    def metadata(self) -> dict[str, Any]:
        """Nothing is known about where the rows come from."""
        return {}

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


def _checked_activation_file(path: str | os.PathLike, read: bool) -> Tensor | None:
    """Open ``path`` with safetensors and check it holds an ``activations`` tensor (clear errors);
    return that tensor when ``read``, else ``None``."""
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
            return handle.get_tensor(TENSOR_NAME) if read else None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"Activation file {path} is not a readable .safetensors file ({err}).") from err


def load_activation_file(path: str | os.PathLike) -> Tensor:
    """The ``activations`` tensor of a ``.safetensors`` file, with clear errors."""
    tensor = _checked_activation_file(path, read=True)
    assert tensor is not None
    return tensor


def _activation_layout(path: str | os.PathLike) -> tuple[torch.dtype, list[int], int] | None:
    """``(dtype, shape, byte offset)`` of the ``activations`` tensor of a ``.safetensors`` file,
    or ``None`` when it cannot be viewed in place; errors as :func:`load_activation_file`."""
    _checked_activation_file(path, read=False)
    with open(path, "rb") as handle:  # safe_open has checked the header; read the tensor's place from it
        (length,) = struct.unpack("<Q", handle.read(8))
        entry = json.loads(handle.read(length))[TENSOR_NAME]
    dtype = _SAFETENSORS_TORCH_DTYPES.get(entry["dtype"])
    shape = [int(v) for v in entry["shape"]]
    begin, end = (int(v) for v in entry["data_offsets"])
    if dtype is None or sys.byteorder != "little" or not shape or math.prod(shape) == 0:
        return None
    if end - begin != math.prod(shape) * torch.empty(0, dtype=dtype).element_size():
        return None
    return dtype, shape, 8 + length + begin


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
        return FileSource.open(path)
    if isinstance(activations, Iterable):
        return IterableSource(activations)
    raise TypeError(
        "activations must be a 2-D tensor, a .safetensors file path, or an iterable of [batch, d] "
        f"tensors; got {type(activations).__name__}."
    )
