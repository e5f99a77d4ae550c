"""The README's quickstart, run verbatim (in a scratch directory: its data/ goes there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> str:
    """The first python block after the README's "## Quickstart" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quickstart\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no python block under ## Quickstart"
    return match.group(1)


def test_the_quickstart_is_short():
    assert len(quickstart().strip().splitlines()) <= 10


def test_the_quickstart_runs_verbatim(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", quickstart()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'fvu'" in done.stdout and "'loss_recovered'" in done.stdout
    assert (tmp_path / "data" / "my_gated_sae" / "cfg.json").is_file()
