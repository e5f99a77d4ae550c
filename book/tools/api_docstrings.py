"""Render sae_helpers' docstrings on the API page (``autodoc-process-docstring``).

The package writes its parameters numpy-style but as ``name : what it is`` (a description, not a
type) followed by indented continuation lines::

    Parameters
    ----------
    sae : an SAE from :func:`train_sae` (or loaded from a run directory):
        it needs ``training_config``.

:func:`format_sections` turns each ``Parameters``, ``Returns``, ``Raises``, ``Yields``,
``Attributes`` or ``Notes`` section into a rubric and a definition list (``**sae**`` and its
description), and leaves everything else as it is, so the docstrings render as written.
"""

from __future__ import annotations

import re

__all__ = ["SECTIONS", "format_sections", "setup"]

SECTIONS = ("Parameters", "Returns", "Raises", "Yields", "Attributes", "Notes", "Other Parameters", "Examples")
_ITEM = re.compile(r"^(?P<name>[A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)*)\s+:\s*(?P<text>.*)$")
_PLAIN = re.compile(r"^(?P<name>[A-Za-z_][\w]*)$")
#: Sections whose items may be a bare type or value (``Tensor``, ``(meta_sae, result)``) over their description.
_TERMS = ("Returns", "Yields", "Raises")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def format_sections(lines: list[str]) -> list[str]:
    """``lines`` with every numpy-style section rendered as a rubric and a definition list."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        title = line.strip()
        if title in SECTIONS and underline.strip() and set(underline.strip()) == {"-"}:
            base = _indent(line)
            out += [f"{' ' * base}.. rubric:: {title}", ""]
            i += 2
            while i < len(lines):
                item = lines[i]
                if not item.strip():
                    out.append(item)
                    i += 1
                    continue
                if _indent(item) < base:
                    break
                if _indent(item) == base:
                    following = lines[i + 1].strip() if i + 1 < len(lines) else ""
                    if following and set(following) == {"-"}:
                        break  # the next section
                    match = _ITEM.match(item.strip())
                    continued = i + 1 < len(lines) and lines[i + 1].strip() and _indent(lines[i + 1]) > base
                    if match is not None:
                        out.append(f"{' ' * base}**{match['name']}**")
                        if match["text"]:
                            out.append(f"{' ' * (base + 4)}{match['text']}")
                    elif title in _TERMS and (continued or _PLAIN.match(item.strip())):
                        out.append(f"{' ' * base}{item.strip()}")  # a returned value, described below it
                    else:
                        break  # prose after the list ends the section
                    i += 1
                    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                        follow = lines[i]
                        out.append(f"{' ' * (base + 4)}{follow.strip()}" if follow.strip() else "")
                        i += 1
                    continue
                out.append(item)
                i += 1
            if out and out[-1].strip():
                out.append("")
            continue
        out.append(line)
        i += 1
    return out


def _process(app, what, name, obj, options, lines: list[str]) -> None:  # noqa: ANN001 - Sphinx's signature
    lines[:] = format_sections(lines)


def setup(app) -> dict:  # noqa: ANN001 - Sphinx's signature
    """Register the docstring hook (``sphinx.local_extensions`` in _config.yml)."""
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
