"""book/tools/inputs.py: a chapter's inputs hash, the same as the shell pipeline make book used."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from book.tools.inputs import current_chapter, inputs_hash

#: The hash as the Makefile computed it with coreutils until it called book.tools.inputs: an
#: independent reference, so records written before the change stay valid.
SHELL = r"""
shared=$( { sha256sum requirements.txt pyproject.toml;
  find sae_helpers -type f -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; } )
{ echo "notebook $1 $(sha256sum < "notebooks/$1.ipynb" | cut -c1-64)";
  if [ -f "book/params/$1.yaml" ]; then echo "params $(sha256sum < "book/params/$1.yaml" | cut -c1-64)";
  else echo "params none"; fi;
  echo "$shared"; } | sha256sum | cut -c1-64
"""


def _shell_hash(root: Path, name: str) -> str:
    return subprocess.run(["bash", "-c", SHELL, "sh", name], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    for path, text in {"notebooks/a.ipynb": "{}", "notebooks/b.ipynb": "{ }", "book/params/a.yaml": "steps: 5\n",
                       "requirements.txt": "torch==2.13.0\n", "pyproject.toml": "[project]\n",
                       "sae_helpers/__init__.py": "", "sae_helpers/Z.py": "z = 1\n", "sae_helpers/_a.py": "",
                       "sae_helpers/sub/x.py": "x = 1\n", "sae_helpers/notes.txt": "not an input\n"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


def test_the_hash_is_the_shell_pipelines_and_follows_every_input(repo: Path) -> None:
    for name in ("a", "b"):  # with and without a parameter file
        assert inputs_hash(name, repo) == _shell_hash(repo, name)
    before = inputs_hash("a", repo)
    for change in (lambda: (repo / "sae_helpers/sub/x.py").write_text("x = 2\n"),
                   lambda: (repo / "sae_helpers/sub/x.py").rename(repo / "sae_helpers/sub/y.py"),
                   lambda: (repo / "book/params/a.yaml").write_text("steps: 6\n"),
                   lambda: (repo / "requirements.txt").write_text("torch==2.13.0\nnumpy\n")):
        change()
        after = inputs_hash("a", repo)
        assert after != before and after == _shell_hash(repo, "a")
        before = after
    (repo / "sae_helpers/notes.txt").write_text("edited\n")
    assert inputs_hash("a", repo) == before  # only .py files of the package count
    with pytest.raises(ValueError, match="notebooks/c.ipynb: no such notebook"):
        inputs_hash("c", repo)


def test_the_book_chapter_is_current_only_while_its_recorded_hash_is(repo: Path) -> None:
    executed = repo / "book" / "chapters" / "a.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")
    assert current_chapter("a", repo) is None  # no record: not known to have finished
    (repo / "book/chapters/a.inputs.sha256").write_text(inputs_hash("a", repo) + "\n")
    assert current_chapter("a", repo) == executed
    (repo / "sae_helpers/Z.py").write_text("z = 2\n")
    assert current_chapter("a", repo) is None
