"""Atomic file and directory writes: a crash at any point leaves a complete copy."""

import os

import pytest

from sae_helpers import _io


def write(text):
    return lambda tmp: (tmp / "f.txt").write_text(text)


def test_a_crash_between_the_renames_keeps_the_old_copy(tmp_path, monkeypatch):
    final = tmp_path / "d"
    _io.atomic_replace_dir(final, write("old"))
    calls = []
    real = os.replace

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after moving the old copy aside
        real(src, dst)

    monkeypatch.setattr(_io.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_replace_dir(final, write("new"))
    monkeypatch.setattr(_io.os, "replace", real)
    assert not final.exists() and (tmp_path / ".d.old" / "f.txt").read_text() == "old"
    _io.recover_dir(final)
    assert (final / "f.txt").read_text() == "old"


def test_clean_stale_recovers_and_removes_leftovers(tmp_path):
    final = tmp_path / "d"
    _io.atomic_replace_dir(final, write("old"))
    final.rename(tmp_path / ".d.old")
    (tmp_path / ".d.abc.tmp").mkdir()
    _io.clean_stale(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (final / "f.txt").read_text() == "old"
    _io.atomic_replace_dir(final, write("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (final / "f.txt").read_text() == "new"
