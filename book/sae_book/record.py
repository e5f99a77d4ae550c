"""A chapter's record: its headline sentence and its key numbers, kept in the executed notebook.

Both are stored as myst-nb *glue* outputs (hidden: nothing shows in the notebook), in the
format ``myst_nb.glue(name, value, display=False)`` writes, so

* the book pastes them (``{glue:text}`` / ``{glue:md}`` on the chapter's own page); and
* tools read them back from an executed notebook with :func:`read_record` (the front page,
  the batch runner's table of key numbers across runs).

myst-nb itself is not needed at run time (Colab does not have it): the outputs are written
with IPython alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

__all__ = ["GLUE_PREFIX", "HEADLINE", "KEY_NUMBERS", "Record", "headline", "key_numbers", "read_record"]

#: The mimetype prefix of a hidden glue output (myst_nb.ext.glue.GLUE_PREFIX).
GLUE_PREFIX = "application/papermill.record/"
#: Glue names of the headline (markdown text) and the key numbers (a JSON object).
HEADLINE = "headline"
KEY_NUMBERS = "key_numbers"

Number = int | float | str | bool | None


class Record(NamedTuple):
    """What an executed chapter recorded: its headline (``None`` if none) and key numbers."""

    headline: str | None
    key_numbers: dict[str, Number]


def _glue(name: str, bundle: dict[str, object]) -> None:
    from IPython.display import display

    display({GLUE_PREFIX + mime: value for mime, value in bundle.items()}, raw=True,
            metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}})


def headline(text: str) -> None:
    """Record the chapter's one-sentence headline result (markdown; computed, never typed)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("headline: give the chapter's result as a non-empty sentence")
    _glue(HEADLINE, {"text/plain": text, "text/markdown": text})


def key_numbers(numbers: Mapping[str, Number]) -> None:
    """Record the chapter's key numbers, ``{name: value}`` (plain numbers, strings, booleans).

    Non-finite floats are stored as ``None`` (JSON has no NaN)."""
    clean: dict[str, Number] = {}
    for name, value in numbers.items():
        if hasattr(value, "item") and not isinstance(value, str):  # numpy / torch scalars
            value = value.item()
        if not isinstance(value, int | float | str | bool | type(None)):
            raise TypeError(f"key_numbers: {name!r} is a {type(value).__name__}; record plain numbers or strings")
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        clean[str(name)] = value
    # As a JSON string: nbformat allows structured data only under an unprefixed */json mimetype.
    _glue(KEY_NUMBERS, {"text/plain": json.dumps(clean)})


def read_record(notebook: str | Path) -> Record:
    """The :class:`Record` of an executed notebook (the last of each name wins, as in myst-nb)."""
    path = Path(notebook)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a readable notebook ({error})") from error
    found: dict[str, dict] = {}
    for cell in cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            meta = output.get("metadata", {}).get("scrapbook")
            if meta and meta.get("name") in (HEADLINE, KEY_NUMBERS):
                prefix = meta.get("mime_prefix", "")
                found[meta["name"]] = {mime[len(prefix):]: value for mime, value in output.get("data", {}).items()}
    text, numbers = (_joined(found.get(name, {}).get("text/plain")) for name in (HEADLINE, KEY_NUMBERS))
    try:
        parsed = json.loads(numbers) if numbers is not None else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"{path}: the {KEY_NUMBERS!r} output is not a JSON object: {numbers!r:.200}")
    return Record(text, parsed)


def _joined(text: str | list[str] | None) -> str | None:
    """nbformat may store a string as a list of lines."""
    return "".join(text) if isinstance(text, list) else text
