"""Strict reproduction: re-execute executed chapters and compare every output with nbval.

    python -m book.tools.verify                       # every executed chapter in book/chapters/
    python -m book.tools.verify 00_known_features     # or notebooks/NAME.ipynb, book/chapters/NAME.ipynb,
                                                      # or any executed notebook's path
    python -m book.tools.verify --execute notebooks/00_known_features.ipynb
                                                      # execute with the quick defaults first (CI)

An executed notebook carries the parameters papermill injected (its ``injected-parameters``
cell, also in ``metadata.papermill.parameters``), so running its cells again runs the chapter
with the same parameters. nbval does that in strict mode (``--nbval``): a kernel in notebooks/
(the chapters' working directory) executes a copy of the executed notebook and each cell's
outputs must equal the stored ones after the sanitizer (``nbval_sanitize.cfg``: timings,
progress-bar rates, memory addresses, dates, SVG ids; this repository's absolute path is
added at run time). stderr and progress bars are removed from both sides
(:mod:`book.tools.nbval_progress`: whether a bar or a one-time warning appears depends on what
``data/`` already holds, and warnings name the Python environment's path; the book hides stderr).
PNG/JPEG images are not compared (nbval's default); SVG figures are, after their random ids and
date are replaced.
The differing cells are listed at the end.

Before anything runs, the executed notebook is compared with its source ``notebooks/NAME.ipynb``
cell by cell: every cell's type, source and tags must be the same (papermill's
``injected-parameters`` cell and the ``remove-cell`` tag the build adds to the parameters cells
aside). A cell that gained ``nbval-skip`` or ``nbval-ignore-output``, or whose code changed
together with its output, fails the verification instead of passing unchecked.

A chapter re-executed here finds its activation caches and trained SAEs in its ``data_root``
as ``make book`` does and reuses them: what is checked is every output computed from them.
To reproduce the training too, delete the chapter's ``data/runs/<group>`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SANITIZER", "Result", "chapter_paths", "injected_parameters", "main", "sanitizer_text", "source_mismatches",
           "verify"]

REPO = Path(__file__).resolve().parents[2]
SANITIZER = Path(__file__).with_name("nbval_sanitize.cfg")
#: A cell may run this long under nbval (the book's longest cells train for most of an hour).
CELL_TIMEOUT = 6 * 3600


@dataclass
class Result:
    """One notebook's verification: its cells and, per differing cell, nbval's report."""

    notebook: Path
    cells: int = 0
    differing: dict[str, str] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    """How the executed notebook differs from its source in notebooks/ (cells, code, tags)."""

    @property
    def ok(self) -> bool:
        return self.cells > 0 and not self.differing and not self.mismatches


def chapter_paths(names: list[str], root: Path = REPO) -> list[Path]:
    """The executed notebooks to verify: every ``book/chapters/*.ipynb`` (failed copies left out)
    when ``names`` is empty; a name, ``notebooks/NAME.ipynb`` or ``book/chapters/NAME.ipynb``
    means ``book/chapters/NAME.ipynb``; any other path (relative to ``root``) is taken as it is."""
    chapters = root / "book" / "chapters"
    if not names:
        found = sorted(p for p in chapters.glob("*.ipynb") if not p.name.endswith(".failed.ipynb"))
        if not found:
            raise ValueError(f"no executed chapters in {chapters}: run `make book` first, or execute and verify "
                             "with the quick defaults: make verify EXECUTE=1 NOTEBOOKS=notebooks/NAME.ipynb")
        return found
    paths = []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else root / name  # relative: to the repository
        if path.suffix != ".ipynb" or path.parent.resolve() == (root / "notebooks").resolve():
            path = chapters / f"{path.stem}.ipynb"
        if not path.is_file():
            raise ValueError(f"{name}: no executed notebook {path}: run `make book NOTEBOOKS=notebooks/"
                             f"{path.stem}.ipynb` first, or `make verify EXECUTE=1 NOTEBOOKS=notebooks/"
                             f"{path.stem}.ipynb` (quick defaults)")
        paths.append(path)
    return paths


def injected_parameters(notebook: dict) -> dict:
    """The parameters papermill injected (``{}``: the notebook ran with its defaults); an error
    if the notebook was not executed by papermill."""
    meta = notebook.get("metadata", {}).get("papermill")
    if meta is None:
        raise ValueError("not executed by papermill (no metadata.papermill): execute it with papermill first")
    return dict(meta.get("parameters") or {})


#: Tags the build adds to executed chapters (book/tools/clean_chapters.py), on the parameters cells only.
_BUILD_TAGS = {"remove-cell"}


def _cells(notebook: dict) -> list[tuple[str, str, tuple[str, ...]]]:
    """Each cell's type, source and tags, papermill's injected cell and the build's tags left out."""
    cells = []
    for cell in notebook["cells"]:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if "injected-parameters" in tags:
            continue
        if "parameters" in tags:
            tags = [t for t in tags if t not in _BUILD_TAGS]
        cells.append((cell["cell_type"], "".join(cell["source"]), tuple(sorted(tags))))
    return cells


def source_mismatches(executed: dict, source: dict) -> list[str]:
    """How ``executed`` differs from the notebook it was executed from: a line per differing cell
    (type, source or tags), or the cell counts; empty when they agree."""
    ran, wanted = _cells(executed), _cells(source)
    if len(ran) != len(wanted):
        return [f"{len(ran)} cells, the source has {len(wanted)}"]
    problems = []
    for i, ((kind, text, tags), (want_kind, want_text, want_tags)) in enumerate(zip(ran, wanted, strict=True)):
        first = (text.strip().splitlines() or [""])[0][:60]
        if kind != want_kind:
            problems.append(f"cell {i}: a {kind} cell, the source's is {want_kind}")
        elif text != want_text:
            problems.append(f"cell {i} ({first}): its source differs from the notebook's")
        elif tags != want_tags:
            problems.append(f"cell {i} ({first}): tags {list(tags)}, the source's {list(want_tags)}")
    return problems


def sanitizer_text(root: Path = REPO) -> str:
    """The sanitizer file's rules, then one replacing ``root``'s absolute path by ``<repo>``."""
    return SANITIZER.read_text(encoding="utf-8") + f"\nregex: {re.escape(str(root.resolve()))}\nreplace: <repo>\n"


def verify(executed: Path, *, root: Path = REPO, timeout: int = CELL_TIMEOUT, quiet: bool = False) -> Result:
    """Re-execute ``executed`` under nbval (strict) in notebooks/ and collect the differing cells."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    params = injected_parameters(nb)
    result = Result(executed)
    source = root / "notebooks" / executed.name
    if not source.is_file():
        result.mismatches.append(f"no source notebook {source.relative_to(root)} to compare its cells with")
    else:
        result.mismatches += source_mismatches(nb, json.loads(source.read_text(encoding="utf-8")))
    for problem in result.mismatches:
        print(f"{executed.name}: differs from its source: {problem}", file=sys.stderr)
    print(f"{executed.name}: re-executing with {params or 'its default parameters'}", flush=True)
    notebooks = root / "notebooks"
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        fd, copy = tempfile.mkstemp(prefix=f".verify-{executed.stem}-", suffix=".ipynb", dir=notebooks)
        os.close(fd)
        try:
            Path(copy).write_text(json.dumps(nb), encoding="utf-8")
            sanitizer, report = Path(tmp) / "sanitize.cfg", Path(tmp) / "report.xml"
            sanitizer.write_text(sanitizer_text(root), encoding="utf-8")
            command = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
                       "--nbval-sanitize-with", str(sanitizer), "--nbval-cell-timeout", str(timeout),
                       "-p", "no:cacheprovider", "-p", "book.tools.nbval_progress", "-o", "addopts=",
                       "--rootdir", str(root), "--junitxml", str(report), "-q", "--color=no", copy]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            subprocess.run(command, cwd=root, env=env, check=False,
                           stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.DEVNULL if quiet else None)
            if not report.is_file():
                raise RuntimeError(f"{executed}: pytest wrote no report; run `{' '.join(command)}` to see why")
            for case in ET.parse(report).getroot().iter("testcase"):
                result.cells += 1
                problem = case.find("failure")
                if problem is None:
                    problem = case.find("error")
                if problem is not None:
                    cell = case.get("name", "?").split("::")[-1]
                    result.differing[cell] = (problem.get("message") or "") + "\n" + (problem.text or "")
        finally:
            Path(copy).unlink(missing_ok=True)
    return result


_WHAT = re.compile(r"mismatch '.*'|dissimilar number of outputs.*|Missing output fields.*|Unexpected output fields.*|"
                   r"Cell execution caused an exception|Timeout.*")


def describe(report: str) -> str:
    """One line for a differing cell: what differs (nbval's words) and the cell's first line."""
    lines = report.splitlines()
    what = next((m.group(0) for line in lines if (m := _WHAT.search(line))), lines[0] if lines else "")
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Input:"), None)
    code = next((line.strip() for line in lines[start:] if line.strip()), "") if start is not None else ""
    return f"{what.strip()[:100]}" + (f"  (cell: {code[:60]})" if code else "")


def _summary(results: list[Result]) -> str:
    lines = ["", "Strict reproduction (nbval --nbval, book/tools/nbval_sanitize.cfg); cells counted as nbval does "
             "(code cells from 0); in nbval's diffs above, + is the stored output, - the re-executed one:"]
    for r in results:
        verdict = "reproduced" if r.ok else f"{len(r.differing)} of {r.cells} cells differ"
        if r.mismatches:
            verdict += f"; not the notebook in notebooks/ ({len(r.mismatches)} cells differ in code or tags)"
        lines.append(f"  {r.notebook}: {r.cells} cells, {verdict}")
        lines += [f"    {cell}: {describe(report)}" for cell, report in r.differing.items()]
        lines += [f"    {problem}" for problem in r.mismatches]
    return "\n".join(lines)


def _execute_quick(source: Path, root: Path) -> Path:
    """Execute ``source`` with its quick defaults into data/runs/verify/ (papermill, in notebooks/)."""
    import papermill

    out = root / "data" / "runs" / "verify" / source.name
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"papermill {source} -> {out} (quick defaults)", flush=True)
    papermill.execute_notebook(str(source), str(out), kernel_name="python3", cwd=str(root / "notebooks"),
                               progress_bar=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.tools.verify", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="chapters to verify (default: every executed chapter)")
    parser.add_argument("--execute", action="store_true",
                        help="execute the given source notebooks with their quick defaults first, then verify that")
    args = parser.parse_args(argv)
    try:
        if args.execute:
            if not args.notebooks:
                raise ValueError("--execute needs source notebooks, e.g. notebooks/00_known_features.ipynb")
            paths = [_execute_quick(Path(n).resolve(), REPO) for n in args.notebooks]
        else:
            paths = chapter_paths(args.notebooks)
        results = [verify(path) for path in paths]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
