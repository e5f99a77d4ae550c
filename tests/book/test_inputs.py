"""book/tools/inputs.py: a chapter's inputs hash follows every input, and the record ties it to
the executed notebook."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from book.tools.inputs import current_chapter, input_lines, inputs_hash, installed_packages, record_path

PACKAGES = ["numpy==2.3.0", "torch==2.13.0"]


def _shell_lines(root: Path, name: str) -> list[str]:
    """The file lines as coreutils compute them: an independent reference."""
    script = r"""
echo "notebook $1 $(sha256sum < "notebooks/$1.ipynb" | cut -c1-64)"
if [ -f "book/params/$1.yaml" ]; then echo "params $(sha256sum < "book/params/$1.yaml" | cut -c1-64)";
else echo "params none"; fi
sha256sum requirements.txt pyproject.toml
for package in sae_helpers book/sae_book; do
  find "$package" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
done
"""
    out = subprocess.run(["bash", "-c", script, "sh", name], cwd=root, check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    for path, text in {"notebooks/a.ipynb": "{}", "notebooks/b.ipynb": "{ }", "book/params/a.yaml": "steps: 5\n",
                       "requirements.txt": "torch==2.13.0\n", "pyproject.toml": "[project]\n",
                       "sae_helpers/__init__.py": "", "sae_helpers/Z.py": "z = 1\n", "sae_helpers/_a.py": "",
                       "sae_helpers/sub/x.py": "x = 1\n", "book/sae_book/profiles/gpu/a.yaml": "steps: 9\n",
                       "book/sae_book/shrinkage.py": "",
                       "sae_helpers/__pycache__/Z.cpython-311.pyc": "bytecode"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


def test_the_hash_follows_every_input(repo: Path) -> None:
    for name in ("a", "b"):  # with and without a parameter file
        lines = input_lines(name, repo, PACKAGES)
        assert lines == [*_shell_lines(repo, name), *(f"installed {p}" for p in PACKAGES)]
        assert inputs_hash(name, repo, PACKAGES) == hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    before = inputs_hash("a", repo, PACKAGES)
    corpus = repo / "data" / "speeches"
    corpus.mkdir(parents=True)
    (corpus / "one.txt").write_text("first speech\n")
    for change, packages in (
            (lambda: (repo / "sae_helpers/sub/x.py").write_text("x = 2\n"), PACKAGES),
            (lambda: (repo / "sae_helpers/sub/x.py").rename(repo / "sae_helpers/sub/y.py"), PACKAGES),
            (lambda: (repo / "book/sae_book/profiles/gpu/a.yaml").write_text("steps: 10\n"), PACKAGES),
            (lambda: (repo / "book/sae_book/shrinkage.py").write_text("ratio = 1\n"), PACKAGES),
            (lambda: (repo / "book/params/a.yaml").write_text("steps: 6\n"), PACKAGES),
            (lambda: (repo / "requirements.txt").write_text("torch==2.13.0\nnumpy\n"), PACKAGES),
            (lambda: None, ["numpy==2.3.1", "torch==2.13.0"]),  # an unpinned package upgraded
            (lambda: (repo / "book/params/a.yaml").write_text("dataset: ../data/speeches\n"), PACKAGES),
            (lambda: (corpus / "one.txt").write_text("first speech, edited\n"), PACKAGES),
            (lambda: (corpus / "two.txt").write_text("second speech\n"), PACKAGES)):
        change()
        after = inputs_hash("a", repo, packages)
        assert after != before
        before = after
    (repo / "sae_helpers/__pycache__/Z.cpython-311.pyc").write_text("other bytecode")
    assert inputs_hash("a", repo, PACKAGES) == before  # compiled bytecode is not an input
    with pytest.raises(ValueError, match="notebooks/c.ipynb: no such notebook"):
        inputs_hash("c", repo)


def test_installed_packages_lists_this_environment() -> None:
    installed = installed_packages()
    names = [line.split("==")[0] for line in installed]
    assert names == sorted(set(names)) and any(line.startswith("torch==2.13.0") for line in installed)


def test_the_book_chapter_is_current_only_while_its_record_names_it_and_its_inputs(repo: Path) -> None:
    executed = repo / "book" / "chapters" / "a.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text('{"cells": []}')
    assert current_chapter("a", repo) is None  # no record: not known to have finished
    notebook_sha256 = hashlib.sha256(executed.read_bytes()).hexdigest()
    record = {"inputs": inputs_hash("a", repo), "notebook_sha256": notebook_sha256}
    record_path("a", repo).write_text(json.dumps(record))
    assert current_chapter("a", repo) == executed
    executed.write_text('{"cells": [], "autosaved": true}')  # an autosave or a half-written copy
    assert current_chapter("a", repo) is None
    executed.write_text('{"cells": []}')
    assert current_chapter("a", repo) == executed
    (repo / "sae_helpers/Z.py").write_text("z = 2\n")
    assert current_chapter("a", repo) is None
    record_path("a", repo).write_text("not json")
    assert current_chapter("a", repo) is None
