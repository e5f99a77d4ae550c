import re
from pathlib import Path

import nbformat

from book.tools.chapters import chapter_names, title_and_summary
from book.tools.front_page import NO_HEADLINE, NOT_EXECUTED, headlines, substitution_name
from sae_book.record import GLUE_PREFIX, HEADLINE
from tests.book.notebooks import titled_notebook

ROOT = Path(__file__).resolve().parents[2]

def _notebook(path: Path, headline: str | None) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("sae_book.record.headline(...)")
    if headline is not None:  # the output record.headline writes
        cell.outputs = [nbformat.v4.new_output(
            "display_data", data={GLUE_PREFIX + "text/plain": headline, GLUE_PREFIX + "text/markdown": headline},
            metadata={"scrapbook": {"name": HEADLINE, "mime_prefix": GLUE_PREFIX}})]
    nb.cells = [cell]
    nbformat.write(nb, path)


def test_the_chapters_are_the_notebooks_in_name_order(tmp_path: Path) -> None:
    for name in ("01_b", "00_a", "02_c"):
        titled_notebook(tmp_path / "notebooks" / f"{name}.ipynb", f"Title {name}")
    (tmp_path / "notebooks" / ".hidden.ipynb").write_text("{}")
    assert chapter_names(tmp_path) == ["00_a", "01_b", "02_c"]
    assert title_and_summary(tmp_path / "notebooks" / "01_b.ipynb") == ("Title 01_b", "What it does.")


def test_headlines_recorded_missing_and_not_executed(tmp_path: Path) -> None:
    for name in ("00_a", "01_b", "02_c"):
        titled_notebook(tmp_path / "notebooks" / f"{name}.ipynb", f"Title {name} | pipe", f"Does {name}.")
    chapters = tmp_path / "book" / "chapters"
    chapters.mkdir(parents=True)
    _notebook(chapters / "00_a.ipynb", "Gated SAEs shrink\nless: $\\gamma = 0.98$.")
    _notebook(chapters / "01_b.ipynb", None)
    found = headlines(tmp_path)
    table = found.pop("chapters_table").splitlines()
    assert found == {
        "headline_00_a": "Gated SAEs shrink less: $\\gamma = 0.98$.",
        "headline_01_b": NO_HEADLINE,
        "headline_02_c": NOT_EXECUTED,
    }
    assert table[2] == ("| {doc}`Title 00_a \\| pipe <chapters/00_a>` | Does 00_a. | Gated SAEs shrink less: "
                        "$\\gamma = 0.98$. |")
    assert len(table) == 2 + 3 and NOT_EXECUTED in table[4]


def test_intro_shows_the_computed_table_and_the_toc_globs_the_chapters() -> None:
    """The front page's table is computed (an unknown substitution would fail the -W build), and the table
    of contents lists the chapters by a glob, so a new notebook needs neither file edited."""
    intro = (ROOT / "book" / "intro.md").read_text()
    assert "{{ chapters_table }}" in intro and "forthcoming" not in intro
    assert not set(re.findall(r"\{\{\s*(headline_\w+)\s*\}\}", intro)) - {
        substitution_name(name) for name in chapter_names(ROOT)}
    assert "- glob: book/chapters/*" in (ROOT / "_toc.yml").read_text()
