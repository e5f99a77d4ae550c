"""The project speaks about what it is now: no text in README.md, book/, bench/ or sae_helpers/
labels a stretch of its development or an issue number."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where users read: the README, the book's pages and tools, the benchmarks, the package.
PLACES = ("README.md", "book", "bench", "sae_helpers")
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".ipynb", ".cfg", ".sh", ".toml"}
SKIPPED = {"node_modules", "_static", "chapters", ".saelens-venv", "__pycache__"}
HISTORY = re.compile(r"\b(?:issues? ?#?\d+|sessions? \d+|work(?:ing)? periods?|sprints? ?\d*|"
                     r"(?:PR|pull request) ?#\d+)\b", re.IGNORECASE)


def project_texts() -> list[Path]:
    found = []
    for place in PLACES:
        path = ROOT / place
        candidates = [path] if path.is_file() else path.rglob("*")
        found += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES
                  and not SKIPPED & set(p.relative_to(ROOT).parts)]
    return sorted(found)


def history_labels(text: str) -> list[str]:
    """Each line of ``text`` that labels a development period or an issue number."""
    return [line.strip()[:120] for line in text.splitlines() if HISTORY.search(line)]


def test_the_pattern_finds_history_and_passes_ordinary_text():
    assert history_labels("Fixed in issue 14.\nSession 10 measured it.\nSee PR #3.\nthe second work period") == [
        "Fixed in issue 14.", "Session 10 measured it.", "See PR #3.", "the second work period"]
    assert history_labels("an issue with the cache\n10 sessions of training? no: 10 seeds\nsection 3") == []


@pytest.mark.parametrize("path", project_texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_text_labels_development_history(path):
    assert history_labels(path.read_text(encoding="utf-8", errors="replace")) == []
