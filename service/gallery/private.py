"""Owner-only files for biometric data: the data directory, the database, snapshots, backups.

The gallery holds embeddings, face chips and the names attached to them. Files are created
with owner-only permissions from the start (``os.open(..., 0o600)`` before any byte is
written, directories ``0o700``), not tightened after writing, so no other local user can read
them even for an instant. SQLite creates its ``-wal`` and ``-shm`` files with the database
file's permissions, so creating the database ``0o600`` covers them. A gallery made by an
older faceserve (mode ``0o644`` under the usual umask) is tightened when it is opened.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TextIO

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "create_private_file", "open_private",
           "private_dir", "tighten"]

log = logging.getLogger("faceserve.files")

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def tighten(path: Path) -> None:
    """Remove group and other permissions from ``path`` if it exists and has any (a file we do
    not own, as in a volume mounted from elsewhere, is left as it is, with a warning)."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if current & 0o077 == 0:
        return
    try:
        os.chmod(path, current & ~0o077)
        log.info("%s was readable by other users (mode %o); now %o", path, current,
                 stat.S_IMODE(os.stat(path).st_mode))
    except PermissionError:
        log.warning("%s holds biometric data and is readable by other users (mode %o), but "
                    "this process cannot change its permissions", path, current)


def private_dir(path: Path, *, tighten_existing: bool = False) -> Path:
    """``path`` as a directory: created ``0o700`` (with its parents) if missing. An existing
    directory open to other users loses those permissions only with ``tighten_existing``
    (one known to hold a gallery); otherwise it is left as it is with a warning, since it may
    be a directory others rely on (``--data-dir /srv``, a backup folder)."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        return path
    if tighten_existing:
        tighten(path)
    elif stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s is open to other users (mode %o); faceserve's files in it are "
                    "owner-only, but consider `chmod 700 %s`", path,
                    stat.S_IMODE(path.stat().st_mode), path)
    return path


def create_private_file(path: Path, *, exist_ok: bool = True) -> Path:
    """Create ``path`` empty with mode ``0o600`` unless it exists (then tighten it), so that
    whatever writes into it afterwards (SQLite, FAISS, tar) writes into an owner-only file.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, and SQLite's locks on an open database are such locks (a
    second store opened in the same process would otherwise let another process delete the
    first one's WAL under it)."""
    path = Path(path)
    if path.exists():
        if not exist_ok:
            raise FileExistsError(path)
        tighten(path)
        return path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        if not exist_ok:
            raise
        tighten(path)  # created meanwhile by another thread or process
        return path
    os.close(fd)
    return path


def open_private(path: Path | str, mode: str = "w", *, newline: str | None = None) -> TextIO:
    """Open ``path`` to write text (``"w"`` truncates, ``"a"`` appends; UTF-8), created
    ``0o600``: for command outputs that hold personal data (identify-dir's rows, enroll-dir's
    outcomes). An existing regular file loses its group and other permissions before anything
    is written; a device or pipe (``/dev/null``, a FIFO) is written as it is, never chmodded."""
    if mode not in ("w", "a"):
        raise ValueError(f"mode must be 'w' or 'a', not {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        current = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and current & 0o077:
            try:
                os.fchmod(fd, current & ~0o077)
            except PermissionError:
                log.warning("%s holds personal data and is readable by other users (mode %o), "
                            "but this process cannot change its permissions", path, current)
        return os.fdopen(fd, mode, newline=newline, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
