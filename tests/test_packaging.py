"""The package as Colab installs it: one install holds the library and the book package (profiles inside), the
notebooks extra keeps a preinstalled torch, and the library imports nothing of the book."""

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
    for package in ("sae_helpers", "book/sae_book"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    return copy


def pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_wheel_holds_both_packages_and_the_profiles(project, tmp_path):
    pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(project), cwd=tmp_path)
    [wheel] = tmp_path.glob("sae_helpers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sae_helpers/__init__.py" in names and "sae_book/__init__.py" in names
    assert not any(name.startswith(("book/", "tools/")) for name in names), "only the two packages ship"
    shipped = {Path(name).name for name in names if name.startswith("sae_book/profiles/gpu/")}
    assert {f"{path.stem}.yaml" for path in (ROOT / "notebooks").glob("*.ipynb")} <= shipped


def test_the_library_imports_nothing_of_the_book():
    """`import sae_helpers` loads no book module, no plotting or table library, no model stack."""
    script = ("import sys, sae_helpers; print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert "sae_helpers" in loaded
    assert not loaded & {"sae_book", "pandas", "matplotlib", "seaborn", "yaml", "transformer_lens", "datasets",
                         "transformers", "IPython"}, loaded & {"sae_book", "pandas", "matplotlib", "seaborn"}


def test_the_top_level_is_small():
    import sae_helpers

    assert len(sae_helpers.__all__) <= 30
    assert all(hasattr(sae_helpers, name) for name in sae_helpers.__all__)


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
