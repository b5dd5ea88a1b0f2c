"""Backup and restore of the SQLite gallery, with erasures and revocations kept.

**Backup.** A copy of ``gallery.sqlite3`` taken with ``cp`` while the server runs is not a
backup: the last committed transactions may still be in ``gallery.sqlite3-wal``, and a copy
of the two files made at slightly different moments can be torn. ``backup_sqlite`` uses
SQLite's online backup API in one step, which copies the database as one read transaction
sees it (WAL readers never block the server's writer, nor it them): the file it writes is one
consistent, self-contained database (journal mode DELETE, no ``-wal``), checked with
``PRAGMA quick_check``, created ``0o600`` and renamed into place only when complete.
Everything the gallery holds is in it: subjects, faces, embeddings, chips, API key hashes,
the audit log, the unknown-face pool and the tombstones. The FAISS snapshot is not: it is a
cache, rebuilt at start-up.

**Restore.** Restoring an older backup must not bring back what was erased, nor re-open a
revoked key, after the backup was taken. Every erasure (subject, face, pool face, negative) and
revocation writes a tombstone (``service.gallery.store.base.Tombstone``: random ids only, no
personal data) in the same transaction, into the table ``tombstones`` and, after commit, into
the journal file ``tombstones.jsonl`` beside the database. ``restore_sqlite`` (server stopped)
collects the tombstones of the current database and of the journal (so a lost or corrupted
database still has its erasures re-applied), copies the backup to a temporary file, migrates
it, erases and revokes again what the tombstones name, records them all in it, and only then
swaps it in; the replaced database is kept beside it (``gallery.sqlite3.replaced-<time>``, mode
0600) unless asked not to, and the index snapshot is removed so the server rebuilds its index
from the restored database.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.gallery.durable import fsync_path, sha256_file
from service.gallery.gallery import SNAPSHOT_NAME, lock_data_dir, unlock_data_dir
from service.gallery.index import remove_snapshot
from service.gallery.private import create_private_file, private_dir
from service.gallery.store import open_store
from service.gallery.store.base import NewAuditEvent, StoreError, Tombstone
from service.gallery.store.sqlite import (
    FILENAME,
    JOURNAL_NAME,
    SCHEMA_VERSION,
    SqliteStore,
    read_journal,
)

__all__ = [
    "FIRST_VERSION_WITH_TOMBSTONES",
    "BackupError",
    "BackupResult",
    "RestoreResult",
    "apply_tombstone_file",
    "backup_sqlite",
    "restore_sqlite",
    "write_tombstones",
]

log = logging.getLogger("faceserve.backup")

# The SQLite schema version that gave subjects their erasure tokens: an older backup's
# subjects would get new random tokens when migrated, which no tombstone can name.
FIRST_VERSION_WITH_TOMBSTONES = 5


class BackupError(RuntimeError):
    """The backup cannot be made or restored as asked (nothing was changed)."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    sha256: str
    schema_version: int
    subjects: int
    faces: int
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    backup: Path
    schema_version: int  # of the backup, before migration
    subjects: int  # after the tombstones were re-applied
    faces: int
    tombstones: int  # how many were re-applied (already present ones included)
    undone: dict[str, int] = field(default_factory=dict)  # subjects/faces erased, keys revoked
    replaced: Path | None = None  # where the database it replaced was kept
    journal_only: bool = False  # the current database was missing or unreadable


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")




def _copy_database(source: sqlite3.Connection, target: Path) -> None:
    """Copy ``source`` into the new file ``target`` (created 0600) in one backup step (one
    read snapshot), as a self-contained file in DELETE journal mode, and check it."""
    create_private_file(target, exist_ok=False)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        source.backup(dst)  # pages=-1: all in one step, so one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the copy failed its integrity check: {check}")
    finally:
        dst.close()
    fsync_path(target)


def _describe(path: Path) -> tuple[int, int, int]:
    """(schema version, subjects, faces) of a gallery database file; BackupError if it is not
    a readable faceserve gallery."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot open it as an SQLite database: {exc}") from None
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"{path} is damaged (quick_check: {check})")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            raise BackupError(f"{path} is not a faceserve gallery (no schema_version table)")
        version = int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)
        subjects = int(conn.execute("SELECT count(*) FROM subjects").fetchone()[0])
        faces = int(conn.execute("SELECT count(*) FROM faces").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable gallery database: {exc}") from None
    finally:
        conn.close()
    return version, subjects, faces


def backup_sqlite(data_dir: Path, out: Path | str, *, overwrite: bool = False) -> BackupResult:
    """Write a consistent copy of the gallery in ``data_dir`` to ``out``, while a server may be
    running and writing (see the module docstring). ``out`` names a directory (created
    ``0o700`` if missing) when it is one or ends with ``/``: the file in it is time-stamped."""
    started = time.perf_counter()
    source_path = Path(data_dir) / FILENAME
    if not source_path.is_file():
        raise BackupError(f"no gallery in {Path(data_dir).resolve()} (no {FILENAME}); pass "
                          "--data-dir")
    as_dir = str(out).endswith(("/", os.sep))
    out = Path(out)
    if as_dir or out.is_dir():
        private_dir(out)
        out = out / f"gallery-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.sqlite3"
    if out.exists() and not overwrite:
        raise BackupError(f"{out} exists; choose another name (or --overwrite)")
    if out.resolve() == source_path.resolve():
        raise BackupError("the backup cannot be the gallery database itself")
    if not out.parent.exists():
        private_dir(out.parent)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    # A normal (read-write) connection: a read-only one cannot use the WAL index of a
    # database another process is writing. Nothing is written through it.
    source = sqlite3.connect(source_path, timeout=30.0, isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        _copy_database(source, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    version, subjects, faces = _describe(partial)
    os.replace(partial, out)
    fsync_path(out.parent, directory=True)
    return BackupResult(out, out.stat().st_size, sha256_file(out), version, subjects, faces,
                        time.perf_counter() - started)


def _current_tombstones(data_dir: Path) -> tuple[list[Tombstone], bool]:
    """The tombstones of the current database and of the journal beside it; and whether only
    the journal could be read (no database, or a damaged one)."""
    items = read_journal(data_dir / JOURNAL_NAME)
    current = data_dir / FILENAME
    if not current.exists():
        return items, True
    try:
        _describe(current)
        store = SqliteStore(current)
    except (BackupError, StoreError, sqlite3.DatabaseError) as exc:
        log.warning("the current database cannot be read (%s): re-applying the tombstones of "
                    "%s only", exc, JOURNAL_NAME)
        return items, True
    try:
        items.extend(store.tombstones())
    finally:
        store.close()
    return items, False


def write_tombstones(path: Path, items: Sequence[Tombstone]) -> None:
    """Write ``items`` to ``path`` as JSON lines, replacing it atomically (mode 0600)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    create_private_file(tmp, exist_ok=False)
    with open(tmp, "w", encoding="utf-8") as f:
        for t in items:
            f.write(json.dumps({"kind": t.kind, "ref": t.ref, "at": t.at}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def restore_sqlite(data_dir: Path, backup: Path, *, keep_replaced: bool = True) -> RestoreResult:
    """Replace the gallery in ``data_dir`` by ``backup``, re-applying every erasure and key
    revocation recorded since (see the module docstring). Needs the server stopped:
    ``GalleryLocked`` otherwise."""
    backup = Path(backup)
    if not backup.is_file():
        raise BackupError(f"no backup file {backup}")
    data_dir = private_dir(Path(data_dir))
    current = data_dir / FILENAME
    if current.exists() and backup.resolve() == current.resolve():
        raise BackupError("the backup is the gallery database itself")
    version, _, _ = _describe(backup)
    if version > SCHEMA_VERSION:
        raise BackupError(f"{backup} has gallery schema version {version}, newer than this "
                          f"faceserve knows ({SCHEMA_VERSION}): restore it with a newer one")
    if version < FIRST_VERSION_WITH_TOMBSTONES:
        raise BackupError(
            f"{backup} has gallery schema version {version}, from before subjects had erasure "
            "tokens: erasures made since could not be re-applied to it. Restore it with the "
            "faceserve that made it, then upgrade."
        )
    fd = lock_data_dir(data_dir)  # GalleryLocked while a server has the data directory
    try:
        tombstones, journal_only = _current_tombstones(data_dir)
        restoring = data_dir / (FILENAME + ".restoring")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(restoring) + suffix).unlink(missing_ok=True)
        source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            _copy_database(source, restoring)
        finally:
            source.close()
        store = SqliteStore(restoring)  # migrates an older backup to this version
        try:
            tombstones.extend(store.tombstones())  # the backup's own: already applied there
            unique = list({(t.kind, t.ref): t for t in tombstones}.values())
            undone = store.apply_tombstones(unique)
            state = store.state()
            store.add_audit(NewAuditEvent(
                at=_now(), key_id=None, key_name="(command line)", action="restore",
                detail={"backup_schema_version": version, "tombstones": len(unique),
                        **undone, "subjects": state.subject_count, "faces": state.face_count},
            ))
        finally:
            store.close()  # checkpoints: the restored database is one file again
        fsync_path(restoring)
        replaced = None
        if current.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            replaced = data_dir / f"{FILENAME}.replaced-{stamp}"
            os.replace(current, replaced)
            for suffix in ("-wal", "-shm"):
                leftover = Path(str(current) + suffix)
                if leftover.exists():
                    os.replace(leftover, Path(str(replaced) + suffix))
        os.replace(restoring, current)
        fsync_path(data_dir, directory=True)
        write_tombstones(data_dir / JOURNAL_NAME, unique)
        remove_snapshot(data_dir / SNAPSHOT_NAME)  # the server rebuilds its index
        if replaced is not None and not keep_replaced:
            for suffix in ("", "-wal", "-shm"):
                Path(str(replaced) + suffix).unlink(missing_ok=True)
            replaced = None
    finally:
        unlock_data_dir(fd)
    return RestoreResult(backup, version, state.subject_count, state.face_count, len(unique),
                         undone, replaced, journal_only)


def apply_tombstone_file(data_dir: Path, database_url: str | None, path: Path) -> dict[str, int]:
    """Re-apply the tombstones of a file (``faceserve tombstones apply``) to the gallery, held
    exclusively: the data directory's lock (SQLite), or every replica kept out (PostgreSQL).
    The index snapshot of ``data_dir`` is removed, since it describes the gallery before."""
    if not Path(path).is_file():
        raise BackupError(f"no tombstone file {path}")
    items = read_journal(Path(path))
    data_dir = private_dir(Path(data_dir))
    if not database_url and not (data_dir / FILENAME).is_file():
        raise BackupError(f"no gallery in {data_dir.resolve()} (no {FILENAME})")
    fd = lock_data_dir(data_dir)
    try:
        store: Any = open_store(data_dir, database_url, exclusive=True)
        try:
            undone = store.apply_tombstones(items)
        finally:
            store.close()
        remove_snapshot(data_dir / SNAPSHOT_NAME)
    finally:
        unlock_data_dir(fd)
    return {"tombstones": len(items), **undone}
