"""A local Sphinx extension for the published site (``sphinx.local_extensions`` in _config.yml).

At ``config-inited`` it

* derives ``html_baseurl`` from ``repository.url`` when html.baseurl is not set
  (:func:`book.tools.site_url.pages_url`), so the address is written in one place only;
* fills the front page's MyST substitutions ``headline_NAME`` (:mod:`book.tools.front_page`)
  and the seed-spread page's ``seed_spread`` (:mod:`book.tools.seed_page`);
* checks that MathJax was installed into book/_static/mathjax (``make mathjax``);

and at ``html-page-context`` drops repeated script tags: Jupyter Book 1.x makes sphinx-thebe
add its inline configuration twice, and the second ``const THEBE_JS_URL`` is a JavaScript
error on every page.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

# Jupyter Book puts book/tools/ itself on sys.path; the repository root makes book.tools importable.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from book.tools.front_page import headlines  # noqa: E402
from book.tools.seed_page import seed_spread  # noqa: E402
from book.tools.site_url import pages_url  # noqa: E402

#: The site's own static files (html_static_path in _config.yml); mathjax_path is relative to it.
STATIC_DIR = Path("book/_static")
#: The page that shows the seed grid's tables (``{{ seed_spread }}``).
SEED_PAGE = Path("book/seed_spread.md")


def _configure(app: Sphinx, config: Config) -> None:
    root = Path(app.srcdir)
    if not config.html_baseurl:
        url = (config.html_theme_options or {}).get("repository_url", "")
        try:
            config.html_baseurl = pages_url(url)
        except ValueError as error:
            raise ConfigError(str(error)) from error
    substitutions = dict(config.myst_substitutions or {})
    substitutions.update(headlines(root))
    if (root / SEED_PAGE).is_file():
        try:
            substitutions["seed_spread"] = seed_spread(root)
        except ValueError as error:
            raise ConfigError(f"{SEED_PAGE}: {error}") from error
    config.myst_substitutions = substitutions
    entry = root / STATIC_DIR / str(config.mathjax_path)
    if not str(config.mathjax_path).startswith(("http://", "https://")) and not entry.is_file():
        raise ConfigError(f"{entry} is missing: formulas would not render. Run `make mathjax` "
                          "(installs MathJax from book/mathjax/package-lock.json with npm).")


def _script_key(script: object) -> tuple[object, ...]:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""  # Sphinx 7.4: an object (inline: None or "")
    return (str(filename), tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen: set[tuple[object, ...]] = set()
        unique = []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique  # in place: Sphinx's mathjax hook appends to this very list later


def setup(app: Sphinx) -> dict[str, object]:
    """Register the hooks (the config one after myst-nb and the theme have added their values)."""
    app.connect("config-inited", _configure, priority=900)
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
