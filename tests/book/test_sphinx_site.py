from pathlib import Path
from types import SimpleNamespace

import pytest
from sphinx.builders.html._assets import _JavaScript
from sphinx.errors import ConfigError

from book.tools import sphinx_site
from tests.book.notebooks import titled_notebook, write_notebook

ROOT = Path(__file__).resolve().parents[2]


def test_repeated_scripts_are_dropped_in_place() -> None:
    thebe = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("a.js"), _JavaScript(None, body=thebe), _JavaScript("a.js", async_="async"),
               _JavaScript("", body=thebe), _JavaScript("a.js")]
    context = {"script_files": scripts}
    sphinx_site._dedupe_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts  # later hooks (MathJax) append to this very list
    assert [(s.filename, s.attributes) for s in scripts] == [
        ("a.js", {}), (None, {"body": thebe}), ("a.js", {"async_": "async"})]


def _config(tmp_path: Path, **changes: object) -> SimpleNamespace:
    values = dict(html_baseurl="", html_theme_options={"repository_url": "https://github.com/o/r"},
                  myst_substitutions={"other": "x"}, mathjax_path="mathjax/tex-mml-chtml.js")
    values.update(changes)
    return SimpleNamespace(**values)


def _book(tmp_path: Path, mathjax: bool = True) -> SimpleNamespace:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - glob: book/chapters/*\n")
    titled_notebook(tmp_path / "notebooks" / "00_a.ipynb", "A", "Does a.")
    if mathjax:
        entry = tmp_path / "book" / "_static" / "mathjax" / "tex-mml-chtml.js"
        entry.parent.mkdir(parents=True)
        entry.write_text("")
    return SimpleNamespace(srcdir=str(tmp_path))


def test_configure_derives_the_address_and_the_headlines(tmp_path: Path) -> None:
    config = _config(tmp_path)
    sphinx_site._configure(_book(tmp_path), config)
    assert config.html_baseurl == "https://o.github.io/r/"
    table = config.myst_substitutions.pop("chapters_table")
    assert config.myst_substitutions == {"other": "x", "headline_00_a": "*(not yet executed)*"}
    assert table.splitlines()[2] == "| {doc}`A <chapters/00_a>` | Does a. | *(not yet executed)* |"


def test_configure_keeps_an_explicit_baseurl(tmp_path: Path) -> None:
    config = _config(tmp_path, html_baseurl="https://example.org/book/")
    sphinx_site._configure(_book(tmp_path), config)
    assert config.html_baseurl == "https://example.org/book/"


def test_configure_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="make mathjax"):
        sphinx_site._configure(_book(tmp_path, mathjax=False), _config(tmp_path))
    with pytest.raises(ConfigError, match="html.baseurl"):
        sphinx_site._configure(_book(tmp_path / "x"), _config(tmp_path, html_theme_options={}))


def test_the_book_config_points_at_the_installed_mathjax() -> None:
    import yaml

    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert sphinx["config"]["mathjax_path"] == "mathjax/tex-mml-chtml.js"
    assert sphinx["config"]["html_static_path"] == [str(sphinx_site.STATIC_DIR)]
    assert sphinx["local_extensions"] == {"sphinx_site": "book/tools/", "api_docstrings": "book/tools/"}


def test_configure_fills_the_seed_page_when_the_book_has_one(tmp_path: Path) -> None:
    app = _book(tmp_path)
    (tmp_path / sphinx_site.SEED_PAGE).write_text("{{ seed_spread }}\n")
    with pytest.raises(ConfigError, match="seed_spread.md: .*seeds.yaml: cannot read the grid file"):
        sphinx_site._configure(app, _config(tmp_path))
    (tmp_path / "book" / "grids").mkdir()
    (tmp_path / "book" / "grids" / "seeds.yaml").write_text("chapters: [00_a]\ngrid:\n  seed: [0, 1]\n")
    write_notebook(tmp_path / "notebooks" / "00_a.ipynb", "seed = 0\n", "pass\n", title="A")
    config = _config(tmp_path)
    sphinx_site._configure(app, config)
    assert config.myst_substitutions["seed_spread"].startswith("*(Not yet measured in this build")
