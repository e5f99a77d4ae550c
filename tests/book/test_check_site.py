"""make check-site on small hand-made sites: one page per defect, and one clean page.

Needs Chromium (/usr/bin/chromium; .ci/run installs it). Skipped without it, except under CI.
"""

import os
from pathlib import Path

import pytest

from book.tools.check_site import CHROMIUM, PageReport, check_site, format_report, main, toc_pages

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file() and not os.environ.get("CI"),
                                reason=f"{CHROMIUM} missing (Debian: apt-get install -y chromium)")

HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-size: 16px; margin: 0; }} main {{ width: 700px; }}</style></head>
<body><main><article>{body}</article></main></body></html>"""

# An SVG as matplotlib writes it with svg.fonttype "none": 10px text in a 400x300 user space.
SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="300pt" height="225pt" viewBox="0 0 400 300">
<rect width="400" height="300" fill="#eee"/>
<text x="20" y="40" style="font: {size}px 'DejaVu Sans'">axis label</text></svg>"""

PAGES = {
    # The clean page: rendered math (as MathJax leaves it), an inline SVG and an <img> of an SVG
    # with readable text, a PNG, links to a page and an anchor, code mentioning .venv relatively.
    "clean.html": """<h1 id="top">Clean</h1>
<p>Math: <span class="math"><mjx-container class="MathJax">x</mjx-container></span></p>
<div class="cell_output"><svg width="400" height="300" viewBox="0 0 400 300"><text x="10" y="30"
  style="font-size: 16px">inline label</text></svg></div>
<div class="cell_output"><img src="big_text.svg" style="width: 400px"></div>
<div class="cell_output"><img src="pixel.png"></div>
<div class="cell_output"><img src="matplotlib.svg" style="width: 648px"></div>
<pre>.venv/bin/papermill notebooks/a.ipynb ../data/runs/a.ipynb</pre>
<pre style="overflow-x: auto">{long_line}</pre>
<p><a href="raw_tex.html">next</a> <a href="#top">top</a> <a href="clean.html#top">again</a>
<a href="https://example.org/x">elsewhere</a></p>""",
    "raw_tex.html": r"""<p>A vector <span class="math">\(x \in \mathbb{R}^n\)</span> and</p>
<div class="math">$$ \hat{x} = W f $$</div>""",
    "stderr.html": """<div class="cell_output"><div class="output stderr"><pre>train: 100%|##########| 10/10</pre></div>
<img src="pixel.png"></div>""",
    "broken_link.html": """<p><a href="missing.html">gone</a> <a href="clean.html#nowhere">no anchor</a>
<a href="clean.html">fine</a></p>""",
    "tiny_text.html": """<div class="cell_output"><img src="small_text.svg" style="width: 200px"></div>""",
    "machine_path.html": """<div class="cell_output"><pre>/opt/x/.venv/lib/python3.11/site-packages/tqdm/auto.py:21:
TqdmWarning: IProgress not found</pre><img src="pixel.png"></div>""",
    "matplotlib_small.html": """<div class="cell_output"><img src="matplotlib.svg" style="width: 288px"></div>""",
    "missing_image.html": """<div class="cell_output"><img src="nothere.png"></div>""",
    "wide_table.html": """<table style="width: 1400px"><tr><td>a</td><td>b</td></tr></table>""",
}
CHAPTERS = {"clean.html", "matplotlib_small.html", "stderr.html", "tiny_text.html", "machine_path.html",
            "missing_image.html"}

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfabd40000000049454e44ae426082")


def _matplotlib_svg(path: Path) -> None:
    """A figure as the book's plotting writes it: 6 x 4 in (a 432 x 288 viewBox), 10px tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.fonttype": "none", "font.size": 10}):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("tokens")
        fig.savefig(path)
        plt.close(fig)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageReport]:
    site = tmp_path_factory.mktemp("site")
    for name, body in PAGES.items():
        (site / name).write_text(HEAD.format(title=name, body=body.replace("{long_line}", "x = 1; " * 200)))
    (site / "index.html").write_text(HEAD.format(title="index", body='<a href="clean.html">clean</a>'))
    (site / "big_text.svg").write_text(SVG.format(size=16))    # shown at 400px: 16px text
    (site / "small_text.svg").write_text(SVG.format(size=10))  # shown at 200px: 5px text
    (site / "pixel.png").write_bytes(PNG)
    _matplotlib_svg(site / "matplotlib.svg")
    found = check_site(site, list(PAGES), CHAPTERS, tmp_path_factory.mktemp("out"))
    return {report.page: report for report in found}


def _problems(report: PageReport) -> str:
    return "\n".join(report.problems)


def test_clean_page_passes(reports: dict[str, PageReport]) -> None:
    clean = reports["clean.html"]
    assert clean.ok, _problems(clean)
    assert any("raster figure" in note and "1px wide" in note for note in clean.notes)  # reported, not measured
    assert any("1 table(s)/code block(s) scroll sideways" in note for note in clean.notes)


@pytest.mark.parametrize(("page", "expected"), [
    ("raw_tex.html", ["raw TeX", "none rendered by MathJax"]),
    ("stderr.html", ["stderr output box"]),
    ("broken_link.html", ["2 broken internal link", "missing.html", "#nowhere"]),
    ("tiny_text.html", ["figure text too small: 5.0px in small_text.svg"]),
    ("machine_path.html", ["absolute machine path", "/opt/x/.venv/lib", "a warning in the page"]),
    ("missing_image.html", ["image(s) not loaded", "nothere.png"]),
    # 10px text in a 432-unit viewBox shown 288px wide: 10 * 288 / 432 = 6.7px (at 648px: 15px, fine).
    ("matplotlib_small.html", ["figure text too small: 6.7px in matplotlib.svg"]),
    ("wide_table.html", ["cut off", "<table>"]),
])
def test_each_planted_defect_is_reported(reports: dict[str, PageReport], page: str, expected: list[str]) -> None:
    report = reports[page]
    assert not report.ok
    for text in expected:
        assert text in _problems(report), _problems(report)


def test_screenshots_and_report(reports: dict[str, PageReport], tmp_path: Path) -> None:
    text = format_report(list(reports.values()), tmp_path)
    assert "ok   clean.html" in text and "FAIL raw_tex.html" in text
    assert f"{len(PAGES)} page(s) checked, {len(PAGES) - 1} with problems" in text


def test_main_exit_status(tmp_path: Path) -> None:
    site = tmp_path / "html"
    (site / "book").mkdir(parents=True)
    (site / "index.html").write_text(HEAD.format(title="i", body='<a href="book/intro.html">x</a>'))
    (site / "book" / "intro.html").write_text(HEAD.format(title="intro", body='<a href="gone.html">gone</a>'))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    args = ["--site", str(site), "--toc", str(tmp_path / "_toc.yml"), "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert (tmp_path / "out" / "book__intro.png").is_file()
    (site / "book" / "intro.html").write_text(HEAD.format(title="intro", body="<p>fine</p>"))
    assert main(args) == 0
    assert main(["--site", str(tmp_path / "nothing"), "--toc", str(tmp_path / "_toc.yml")]) == 2


def test_toc_pages() -> None:
    pages, chapters = toc_pages(Path(__file__).resolve().parents[2] / "_toc.yml")
    assert pages[0] == "book/intro.html"
    assert "book/chapters/01_training.html" in chapters and "book/methods.html" not in chapters
