"""book/tools/build.py: make book's execution of the chapters: atomic, recorded, one at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from book.tools import build
from book.tools.inputs import current_chapter, read_build_record, record_path
from tests.book.notebooks import titled_notebook, write_notebook

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "notebooks" / "tiny.ipynb", "value = 1\npause = 0.0\nfail = False\n",
                   "import time\ntime.sleep(pause)\nassert not fail, 'planted failure'\nprint('value', value)")
    (tmp_path / "book" / "params").mkdir(parents=True)
    (tmp_path / "book" / "params" / "tiny.yaml").write_text("value: 7\n")
    for name in ("requirements.txt", "pyproject.toml"):
        (tmp_path / name).write_text("")
    return tmp_path


def _outputs(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


def _build_process(repo: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "book.tools.build", "notebooks/tiny.ipynb"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_chapter_is_executed_recorded_and_then_skipped(repo: Path) -> None:
    log: list[str] = []
    (out,) = build.build([repo / "notebooks" / "tiny.ipynb"], repo, log=log.append)
    assert "no record of a previous successful run, executing" in log[0]
    assert "value 7" in _outputs(out)  # the book's parameter file
    tags = [c["metadata"].get("tags", []) for c in json.loads(out.read_text())["cells"]]
    assert all("remove-cell" in t for t in tags if "parameters" in t or "injected-parameters" in t)
    assert current_chapter("tiny", repo) == out and not list(out.parent.glob(".tiny.*"))
    assert build.build([repo / "notebooks" / "tiny.ipynb"], repo, log=log.append) == []
    assert log[-1] == "tiny: up to date, skipped"
    out.write_text(out.read_text().replace("value 7", "value 8"))  # an edit or autosave of the chapter
    build.build([repo / "notebooks" / "tiny.ipynb"], repo, log=log.append)
    assert "differs from the notebook papermill wrote" in log[-1] and "value 7" in _outputs(out)


def test_a_failed_run_keeps_the_previous_chapter_and_no_record(repo: Path) -> None:
    source = repo / "notebooks" / "tiny.ipynb"
    (out,) = build.build([source], repo, log=lambda _: None)
    before = out.read_bytes()
    (repo / "book" / "params" / "tiny.yaml").write_text("value: 7\nfail: true\n")
    with pytest.raises(Exception, match="planted failure"):
        build.build([source], repo, log=lambda _: None)
    assert out.read_bytes() == before and read_build_record("tiny", repo) is None
    assert "planted failure" in (out.parent / "tiny.failed.ipynb").read_text()
    log: list[str] = []
    (repo / "book" / "params" / "tiny.yaml").write_text("value: 7\n")
    build.build([source], repo, log=log.append)
    assert "no record" in log[0] and not (out.parent / "tiny.failed.ipynb").exists()


def test_two_builds_at_once_leave_one_complete_chapter_and_its_record(repo: Path) -> None:
    (repo / "book" / "params" / "tiny.yaml").write_text("value: 7\npause: 4.0\n")
    first = _build_process(repo)
    deadline = time.monotonic() + 60
    while not (repo / "book" / "chapters" / ".tiny.executing.ipynb").exists():  # papermill has started
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = _build_process(repo)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and f"another process (pid {first.pid}) is executing chapters" in err
    assert first.wait(timeout=120) == 0, first.communicate()
    out = repo / "book" / "chapters" / "tiny.ipynb"
    assert current_chapter("tiny", repo) == out and "value 7" in _outputs(out)


def test_a_killed_build_leaves_the_previous_chapter_without_a_record(repo: Path) -> None:
    (out,) = build.build([repo / "notebooks" / "tiny.ipynb"], repo, log=lambda _: None)
    before = out.read_bytes()
    (repo / "book" / "params" / "tiny.yaml").write_text("value: 9\npause: 30.0\n")
    running = _build_process(repo)
    deadline = time.monotonic() + 60
    while not (out.parent / ".tiny.executing.ipynb").exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    os.killpg(running.pid, signal.SIGKILL)  # the build and its kernel
    running.wait(timeout=30)
    assert out.read_bytes() == before and not record_path("tiny", repo).exists()
    deadline = time.monotonic() + 30  # the system releases the lock once the killed process is gone
    while True:
        try:
            with build.build_lock(repo):
                break
        except build.BuildLocked:
            assert time.monotonic() < deadline, "the lock outlived the killed build"
            time.sleep(0.2)
    log: list[str] = []
    (repo / "book" / "params" / "tiny.yaml").write_text("value: 9\n")
    build.build([repo / "notebooks" / "tiny.ipynb"], repo, log=log.append)  # the lock died with the process
    assert "no record" in log[0] and "value 9" in _outputs(out) and current_chapter("tiny", repo) == out


def test_chapters_not_executed_get_a_placeholder_page_until_they_are(tmp_path: Path) -> None:
    for name in ("a", "b"):  # the chapters are the notebooks
        titled_notebook(tmp_path / "notebooks" / f"{name}.ipynb", f"Chapter {name}")
    chapters = tmp_path / "book" / "chapters"
    chapters.mkdir(parents=True)
    (chapters / "a.ipynb").write_text("{}")
    (written,) = build.placeholders(tmp_path)
    assert written == chapters / "b.md" and "make book NOTEBOOKS=notebooks/b.ipynb" in written.read_text()
    assert "# Chapter b" in written.read_text()
    assert build.placeholders(tmp_path) == [written]  # idempotent
    (chapters / "b.ipynb").write_text("{}")  # executed since: the placeholder goes
    assert build.placeholders(tmp_path) == [] and not written.exists()
    (chapters / "b.ipynb").unlink()
    written.write_text("# someone's own page\n")
    with pytest.raises(ValueError, match="b.md exists and is not a placeholder"):
        build.placeholders(tmp_path)
