"""book/tools/api_docstrings.py and the API page (book/api.md), built with Sphinx under -W."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from book.tools.api_docstrings import format_sections

ROOT = Path(__file__).resolve().parents[2]

DOC = """Train an SAE.

Parameters
----------
sae : an SAE (or loaded from a run directory):
    it needs ``training_config``.
steps, lr : the step cap and the learning rate.

Returns
-------
Tensor
    The latents, detached.

Prose after the sections stays as it is."""


def test_sections_become_rubrics_and_definition_lists():
    assert format_sections(DOC.splitlines()) == [
        "Train an SAE.", "",
        ".. rubric:: Parameters", "",
        "**sae**", "    an SAE (or loaded from a run directory):", "    it needs ``training_config``.",
        "**steps, lr**", "    the step cap and the learning rate.", "",
        ".. rubric:: Returns", "",
        "Tensor", "    The latents, detached.", "",
        "Prose after the sections stays as it is."]


def test_text_without_sections_is_unchanged():
    lines = ["One line.", "", "    indented: code", "Parameters are described in prose here."]
    assert format_sections(lines) == lines


def test_the_api_page_builds_without_a_warning(tmp_path):
    """The book's API page alone, with the book's extensions, under -W (every warning an error)."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "book" / "api.md", source / "index.md")
    (source / "methods.md").write_text("---\norphan: true\n---\n# Methods\n")  # the link target
    (source / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "extensions = ['myst_parser', 'sphinx.ext.autodoc', 'book.tools.api_docstrings']\n"
        "autodoc_member_order = 'bysource'\nautodoc_typehints = 'none'\n")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                           str(source), str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "html" / "index.html").read_text()
    assert 'id="sae_helpers.train_sae"' in html or "train_sae" in html
    assert "<strong>heldout</strong>" in html or "<strong>activations</strong>" in html
