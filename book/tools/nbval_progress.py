"""A pytest plugin for :mod:`book.tools.verify`: stderr and progress bars are left out of nbval's comparison.

What a chapter writes to stderr depends on the state of ``data/`` and on the machine, not on its
results: a harvest or a training run that already exists is reused without a progress bar, a
run recorded by an older version warns once while it is upgraded, and library warnings name the
path of the Python environment. The book does not show stderr either (``nb_output_stderr:
remove`` in ``_config.yml``). So nbval's ``coalesce_streams`` (which nbval 0.11.0 applies to the
stored and to the re-executed outputs alike, after resolving carriage returns) is wrapped:
stderr streams are dropped, tqdm's lines are removed from stdout, and a stream left empty is
dropped. Every other line of stdout, and every display output, is still compared.
"""

from __future__ import annotations

import re
from typing import Any

import nbval.plugin

__all__ = ["BAR", "strip_progress"]

#: One tqdm line: its ``[elapsed<remaining, rate...]`` or ``[elapsed, rate...]`` block, e.g.
#: ``train: 100%|##########| 200/200 [00:12<00:00, 16.3step/s, loss=0.1]`` or ``0it [00:00, ?it/s]``.
_TIME = r"\d+:\d{2}(?::\d{2})?"
BAR = re.compile(rf"^[^\n]*\[{_TIME}(?:<(?:{_TIME}|\?))?,\s*[^\]\n]*(?:/s|s/)[^\]\n]*\][^\n]*(?:\n|$)", re.MULTILINE)

_coalesce = nbval.plugin.coalesce_streams


def strip_progress(outputs: Any) -> Any:
    """nbval's ``coalesce_streams``, then stderr dropped, tqdm lines removed and empty streams dropped."""
    kept = []
    for output in _coalesce(outputs) or []:
        if output.get("output_type") == "stream":
            if output.get("name") == "stderr":
                continue
            output["text"] = BAR.sub("", output["text"])
            if not output["text"].strip():
                continue
        kept.append(output)
    return kept


def pytest_configure(config: Any) -> None:  # noqa: ARG001 - the pytest hook's signature
    nbval.plugin.coalesce_streams = strip_progress
