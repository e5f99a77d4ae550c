"""The package as Colab installs it: the notebooks extra keeps a preinstalled torch, the profiles ship inside."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of what a pip install of the repository reads (builds write into their source tree)."""
    copy = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "sae_helpers", copy / "sae_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    return copy


def pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_wheel_holds_the_profiles(project, tmp_path):
    pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(project), cwd=tmp_path)
    [wheel] = tmp_path.glob("sae_helpers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("sae_helpers/profiles/gpu/")}
    assert {f"{path.stem}.yaml" for path in (ROOT / "notebooks").glob("*.ipynb")} <= shipped


@pytest.mark.network
def test_the_notebooks_extra_keeps_the_installed_torch(project, tmp_path):
    """pip's plan for `.[notebooks]` in this venv (torch 2.13.0 installed, as Colab has its own): torch, numpy
    and ipykernel are not (re)installed."""
    report = tmp_path / "report.json"
    pip("install", "--dry-run", "--quiet", "--no-build-isolation", "--report", str(report),
        f"{project}[notebooks]", cwd=tmp_path)
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "sae-helpers" in planned or "sae_helpers" in planned
    assert not planned & {"torch", "numpy", "ipykernel"}, planned
