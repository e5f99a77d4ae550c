import re
from pathlib import Path

import nbformat

from book.tools.front_page import NO_HEADLINE, NOT_EXECUTED, chapter_names, headlines, substitution_name
from sae_book.record import GLUE_PREFIX, HEADLINE

ROOT = Path(__file__).resolve().parents[2]

TOC = """format: jb-book
root: book/intro
chapters:
  - file: book/methods
  - file: book/chapters/00_a
    sections:
      - file: book/chapters/01_b
  - file: book/chapters/02_c
"""


def _notebook(path: Path, headline: str | None) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("sae_book.record.headline(...)")
    if headline is not None:  # the output record.headline writes
        cell.outputs = [nbformat.v4.new_output(
            "display_data", data={GLUE_PREFIX + "text/plain": headline, GLUE_PREFIX + "text/markdown": headline},
            metadata={"scrapbook": {"name": HEADLINE, "mime_prefix": GLUE_PREFIX}})]
    nb.cells = [cell]
    nbformat.write(nb, path)


def test_chapter_names_in_toc_order(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text(TOC)
    assert chapter_names(tmp_path / "_toc.yml") == ["00_a", "01_b", "02_c"]


def test_headlines_recorded_missing_and_not_executed(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text(TOC)
    chapters = tmp_path / "book" / "chapters"
    chapters.mkdir(parents=True)
    _notebook(chapters / "00_a.ipynb", "Gated SAEs shrink\nless: $\\gamma = 0.98$.")
    _notebook(chapters / "01_b.ipynb", None)
    assert headlines(tmp_path) == {
        "headline_00_a": "Gated SAEs shrink less: $\\gamma = 0.98$.",
        "headline_01_b": NO_HEADLINE,
        "headline_02_c": NOT_EXECUTED,
    }


def test_intro_uses_exactly_the_toc_chapters() -> None:
    """Every chapter of the book's toc has its headline on the front page, and no other name is used
    (an unknown substitution would fail the -W build)."""
    used = set(re.findall(r"\{\{\s*(headline_\w+)\s*\}\}", (ROOT / "book" / "intro.md").read_text()))
    assert used == {substitution_name(name) for name in chapter_names(ROOT / "_toc.yml")}
    assert "forthcoming" not in (ROOT / "book" / "intro.md").read_text()
