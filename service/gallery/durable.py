"""Files that must survive a crash: fsync of a file or of the folder that names it, and the
SHA-256 that checks a file was written whole (index snapshots, backups)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["fsync_path", "sha256_file"]


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush ``path`` to disk; for a folder, the names in it (a rename is durable only once
    its folder is). Never use it on a live SQLite database: closing any descriptor of a file
    drops the process's POSIX locks on it, SQLite's included."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
