"""Small file helpers shared by the package: atomic writes and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks (memory bounded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` then rename over ``path``.

    A crash part-way leaves either the old file or the new one, never half a file. The file gets
    the mode of the one it replaces, or a new file's (not the private 0600 of a temporary file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.is_file() else _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, mode)
        write(tmp_path)
        os.chmod(tmp_path, mode)  # again: a writer may have replaced the file (safetensors creates it 0600)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


class DirectoryBusy(RuntimeError):
    """Another process holds the lock on a directory (:func:`directory_lock`)."""


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, what: str, fix: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (its ``.lock`` file, holding this process's pid) while
    the block runs. Another holder makes it fail at once with :class:`DirectoryBusy`, naming the
    holder's pid, ``what`` it does there and the ``fix``. The system releases the lock when the
    process ends, however it ends."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise DirectoryBusy(f"{directory}: another process (pid {holder}) is {what} there. {fix}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()


def save_tensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` with a new file's usual mode (the umask's, not safetensors' private 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, _new_file_mode())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _old_copy(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_dir(final: str | os.PathLike) -> Path:
    """Undo a crash between the two renames of :func:`atomic_replace_dir`.

    ``final`` missing but ``.final.old`` present means the swap stopped after moving the
    complete old copy aside: move it back. Returns ``final``.
    """
    final = Path(final)
    old = _old_copy(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)
    return final


def clean_stale(final: str | os.PathLike) -> None:
    """Recover ``final`` (:func:`recover_dir`), then delete what crashed swaps left beside it:
    ``.final.old`` (once ``final`` is in place) and ``.final.*.tmp`` build directories.

    Call it when a run starts, never while another process writes ``final``.
    """
    final = recover_dir(final)
    if not final.parent.is_dir():
        return
    old = _old_copy(final)
    if final.exists() and old.exists():
        shutil.rmtree(old)
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp)


def atomic_replace_dir(final: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temporary sibling, then swap it into place.

    ``build(tmp_dir)`` fills the directory. An existing ``final`` is replaced only
    after the new one is complete, so a crash never leaves a half-written directory:
    between the two renames the complete old copy is ``.final.old``, which
    :func:`recover_dir` moves back; it is deleted only once the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        # mkdtemp makes the directory private (0700): give it the mode of the one it replaces.
        os.chmod(tmp_dir, (final if final.is_dir() else final.parent).stat().st_mode & 0o777)
        build(tmp_dir)
        old = _old_copy(final)
        if final.exists():
            if old.exists():
                shutil.rmtree(old)  # stale: final is the complete copy
            os.replace(final, old)
            os.replace(tmp_dir, final)
        else:
            os.replace(tmp_dir, final)
        if old.exists():
            shutil.rmtree(old)  # only now that the new copy is in place
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return final


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """Read a JSON object with an error that names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path.")
    return parse_json(path.read_bytes(), path, what)


def parse_json(data: bytes, path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """Parse ``data`` (the content of ``path``) as a JSON object, with an error that names the file and the fix."""
    try:
        data = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{what} {path} is not valid JSON ({err}). Re-create it, or restore it from a backup."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, found {type(data).__name__}.")
    return data
