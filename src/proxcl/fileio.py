"""Atomic file writes: a temporary file in the destination's folder, then a rename, so a reader
sees the old file or the whole new one and an error leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call ``write(f)`` with a binary file object open on a temporary file beside ``path``, then
    flush, fsync and rename it to ``path`` (mode 0666 less the umask, as open() would give)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def check_writable(path, what: str = "output") -> None:
    """Raise a one-line InputError now, before long work, when ``path`` cannot be written: a
    folder, or a place where no file can be created (makes the folder and removes a probe file)."""
    if not path:
        return
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder, not a file name")
    _probe(os.path.dirname(os.path.abspath(path)), what, path)


def check_writable_dir(path, what: str = "output folder") -> None:
    """Raise a one-line InputError now when files cannot be written in the folder ``path``: a
    file of that name, or a place where it cannot be made or written (makes it if missing)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} {path} is a file, not a folder")
    _probe(path, what, path)


def _probe(folder, what: str, path) -> None:
    """Make ``folder`` if missing and create and remove a file in it, or say why not."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise InputError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None


def unreadable(path, e: OSError, what: str) -> str:
    """One line for a file that could not be read: missing, a directory, or the system's reason."""
    if isinstance(e, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(e, IsADirectoryError) or os.path.isdir(path):
        return f"{path}: is a directory, not a {what}"
    return f"{path}: cannot read ({e.strerror or e})"
