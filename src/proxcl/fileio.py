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
    flush, fsync and rename it to ``path`` (mode 0666 less the umask, as open() would give).  A
    symbolic link is written through (its target is replaced, the link kept); anything there that
    is not a regular file (a folder, a device, a FIFO) is refused.  A failure says which file
    could not be written, not the temporary's name."""
    given = path
    path = Path(_through_link(path))
    _refuse_special(path, given, "output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise _cannot_write(given, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _cannot_write(given, e) from None
        raise


def _through_link(path):
    """The file a write to ``path`` replaces: a symbolic link's target, else path itself."""
    return os.path.realpath(path) if os.path.islink(path) else path


def _cannot_write(path, e: OSError) -> OSError:
    why = e.strerror or str(e)
    if isinstance(e, FileExistsError):      # from mkdir: something that is not a folder is in the way
        why = "a file or a broken link stands where a folder is needed"
    err = OSError(f"cannot write {path} ({why})")
    err.errno = e.errno
    return err


def _refuse_special(path, given, what: str) -> None:
    """InputError where ``path`` exists and is not a regular file (symbolic links followed)."""
    if os.path.isdir(path):
        raise InputError(f"{what} {given} is a folder, not a file name")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"{what} {given} is not a regular file (a device, FIFO or socket); "
                         "proxcl writes only files")


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def check_writable(path, what: str = "output") -> None:
    """Raise a one-line InputError now, before long work, when ``path`` (None: no output) cannot
    be written: an empty name, a folder or another file that is not a regular one, or a place
    where no file can be created.  Creates nothing: folders on the way are made when the file is
    written, so that a run that fails first leaves none behind."""
    if path is None:
        return
    if not str(path):
        raise InputError(f"{what} is empty: name a file")
    target = _through_link(path)     # where atomic_write will write
    _refuse_special(target, path, what)
    _probe(os.path.dirname(os.path.abspath(target)), what, path)


def check_writable_dir(path, what: str = "output folder") -> None:
    """Raise a one-line InputError now when files cannot be written in the folder ``path``: an
    empty name, a file of that name, or a place where it cannot be made or written.  Creates
    nothing (the folder is made when the first file is written)."""
    if not str(path):
        raise InputError(f"{what} is empty: name a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} {path} is a file, not a folder")
    _probe(os.path.abspath(path), what, path)


def _probe(folder, what: str, path) -> None:
    """Create and remove a file in ``folder`` or, where it does not exist yet, in the nearest
    folder above it that does (where it would be made), or say why that cannot be done."""
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    try:
        if os.path.islink(existing) and not os.path.exists(existing):
            raise NotADirectoryError(20, f"{existing} is a broken symbolic link, not a folder")
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing):
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
