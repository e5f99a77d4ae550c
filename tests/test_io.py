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


def test_atomic_writes_get_a_normal_files_mode_not_the_temporary_files_private_one(tmp_path):
    """A new file gets what open() would give it under the umask (0644 under 022), not mkstemp's
    0600; a replaced file keeps its mode; so do directories swapped into place."""
    old_umask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        new = _io.atomic_write(tmp_path / "new.txt", lambda tmp: tmp.write_text("y"))
        assert new.read_text() == "y"
        assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
        os.chmod(new, 0o640)
        _io.atomic_write_json(new, {"a": 1})
        assert new.stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        private = _io.atomic_write(tmp_path / "private.txt", lambda tmp: tmp.write_text("z"))
        assert private.stat().st_mode & 0o777 == 0o600
        os.umask(0o022)
        built = _io.atomic_replace_dir(tmp_path / "d", write("a"))
        assert built.stat().st_mode & 0o777 == tmp_path.stat().st_mode & 0o777
    finally:
        os.umask(old_umask)
