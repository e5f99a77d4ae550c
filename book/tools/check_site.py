"""Check the built site as a reader sees it: every page of the toc in headless Chromium, offline.

    python -m book.tools.check_site [--site _build/html] [--toc _toc.yml] [--out _build/site-check]

The site is served from a localhost HTTP server started here; every request to another host
is blocked (and reported), so the check also proves the site works offline. For each page:

* it loads (HTTP 200, no uncaught JavaScript error, no local file missing);
* nothing wider than the text column is cut off (tables, code, figures must scroll);
* chapter pages (``book/chapters/*`` in the toc) show figures, and every image loaded
  (natural size > 0);
* formulas render: no raw ``\\(`` / ``\\[`` / ``$$`` / ``\\begin{`` left in visible text outside
  code, and MathJax output is present wherever the page has math;
* no stderr output boxes, tracebacks or ``...Warning:`` lines;
* no absolute machine paths (``/work/``, ``/root/``, ``/home/``, ``/Users/``, ``.../.venv/``);
* every internal link resolves (file and, if given, anchor);
* figure text is not smaller than :data:`MIN_TEXT_RATIO` times the body's font size: SVG text
  (inline, or an ``<img>`` of an SVG, scaled by displayed/intrinsic size) is measured;
  raster figures cannot be measured and are listed as notes.

A full-page screenshot of each page is written to ``--out``. The exit status is 1 when
anything failed, with a report that names each page and what is wrong.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import yaml

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "MIN_TEXT_RATIO", "PageReport", "check_site", "main", "toc_pages"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
#: Figure text below this fraction of the body's font size fails.
MIN_TEXT_RATIO = 0.8
#: How long a page may take to load and typeset (ms).
TIMEOUT_MS = 60_000
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])(?:/(?:work|root|home|Users)/\S*|/\S*/\.venv\b\S*|[A-Z]:\\Users\\\S*)")
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{")
WARNING = re.compile(r"\b[A-Z]\w*Warning: ")
TRACEBACK = "Traceback (most recent call last)"

# Runs in the page: everything the checks need, as plain data.
_PAGE_JS = r"""
async (minRatio) => {
  const SKIP = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'NOSCRIPT',
                        'MJX-CONTAINER', 'MJX-ASSISTIVE-MML']);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })));
  const main = document.querySelector('main') || document.body;
  // Visible text outside code, where raw TeX would show.
  const visible = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    let el = node.parentElement, skip = false;
    for (let e = el; e; e = e.parentElement) { if (SKIP.has(e.tagName.toUpperCase())) { skip = true; break; } }
    if (skip || !node.textContent.trim()) continue;
    if (el.checkVisibility && !el.checkVisibility({visibilityProperty: true, opacityProperty: true})) continue;
    visible.push(node.textContent);
  }
  const bodyPx = parseFloat(getComputedStyle(document.body).fontSize);
  // Rendered size of SVG text: font-size in user units times the text's screen scale.
  const measure = (svg) => {
    let min = Infinity, n = 0;
    for (const t of svg.querySelectorAll('text')) {
      const ctm = t.getScreenCTM();
      if (!ctm) continue;
      const size = parseFloat(getComputedStyle(t).fontSize) * Math.sqrt(Math.abs(ctm.a * ctm.d - ctm.b * ctm.c));
      if (!(size > 0) || !t.textContent.trim()) continue;
      n += 1; min = Math.min(min, size);
    }
    return {n, min: n ? min : null};
  };
  const figures = [];
  const isSvg = (src) => /\.svg(\?|#|$)/i.test(src) || src.startsWith('data:image/svg');
  for (const img of imgs) {
    const rect = img.getBoundingClientRect();
    const fig = {src: img.currentSrc || img.src, kind: isSvg(img.src) ? 'svg-img' : 'raster',
                 loaded: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
                 width: rect.width, naturalWidth: img.naturalWidth,
                 inOutput: !!img.closest('.cell_output, .output, figure')};
    if (fig.kind === 'svg-img' && fig.loaded) {
      try {
        const text = await (await fetch(img.src)).text();
        const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
        const svg = document.importNode(doc.documentElement, true);
        const box = document.createElement('div');
        box.style.cssText = `position:absolute;left:-100000px;top:0;width:${rect.width}px;`;
        svg.setAttribute('width', `${rect.width}px`);
        svg.setAttribute('height', `${rect.height}px`);
        if (!svg.getAttribute('viewBox')) {
          svg.setAttribute('viewBox', `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
        }
        svg.setAttribute('preserveAspectRatio', 'none');
        box.appendChild(svg); document.body.appendChild(box);
        Object.assign(fig, measure(svg));
        box.remove();
      } catch (e) { fig.error = String(e); }
    }
    figures.push(fig);
  }
  for (const svg of main.querySelectorAll('svg')) {
    if (svg.closest('mjx-container') || svg.parentElement.closest('svg')) continue;
    if (!svg.closest('.cell_output, .output, figure')) continue;  // icons
    const rect = svg.getBoundingClientRect();
    figures.push(Object.assign({src: 'inline <svg>', kind: 'svg-inline', loaded: rect.width > 0,
                                width: rect.width, inOutput: true}, measure(svg)));
  }
  // Content wider than the article that cannot be scrolled to: cut off for the reader.
  const article = (document.querySelector('article, .bd-article, [role="main"]') || main).getBoundingClientRect();
  const cutOff = [], scrolled = [];
  for (const el of main.querySelectorAll('table, pre, img, svg')) {
    if (el.closest('mjx-container')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    if (el.scrollWidth > el.clientWidth + 1 && ['auto', 'scroll'].includes(getComputedStyle(el).overflowX)) {
      scrolled.push([el.scrollWidth, el.clientWidth]);  // readable by scrolling sideways
    }
    if (r.right <= article.right + 1) continue;
    let scrolls = false;
    for (let e = el; e && e !== document.body; e = e.parentElement) {
      const ox = getComputedStyle(e).overflowX;
      if ((ox === 'auto' || ox === 'scroll') && e.getBoundingClientRect().right <= article.right + 1) {
        scrolls = true;
        scrolled.push([r.width, e.clientWidth]);
        break;
      }
    }
    if (!scrolls) cutOff.push(`<${el.tagName.toLowerCase()}> ${Math.round(r.width)}px wide`);
  }
  const anchors = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  const ids = Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name'));
  return {
    visible: visible.join('\n'),
    text: document.body.textContent,
    bodyPx,
    mathSource: document.querySelectorAll('.math, span.math, div.math').length,
    mathRendered: document.querySelectorAll('mjx-container').length,
    stderr: document.querySelectorAll(
      '.output.stderr, .stderr, [data-mime-type="application/vnd.jupyter.stderr"]').length,
    errors: document.querySelectorAll('.output.traceback, .output.error, .traceback').length,
    figures, anchors, ids, cutOff, scrolled,
  };
}
"""


@dataclass
class PageReport:
    """What is wrong with one page (``problems``) and what could not be checked (``notes``)."""

    page: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def toc_pages(toc: Path) -> tuple[list[str], set[str]]:
    """The html pages of a jb-book ``_toc.yml`` (root first) and which of them are chapters. A
    ``glob`` entry over ``book/chapters/`` is the book's chapters (:mod:`book.tools.chapters`)."""
    from fnmatch import fnmatch

    from book.tools.chapters import CHAPTERS_DIR, chapter_names

    try:
        data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{toc}: cannot read the table of contents ({error})") from error
    if not isinstance(data, dict) or "root" not in data:
        raise ValueError(f"{toc}: no 'root' entry; is this a jb-book _toc.yml?")
    files = [str(data["root"])]

    def walk(entries: object) -> None:
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                if "file" in entry:
                    files.append(str(entry["file"]))
                if "glob" in entry:
                    files.extend(f"{CHAPTERS_DIR}/{name}" for name in chapter_names(toc.parent)
                                 if fnmatch(f"{CHAPTERS_DIR}/{name}", str(entry["glob"])))
                walk(entry.get("chapters"))
                walk(entry.get("sections"))

    walk(data.get("chapters"))
    for part in data.get("parts") or []:
        walk(part.get("chapters") if isinstance(part, dict) else None)
    pages = [str(Path(f).with_suffix("")) + ".html" for f in files]
    chapters = {page for page in pages if page.startswith("book/chapters/")}
    return pages, chapters


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def _serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on a free localhost port; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _anchors_in(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        html = path.read_text(encoding="utf-8", errors="replace")
        cache[path] = set(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", html))
    return cache[path]


def _check_links(report: PageReport, page: str, anchors: Sequence[str], ids: set[str], site: Path,
                 base: str, cache: dict[Path, set[str]]) -> None:
    broken: list[str] = []
    for href in dict.fromkeys(anchors):
        if not href.startswith(base):
            continue  # other hosts: not internal
        url, fragment = urldefrag(href)
        rel = unquote(urlsplit(url).path)[len(urlsplit(base).path):]
        target = site / rel
        if rel == "" or rel.endswith("/") or target.is_dir():
            target = target / "index.html"
        shown = href[len(base):]
        if not target.is_file():
            broken.append(f"{shown} (no file {rel or '/'})")
        elif fragment and target.suffix == ".html":
            names = ids if target.resolve() == (site / page).resolve() else _anchors_in(target, cache)
            if unquote(fragment) not in names:
                broken.append(f"{shown} (no anchor #{fragment} in {target.relative_to(site)})")
    if broken:
        report.problems.append(f"{len(broken)} broken internal link(s): " + "; ".join(broken[:10])
                               + (" ..." if len(broken) > 10 else ""))


def _excerpt(text: str, match: re.Match[str]) -> str:
    start, end = max(0, match.start() - 40), min(len(text), match.end() + 40)
    return " ".join(text[start:end].split())


def _check_page(report: PageReport, data: dict, chapter: bool, min_ratio: float) -> None:
    if chapter and not any(f["inOutput"] for f in data["figures"]):
        report.problems.append("no figures on a chapter page")
    missing = [f["src"] for f in data["figures"] if not f["loaded"]]
    if missing:
        report.problems.append(f"{len(missing)} image(s) not loaded: " + ", ".join(missing[:5]))
    if data["cutOff"]:
        report.problems.append(f"{len(data['cutOff'])} element(s) wider than the text column and not "
                               "scrollable (cut off): " + ", ".join(data["cutOff"][:5]))
    if data["scrolled"]:
        content, box = max(data["scrolled"], key=lambda pair: pair[0] / max(pair[1], 1))
        report.notes.append(f"{len(data['scrolled'])} table(s)/code block(s) scroll sideways (the widest: "
                            f"{content:.0f}px of content in a {box:.0f}px box)")
    raw = RAW_TEX.search(data["visible"])
    if raw:
        report.problems.append(f"raw TeX in visible text: ...{_excerpt(data['visible'], raw)}...")
    if data["mathSource"] and not data["mathRendered"]:
        report.problems.append(f"{data['mathSource']} formula(s) on the page, none rendered by MathJax")
    if data["stderr"]:
        report.problems.append(f"{data['stderr']} stderr output box(es)")
    if data["errors"] or TRACEBACK in data["text"]:
        report.problems.append("a traceback / error output")
    warning = WARNING.search(data["text"])
    if warning:
        report.problems.append(f"a warning in the page: ...{_excerpt(data['text'], warning)}...")
    paths = sorted({m.group(0)[:80] for m in MACHINE_PATH.finditer(data["text"])})
    if paths:
        report.problems.append(f"absolute machine path(s): {', '.join(paths[:5])}")
    limit = min_ratio * data["bodyPx"]
    for fig in data["figures"]:
        if not fig["loaded"] or not fig["inOutput"]:
            continue
        if fig["kind"] == "raster":
            report.notes.append(f"raster figure, text size not measurable: {fig['src'].rsplit('/', 1)[-1]} "
                                f"({fig['naturalWidth']}px wide, shown at {fig['width']:.0f}px)")
        elif fig.get("min") is not None and fig["min"] < limit:
            report.problems.append(
                f"figure text too small: {fig['min']:.1f}px in {fig['src'].rsplit('/', 1)[-1]} "
                f"(minimum {min_ratio} x body {data['bodyPx']:.1f}px = {limit:.1f}px)")


def check_site(site: Path, pages: Sequence[str], chapters: set[str], out: Path,
               chromium: str = CHROMIUM, min_ratio: float = MIN_TEXT_RATIO) -> list[PageReport]:
    """Check ``pages`` (paths relative to ``site``) in headless Chromium; one report per page."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(chromium).is_file():
        raise FileNotFoundError(f"{chromium} not found: install Chromium (Debian: apt-get install -y chromium)")
    if not (site / "index.html").is_file() and not pages:
        raise FileNotFoundError(f"{site}: no built site (run make book first)")
    out.mkdir(parents=True, exist_ok=True)
    reports: list[PageReport] = []
    cache: dict[Path, set[str]] = {}
    profile = Path(tempfile.mkdtemp(prefix="check-site-profile-"))
    try:
        with _serve(site) as base, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=chromium, headless=True, args=list(CHROMIUM_FLAGS),
                viewport={"width": 1280, "height": 900})
            try:
                for page_path in pages:
                    report = PageReport(page_path)
                    reports.append(report)
                    page = context.new_page()
                    external: list[str] = []
                    failed: list[str] = []
                    js_errors: list[str] = []

                    def route(r, external=external) -> None:
                        if r.request.url.startswith(base) or r.request.url.startswith("data:"):
                            r.continue_()
                        else:
                            external.append(r.request.url)
                            r.abort()

                    page.route("**/*", route)
                    page.on("response", lambda resp, failed=failed: failed.append(
                        f"{resp.url[len(base):]} (HTTP {resp.status})") if resp.status >= 400 else None)
                    page.on("pageerror", lambda exc, js_errors=js_errors: js_errors.append(str(exc)))
                    try:
                        response = page.goto(base + page_path, wait_until="load", timeout=TIMEOUT_MS)
                        if response is None or response.status != 200:
                            status = response.status if response else "no response"
                            report.problems.append(f"page does not load ({status})")
                            continue
                        data = page.evaluate(_PAGE_JS, min_ratio)
                        _check_page(report, data, page_path in chapters, min_ratio)
                        _check_links(report, page_path, data["anchors"], set(data["ids"]), site, base, cache)
                        shot = out / (page_path.replace("/", "__").removesuffix(".html") + ".png")
                        page.screenshot(path=str(shot), full_page=True)
                    except PlaywrightError as error:
                        report.problems.append(f"browser error: {str(error).splitlines()[0]}")
                    finally:
                        page.close()
                    if failed:
                        report.problems.append(f"{len(failed)} missing file(s): " + ", ".join(failed[:5]))
                    if external:
                        report.problems.append(f"{len(external)} request(s) to other hosts (the site must work "
                                               "offline): " + ", ".join(sorted(set(external))[:5]))
                    if js_errors:
                        report.problems.append("JavaScript error: " + js_errors[0][:200])
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return reports


def format_report(reports: Sequence[PageReport], out: Path) -> str:
    """The readable report: one block per page, then a summary line."""
    lines = []
    for report in reports:
        lines.append(f"{'ok  ' if report.ok else 'FAIL'} {report.page}")
        lines += [f"       - {problem}" for problem in report.problems]
        lines += [f"       note: {note}" for note in report.notes]
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports)} page(s) checked, {bad} with problems; screenshots in {out}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: check the built site, print the report, exit 1 if anything failed."""
    parser = argparse.ArgumentParser(prog="python -m book.tools.check_site", description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, default=Path("_build/html"), help="the built site")
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"), help="the pages to check")
    parser.add_argument("--out", type=Path, default=Path("_build/site-check"), help="screenshots")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    try:
        pages, chapters = toc_pages(args.toc)
        if not (args.site / "index.html").is_file():
            raise FileNotFoundError(f"{args.site}/index.html missing: build the site first (make book)")
        reports = check_site(args.site, pages, chapters, args.out, chromium=args.chromium)
    except (ValueError, FileNotFoundError) as error:
        print(f"check_site: {error}", file=sys.stderr)
        return 2
    print(format_report(reports, args.out))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
