"""The gallery in one SQLite file: durable on commit, erased on delete.

Durability: WAL with ``synchronous=FULL`` makes every commit reach the disk before it returns,
so an enrollment acknowledged to a client survives a power cut. Erasure: ``secure_delete``
overwrites deleted rows and freed pages with zeros, and after each deletion (and each replacement
of a subject's metadata) the WAL, which still holds the old page images, is checkpointed and
truncated, so a deleted face's embedding, chip and image hash, or replaced metadata, are gone
from the files when the call returns.

Threads: one writer connection behind a lock, and a pool of reader connections (WAL readers never
block the writer nor each other). Each connection is used by one thread at a time.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.private import create_private_file, private_dir, tighten
from service.gallery.store.base import (
    AddResult,
    AuditRecord,
    Change,
    ChangeBatch,
    DeleteResult,
    FaceChunk,
    FaceRecord,
    ImportBatchResult,
    KeyRecord,
    LogPosition,
    NewAuditEvent,
    NewFace,
    SchemaTooNew,
    StoreError,
    SubjectRecord,
    Tombstone,
)
from service.gallery.store.galleries import GalleryRegistrySql
from service.gallery.store.negatives import NegativesSql
from service.gallery.store.sql_common import (
    FACE_COLUMNS,
    KEY_COLUMNS,
    SqlReads,
    TombstoneSql,
    from_blob,
    key_record,
    to_blob,
)
from service.gallery.store.unknown import UnknownPoolSql

__all__ = ["FILENAME", "JOURNAL_NAME", "SCHEMA_VERSION", "SqliteStore", "read_journal"]

log = logging.getLogger("faceserve.store")

FILENAME = "gallery.sqlite3"
# Beside the database, a copy of every tombstone (JSON lines): what a restore re-applies when
# the database itself is lost or unreadable (service/gallery/backup.py).
JOURNAL_NAME = "tombstones.jsonl"


def read_journal(path: Path) -> list[Tombstone]:
    """The tombstones of a journal file (none if it is missing); a line cut short by a crash
    while it was appended is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    items = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
            items.append(Tombstone(d["kind"], str(d["ref"]), str(d["at"])))
        except (ValueError, KeyError, TypeError):
            log.warning("%s: skipped an unreadable line", path)
    return items

# Each entry migrates from version i to i + 1. Append only: never edit a released migration.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE subjects (
            subject_id TEXT PRIMARY KEY,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )""",
        # Blobs last: scans of the small columns then never touch the overflow pages.
        """CREATE TABLE faces (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            face_id TEXT NOT NULL UNIQUE,
            subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
            bbox TEXT NOT NULL,
            landmarks TEXT NOT NULL,
            detection_confidence REAL NOT NULL,
            model TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            created_at TEXT NOT NULL,
            embedding BLOB NOT NULL,
            chip BLOB,
            UNIQUE (subject_id, image_sha256)
        )""",
        "CREATE INDEX faces_model ON faces(model)",
        """CREATE TABLE changes (
            change_id INTEGER PRIMARY KEY AUTOINCREMENT,
            op TEXT NOT NULL CHECK (op IN ('add', 'delete')),
            face_row_id INTEGER NOT NULL,
            at TEXT NOT NULL
        )""",
    ),
    # 2: API keys (hashes only) and the audit log (issue 7). Keys are revoked, never deleted.
    (
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            scopes TEXT NOT NULL,
            gallery TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            key_id TEXT,
            key_name TEXT NOT NULL,
            action TEXT NOT NULL,
            gallery TEXT NOT NULL DEFAULT '',
            subject_id TEXT,
            face_id TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX audit_gallery ON audit(gallery, id)",
    ),
    # 3: the pool of unknown faces (issue 17; service/gallery/store/unknown.py).
    (
        """CREATE TABLE unknown_faces (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            face_id TEXT NOT NULL UNIQUE,
            gallery TEXT NOT NULL DEFAULT '',
            photo TEXT NOT NULL,
            source TEXT,
            bbox TEXT NOT NULL,
            landmarks TEXT NOT NULL,
            detection_confidence REAL NOT NULL,
            model TEXT NOT NULL,
            created_at TEXT NOT NULL,
            cluster_id TEXT,
            pinned INTEGER NOT NULL DEFAULT 0,
            embedding BLOB NOT NULL,
            chip BLOB
        )""",
        "CREATE INDEX unknown_faces_gallery ON unknown_faces(gallery, id)",
        "CREATE INDEX unknown_faces_created ON unknown_faces(created_at)",
    ),
    # 4: a subject goes with its last face (issue 20); remove those older versions left
    # behind without faces (listed, but never found by identify or verify).
    (
        "DELETE FROM subjects WHERE NOT EXISTS "
        "(SELECT 1 FROM faces f WHERE f.subject_id = subjects.subject_id)",
    ),
    # 5: tombstones of erasures and key revocations, which a restore from a backup re-applies
    # (service/gallery/backup.py). A subject is named in its tombstone by a random erasure
    # token given at creation (its id may be a person's name); the trigger gives one to every
    # new subject whichever statement inserts it.
    (
        "ALTER TABLE subjects ADD COLUMN erasure_token TEXT",
        "UPDATE subjects SET erasure_token = lower(hex(randomblob(16)))",
        """CREATE TRIGGER subjects_erasure_token AFTER INSERT ON subjects
            FOR EACH ROW WHEN NEW.erasure_token IS NULL
            BEGIN
                UPDATE subjects SET erasure_token = lower(hex(randomblob(16)))
                WHERE rowid = NEW.rowid;
            END""",
        "CREATE UNIQUE INDEX subjects_erasure_token ON subjects(erasure_token)",
        """CREATE TABLE tombstones (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('subject', 'face', 'unknown_face', 'key')),
            ref TEXT NOT NULL,
            at TEXT NOT NULL,
            UNIQUE (kind, ref)
        )""",
    ),
    # 6: scopes split by role (issue 20): a key stored with ``admin`` keeps what admin then
    # covered (service.security.keys.LEGACY_ADMIN; admin was always last in the stored list);
    # galleries created over HTTP (service/gallery/store/galleries.py), with the galleries of
    # existing keys recorded as created with their first key. Safe to run twice (tests rewind
    # the version): keys holding `read` already are left alone, the table is kept.
    (
        "UPDATE api_keys SET scopes = replace(scopes, 'admin', 'read,erase,metrics,audit,admin') "
        "WHERE ',' || scopes || ',' LIKE '%,admin,%' "
        "AND ',' || scopes || ',' NOT LIKE '%,read,%'",
        """CREATE TABLE IF NOT EXISTS galleries (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        )""",
        "INSERT OR IGNORE INTO galleries (name, created_at) SELECT gallery, min(created_at) "
        "FROM api_keys WHERE gallery <> '' GROUP BY gallery",
    ),
    # 7: negative examples of subjects, "not this person" (issue 17;
    # service/gallery/store/negatives.py). Erased with their subject (the cascade); a subject
    # whose id changes takes them along.
    (
        """CREATE TABLE negatives (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            negative_id TEXT NOT NULL UNIQUE,
            subject_id TEXT NOT NULL REFERENCES subjects(subject_id)
                ON DELETE CASCADE ON UPDATE CASCADE,
            source TEXT NOT NULL,
            source_id TEXT,
            model TEXT NOT NULL,
            created_at TEXT NOT NULL,
            embedding BLOB NOT NULL,
            chip BLOB
        )""",
        "CREATE INDEX negatives_subject ON negatives(subject_id, id)",
    ),
    # 8: tombstones of deleted negatives (kind 'negative'), so a restore erases them again.
    # SQLite cannot change a CHECK constraint in place: the table is made anew and its rows
    # copied with their ids (the order a restore reads them in). Safe to run twice.
    (
        "DROP TABLE IF EXISTS tombstones_new",
        """CREATE TABLE tombstones_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL
                CHECK (kind IN ('subject', 'face', 'unknown_face', 'key', 'negative')),
            ref TEXT NOT NULL,
            at TEXT NOT NULL,
            UNIQUE (kind, ref)
        )""",
        "INSERT INTO tombstones_new (id, kind, ref, at) SELECT id, kind, ref, at FROM tombstones",
        "DROP TABLE tombstones",
        "ALTER TABLE tombstones_new RENAME TO tombstones",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SqliteStore(SqlReads, UnknownPoolSql, TombstoneSql, GalleryRegistrySql,
                  NegativesSql):
    """``GalleryStore`` on ``<data_dir>/gallery.sqlite3``."""

    _P = "?"

    @staticmethod
    def _json(value: Any) -> Any:
        return json.loads(value)

    shared = False  # one process per file: the gallery locks the data directory

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._write_lock = threading.Lock()
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        self._writer = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._writer.close()
            raise

    @property
    def location(self) -> str:
        return f"the gallery in {self.path.parent}"

    @property
    def journal_path(self) -> Path:
        return self.path.with_name(JOURNAL_NAME)

    def _journal(self, items: Sequence[Tombstone]) -> None:
        """Append committed tombstones to the journal beside the database (fsynced). The table
        is the record; the journal is for a restore without a readable database, so a failure
        here is logged and does not undo the erasure."""
        if not items:
            return
        lines = "".join(
            json.dumps({"kind": t.kind, "ref": t.ref, "at": t.at}) + "\n" for t in items
        )
        try:
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("could not append to the tombstone journal %s: %s (the database has "
                      "the tombstones; a restore reads them from there)", self.journal_path, exc)

    @classmethod
    def open(cls, data_dir: Path) -> SqliteStore:
        """The gallery in ``data_dir``; the directory and the database file are created
        owner-only (``service.gallery.private``), and SQLite gives its ``-wal`` and ``-shm``
        files the database file's permissions."""
        data_dir = Path(data_dir)
        private_dir(data_dir, tighten_existing=(data_dir / FILENAME).exists())
        path = create_private_file(data_dir / FILENAME)
        for suffix in ("-wal", "-shm"):
            tighten(path.with_name(path.name + suffix))
        return cls(path)

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
        )
        try:
            mode = self._enter_wal(conn)
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            if conn.execute("PRAGMA secure_delete").fetchone()[0] != 1:
                raise StoreError("this SQLite build cannot overwrite deleted data (secure_delete)")
        except BaseException:
            conn.close()
            raise
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> str:
        """Switch ``conn`` to WAL journaling, waiting out other connections doing the same.

        On a new file the switch needs an exclusive lock, and SQLite answers "database is
        locked" at once instead of applying the busy timeout, so connections opened together
        (several readers, or processes starting on an empty data dir) retry here within it.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.001
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Several SELECTs seeing one state of the database."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise StoreError("the store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has gallery schema version {version}, but this faceserve "
                    f"knows versions up to {SCHEMA_VERSION}: it was written by a newer faceserve. "
                    "Upgrade faceserve (or restore a backup made for this version); the file "
                    "was not modified."
                )
            if version == 0:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = ?", (target,))
                log.info("gallery schema of %s migrated to version %d", self.path, target)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            if tables - {"sqlite_sequence"}:
                raise StoreError(f"{self.path} is an SQLite database but not a faceserve gallery")
            return 0
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    @staticmethod
    def _last_change(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(change_id), 0) FROM changes").fetchone()[0])

    def _after_erasure(self) -> None:
        with self._write_lock:
            self._erase_wal()

    def _erase_wal(self) -> None:
        """Move the WAL into the database and empty it: it still holds the deleted rows' pages."""
        busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("WAL checkpoint after a deletion or a metadata replacement was blocked "
                        "by a reader; the old data stays in %s-wal until the next checkpoint",
                        self.path)

    # ------------------------------------------------------------ writes

    def add_face(
        self, face: NewFace, metadata: dict[str, Any] | None, replace_metadata: bool = True
    ) -> AddResult:
        result = self._add_face(face, metadata if replace_metadata else None, metadata)
        if result.metadata_replaced:
            # The subject's metadata was replaced: its old value (personal data) is still in
            # the WAL or, until the next checkpoint, in the main file. Erase it as a deletion.
            with self._write_lock:
                self._erase_wal()
        return result

    def _add_face(
        self, face: NewFace, replacement: dict[str, Any] | None,
        initial: dict[str, Any] | None,
    ) -> AddResult:
        """``initial``: a new subject's metadata; ``replacement``: an existing one's."""
        initial_json = None if initial is None else json.dumps(initial, ensure_ascii=False)
        meta_json = None if replacement is None else json.dumps(replacement, ensure_ascii=False)
        with self._write_transaction() as conn:
            subject_created = replaced = False
            if conn.execute(
                "SELECT 1 FROM subjects WHERE subject_id = ?", (face.subject_id,)
            ).fetchone() is None:
                conn.execute(
                    "INSERT INTO subjects (subject_id, metadata, created_at) VALUES (?, ?, ?)",
                    (face.subject_id, initial_json or "{}", face.created_at),
                )
                subject_created = True
            elif meta_json is not None:
                conn.execute(
                    "UPDATE subjects SET metadata = ? WHERE subject_id = ?",
                    (meta_json, face.subject_id),
                )
                replaced = True
            existing = conn.execute(
                f"SELECT {FACE_COLUMNS}, embedding FROM faces "
                "WHERE subject_id = ? AND image_sha256 = ?",
                (face.subject_id, face.image_sha256),
            ).fetchone()
            if existing is not None:
                return AddResult(
                    self._face_record(existing, True), int(existing[0]), False, False,
                    self._last_change(conn), replaced,
                )
            cur = conn.execute(
                "INSERT INTO faces (face_id, subject_id, bbox, landmarks, detection_confidence, "
                "model, image_sha256, created_at, embedding, chip) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    face.face_id,
                    face.subject_id,
                    json.dumps([int(v) for v in face.bbox]),
                    json.dumps([[float(c) for c in point] for point in face.landmarks]),
                    float(face.detection_confidence),
                    face.model,
                    face.image_sha256,
                    face.created_at,
                    to_blob(face.embedding),
                    face.chip_jpeg,
                ),
            )
            row_id = int(cur.lastrowid or 0)
            change = conn.execute(
                "INSERT INTO changes (op, face_row_id, at) VALUES ('add', ?, ?)",
                (row_id, _now()),
            )
            record = FaceRecord(
                face_id=face.face_id,
                subject_id=face.subject_id,
                bbox=tuple(int(v) for v in face.bbox),  # type: ignore[arg-type]
                landmarks=[[float(c) for c in point] for point in face.landmarks],
                detection_confidence=float(face.detection_confidence),
                model=face.model,
                image_sha256=face.image_sha256,
                created_at=face.created_at,
                embedding=from_blob(to_blob(face.embedding)),
            )
            return AddResult(record, row_id, True, subject_created, int(change.lastrowid or 0),
                             replaced)

    def import_batch(
        self, subjects: Sequence[SubjectRecord], faces: Sequence[NewFace]
    ) -> ImportBatchResult:
        with self._write_transaction() as conn:
            subjects_added = 0
            for subject in subjects:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO subjects (subject_id, metadata, created_at) "
                    "VALUES (?, ?, ?)",
                    (subject.subject_id, json.dumps(subject.metadata, ensure_ascii=False),
                     subject.created_at),
                )
                subjects_added += max(int(cur.rowcount), 0)
            row_ids: list[int] = []
            for face in faces:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO faces (face_id, subject_id, bbox, landmarks, "
                    "detection_confidence, model, image_sha256, created_at, embedding, chip) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        face.face_id, face.subject_id,
                        json.dumps([int(v) for v in face.bbox]),
                        json.dumps([[float(c) for c in point] for point in face.landmarks]),
                        float(face.detection_confidence), face.model, face.image_sha256,
                        face.created_at, to_blob(face.embedding), face.chip_jpeg,
                    ),
                )
                if cur.rowcount > 0:
                    row_ids.append(int(cur.lastrowid or 0))
            at = _now()
            conn.executemany(
                "INSERT INTO changes (op, face_row_id, at) VALUES ('add', ?, ?)",
                [(r, at) for r in row_ids],
            )
            return ImportBatchResult(subjects_added, len(row_ids), self._last_change(conn))

    def _delete(self, conn: sqlite3.Connection, row_ids: list[int]) -> None:
        self._log_changes(conn, "delete", row_ids)

    def _log_changes(self, conn: sqlite3.Connection, op: str, row_ids: list[int]) -> int:
        at = _now()
        conn.executemany(
            "INSERT INTO changes (op, face_row_id, at) VALUES (?, ?, ?)",
            [(op, r, at) for r in row_ids],
        )
        return self._last_change(conn)

    def _after_move(self) -> None:
        with self._write_lock:
            self._erase_wal()

    def delete_subject(self, subject_id: str) -> DeleteResult:
        with self._write_transaction() as conn:
            tombstones = self._erasure_tombstones(conn, subject_id, _now())
            if tombstones is None:
                return DeleteResult([], False, self._last_change(conn))
            row_ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM faces WHERE subject_id = ? ORDER BY id", (subject_id,)
                )
            ]
            self._delete(conn, row_ids)
            conn.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))  # cascades
            change_id = self._last_change(conn)
        self._journal(tombstones)
        with self._write_lock:
            self._erase_wal()
        return DeleteResult(row_ids, True, change_id)

    def delete_face(self, face_id: str) -> DeleteResult:
        with self._write_transaction() as conn:
            row = conn.execute(
                "SELECT id, subject_id FROM faces WHERE face_id = ?", (face_id,)
            ).fetchone()
            if row is None:
                return DeleteResult([], False, self._last_change(conn))
            row_ids = [int(row[0])]
            tombstone = Tombstone("face", face_id, _now())
            self._tombstone(conn, tombstone)
            self._delete(conn, row_ids)
            conn.execute("DELETE FROM faces WHERE id = ?", (row_ids[0],))
            # The last face takes its subject along (see ``DeleteResult.subject_deleted``).
            gone = conn.execute(
                "DELETE FROM subjects WHERE subject_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM faces WHERE subject_id = ?)", (row[1], row[1]),
            ).rowcount > 0
            change_id = self._last_change(conn)
        self._journal([tombstone])
        with self._write_lock:
            self._erase_wal()
        return DeleteResult(row_ids, True, change_id, gone)

    # ------------------------------------------------------------ reads

    def scan_faces(self, chunk_size: int, *, with_embeddings: bool) -> Iterator[FaceChunk]:
        columns = "id, face_id, subject_id" + (", embedding" if with_embeddings else "")
        with self._read_transaction() as conn:
            cur = conn.execute(f"SELECT {columns} FROM faces ORDER BY id")
            while rows := cur.fetchmany(chunk_size):
                embeddings = None
                if with_embeddings:
                    embeddings = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4")
                    embeddings = embeddings.astype(np.float32).reshape(len(rows), -1)
                yield FaceChunk(
                    row_ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                    face_ids=[r[1] for r in rows],
                    subject_ids=[r[2] for r in rows],
                    embeddings=embeddings,
                )

    def changes_since(self, after: int, limit: int) -> ChangeBatch:
        with self._read_transaction() as conn:
            rows = conn.execute(
                "SELECT c.change_id, c.op, c.face_row_id, f.face_id, f.subject_id, f.model, "
                "f.embedding FROM changes c LEFT JOIN faces f "
                "ON c.op = 'add' AND f.id = c.face_row_id "
                "WHERE c.change_id > ? ORDER BY c.change_id LIMIT ?",
                (int(after), int(limit)),
            ).fetchall()
            subjects = int(conn.execute("SELECT count(*) FROM subjects").fetchone()[0])
        changes = [
            Change(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5],
                   None if r[6] is None else from_blob(r[6]))
            for r in rows
        ]
        return ChangeBatch(changes, subjects)

    def log_position(self, after: int) -> LogPosition:
        with self._read_transaction() as conn:
            head = self._last_change(conn)
            behind, oldest = conn.execute(
                "SELECT count(*), min(at) FROM changes WHERE change_id > ?", (int(after),)
            ).fetchone()
        age = 0.0
        if oldest is not None:
            then = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
            age = max(0.0, (datetime.now(UTC) - then).total_seconds())
        return LogPosition(head, int(behind), age)

    # ------------------------------------------------------------ API keys and audit (issue 7)

    def add_key(self, key: KeyRecord) -> None:
        with self._write_transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, name, key_hash, scopes, gallery, created_at, "
                "revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.name, key.key_hash, ",".join(key.scopes), key.gallery,
                 key.created_at, key.revoked_at),
            )

    def find_key(self, key_hash: str) -> KeyRecord | None:
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        return None if row is None else key_record(row)

    def list_keys(self, gallery: str | None = None) -> list[KeyRecord]:
        with self._reader() as conn:
            if gallery is None:
                rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY rowid")
            else:
                rows = conn.execute(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE gallery = ? ORDER BY rowid",
                    (gallery,),
                )
            return [key_record(r) for r in rows]

    def revoke_key(self, key_id: str, at: str, gallery: str | None = None) -> KeyRecord | None:
        tombstones = []
        with self._write_transaction() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL "
                "AND (? IS NULL OR gallery = ?)",
                (at, key_id, gallery, gallery),
            )
            if cur.rowcount > 0:
                tombstones.append(Tombstone("key", key_id, at))
                self._tombstone(conn, tombstones[0])
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ? "
                "AND (? IS NULL OR gallery = ?)",
                (key_id, gallery, gallery),
            ).fetchone()
        self._journal(tombstones)
        return None if row is None else key_record(row)

    def _gallery_write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._write_transaction()

    def key_count(self, *, active_only: bool) -> int:
        where = " WHERE revoked_at IS NULL" if active_only else ""
        with self._reader() as conn:
            return int(conn.execute(f"SELECT count(*) FROM api_keys{where}").fetchone()[0])

    def add_audit(self, event: NewAuditEvent) -> int:
        with self._write_transaction() as conn:
            cur = conn.execute(
                "INSERT INTO audit (at, key_id, key_name, action, gallery, subject_id, face_id, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.at, event.key_id, event.key_name, event.action, event.gallery,
                 event.subject_id, event.face_id,
                 json.dumps(event.detail, ensure_ascii=False, separators=(",", ":"))),
            )
            return int(cur.lastrowid or 0)

    def list_audit(
        self, gallery: str | None, after: int, limit: int, action: str | None = None,
        *, per_gallery: bool = False,
    ) -> list[AuditRecord]:
        with self._reader() as conn:
            if per_gallery and gallery is not None:
                rows = conn.execute(
                    "SELECT seq, at, key_id, key_name, action, gallery, subject_id, face_id, "
                    "detail FROM (SELECT ROW_NUMBER() OVER (ORDER BY id) AS seq, at, key_id, "
                    "key_name, action, gallery, subject_id, face_id, detail FROM audit "
                    "WHERE gallery = ?) AS g WHERE seq > ? AND (? IS NULL OR action = ?) "
                    "ORDER BY seq LIMIT ?",
                    (gallery, int(after), action, action, int(limit)),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT id, at, key_id, key_name, action, gallery, subject_id, face_id, "
                    "detail FROM audit WHERE id > ? AND (? IS NULL OR gallery = ?) "
                    "AND (? IS NULL OR action = ?) ORDER BY id LIMIT ?",
                    (int(after), gallery, gallery, action, action, int(limit)),
                ).fetchall()
        return [
            AuditRecord(
                id=int(r[0]), at=r[1], key_id=r[2], key_name=r[3], action=r[4], gallery=r[5],
                subject_id=r[6], face_id=r[7], detail=json.loads(r[8]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Checkpoint and close every idle connection; the last close removes the WAL file."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    break
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._writer.close()
