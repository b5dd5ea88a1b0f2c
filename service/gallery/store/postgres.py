"""The gallery in PostgreSQL (psycopg 3), shared by several faceserve replicas.

Selected by ``database_url=postgresql://...``; the schema is the connection's first
``search_path`` schema (``?options=-csearch_path%3Dmyschema`` picks another), migrated at start-up
under an advisory lock, so replicas starting together do not race.

Change ids in commit order. Every write transaction first takes a transaction-level advisory
lock (one per schema), then allocates its change ids from the ``changes`` identity sequence, then
commits, which releases the lock. Writers are therefore serialised across processes, and ids are
handed out in commit order: a follower reading ``change_id > n`` can never miss a change that
commits later with a smaller id (which two unserialised writers could produce: the one that drew
the smaller id commits second). Reads take no lock. Each write also ``NOTIFY``s the channel
``faceserve_changes``, delivered at commit: a hint to followers, never the truth, since a listener
that was disconnected misses it; followers poll the log as well.

Durability: PostgreSQL's default ``synchronous_commit=on`` flushes the commit to its WAL before
the commit returns, so an acknowledged enrollment survives a crash of the server. Erasure: a
deleted row is gone from every query at commit, but PostgreSQL leaves the dead tuple in the table
file until (auto)vacuum reclaims it, and WAL segments keep it until they are recycled; unlike the
SQLite store's ``secure_delete``, nothing here overwrites it at once.

Exclusive use. Every store holds a session-level advisory lock on its writer connection, in
shared mode, for as long as it is open (``faceserve.gallery.<schema>``). ``faceserve reembed``
opens the store with ``exclusive=True``, which takes that lock in exclusive mode: it is refused
while any replica (or other faceserve command) has the gallery open, and while it runs every
other open is refused, so no replica can serve or write embeddings of the old model meanwhile.
A writer connection that is replaced (server restart) takes the lock again.

Threads: one writer connection behind a lock, and a bounded pool of reader connections
(autocommit; multi-statement reads run in REPEATABLE READ READ ONLY transactions, so they see one
state). A connection found broken (server restart) is dropped and replaced on next use.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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
from service.gallery.store.migrations.postgres import MIGRATIONS, SCHEMA_VERSION
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

__all__ = ["NOTIFY_CHANNEL", "SCHEMA_VERSION", "PostgresListener", "PostgresStore"]

log = logging.getLogger("faceserve.store")

NOTIFY_CHANNEL = "faceserve_changes"
OUR_TABLES = ("subjects", "faces", "changes", "api_keys", "audit")
# libpq settings we add when the URL does not set them: fail fast when the server is away, name
# the sessions in pg_stat_activity, and notice a dead server on an idle listening connection.
_DEFAULTS = {"connect_timeout": "10", "application_name": "faceserve"}
_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
               "keepalives_count": "3"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(conninfo: str) -> str:
    """Where a connection string points, for messages: never its password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "the local socket"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "?"
    return f"the PostgreSQL gallery in database {db!r} on {host}:{port}"


def _with_defaults(conninfo: str, extra: dict[str, str]) -> str:
    given = conninfo_to_dict(conninfo)
    return make_conninfo(conninfo, **{k: v for k, v in extra.items() if k not in given})


class PostgresListener:
    """A dedicated connection that ``LISTEN``s for change notifications."""

    def __init__(self, conninfo: str, channel: str = NOTIFY_CHANNEL) -> None:
        self._conn = psycopg.connect(_with_defaults(conninfo, _KEEPALIVES), autocommit=True)
        try:
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            self._conn.close()
            raise

    def wait(self, timeout: float) -> bool:
        woke = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            woke = True
        if woke:  # one catch-up covers every notification already queued
            for _ in self._conn.notifies(timeout=0):
                pass
        return woke

    def close(self) -> None:
        self._conn.close()


class PostgresStore(SqlReads, UnknownPoolSql, TombstoneSql, GalleryRegistrySql,
                    NegativesSql):
    """``GalleryStore`` on a PostgreSQL schema; several processes may open the same one."""

    _P = "%s"

    @staticmethod
    def _json(value: Any) -> Any:
        return value  # psycopg decodes json/jsonb columns itself

    shared = True

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = 8,
        pool_timeout_s: float = 30.0,
        exclusive: bool = False,
    ) -> None:
        self._conninfo = _with_defaults(conninfo, _DEFAULTS)
        self._exclusive = exclusive
        self._presence_key: int | None = None  # known once the schema is
        self.location = describe(conninfo)
        self._write_lock = threading.Lock()
        self._idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool_timeout_s = pool_timeout_s
        self._closed = False
        self._writer: psycopg.Connection | None = None
        writer = self._writer_connection()
        try:
            self.schema = self._migrate(writer)
            key = writer.execute(
                "SELECT hashtext('faceserve.changes.' || %s)", (self.schema,)
            ).fetchone()
            assert key is not None
            self._write_key = int(key[0])
            key = writer.execute(
                "SELECT hashtext('faceserve.gallery.' || %s)", (self.schema,)
            ).fetchone()
            assert key is not None
            self._presence_key = int(key[0])
            self._take_presence(writer)
        except BaseException:
            writer.close()
            raise

    @classmethod
    def open(cls, database_url: str, *, exclusive: bool = False) -> PostgresStore:
        try:
            return cls(database_url, exclusive=exclusive)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to {describe(database_url)}: {exc}") from None

    def open_listener(self) -> PostgresListener:
        return PostgresListener(self._conninfo)

    # ------------------------------------------------------------ connections

    def _connect(self, *, reader: bool) -> psycopg.Connection:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        if reader:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        return conn

    def _writer_connection(self) -> psycopg.Connection:
        if self._writer is None or self._writer.broken or self._writer.closed:
            if self._writer is not None:
                self._writer.close()
            self._writer = self._connect(reader=False)
            if self._presence_key is not None:  # a replacement: the old session's lock is gone
                self._take_presence(self._writer)
        return self._writer

    def _take_presence(self, conn: psycopg.Connection) -> None:
        """The session lock that ``exclusive`` stores and ordinary ones exclude each other by."""
        fn = "pg_try_advisory_lock" if self._exclusive else "pg_try_advisory_lock_shared"
        row = conn.execute(f"SELECT {fn}(%s)", (self._presence_key,)).fetchone()
        if row and row[0]:
            return
        conn.close()
        if self._exclusive:
            raise StoreError(
                f"{self.location}, schema {self.schema!r}, is open in another faceserve "
                "process: stop every replica (and other faceserve commands on it) first"
            )
        raise StoreError(
            f"{self.location}, schema {self.schema!r}, is being re-embedded by `faceserve "
            "reembed`; start faceserve again when it has finished"
        )

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._slots.acquire(timeout=self._pool_timeout_s):
            raise StoreError(f"no database connection free after {self._pool_timeout_s}s")
        conn: psycopg.Connection | None = None
        try:
            while conn is None:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    conn = self._connect(reader=True)
                    break
                if conn.broken or conn.closed:
                    conn.close()
                    conn = None
            yield conn
        finally:
            if conn is not None:
                if conn.broken or self._closed:
                    conn.close()
                else:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
                    self._idle.put(conn)
            self._slots.release()

    @contextmanager
    def _read_transaction(self) -> Iterator[psycopg.Connection]:
        with self._reader() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _write_transaction(self) -> Iterator[psycopg.Connection]:
        with self._write_lock:
            if self._closed:
                raise StoreError("the store is closed")
            conn = self._writer_connection()
            with conn.transaction():
                # Held until commit: serialises writers of this schema across processes, so
                # change ids are drawn in commit order (see the module docstring).
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_key,))
                yield conn

    def _notify(self, conn: psycopg.Connection, change_id: int) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{self.schema}:{change_id}"))

    # ------------------------------------------------------------ migrations

    def _migrate(self, conn: psycopg.Connection) -> str:
        with conn.transaction():
            row = conn.execute("SELECT current_schema()").fetchone()
            schema = row[0] if row else None
            if schema is None:
                raise StoreError(
                    f"{self.location}: no schema of the search_path exists; create it or fix "
                    "the search_path option of the database URL"
                )
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('faceserve.migrate.' || %s))", (schema,)
            )
            where = f"{self.location}, schema {schema!r}"
            version = self._version(conn, schema, where)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{where} has gallery schema version {version}, but this faceserve knows "
                    f"versions up to {SCHEMA_VERSION}: it was written by a newer faceserve. "
                    "Upgrade faceserve (or restore a backup made for this version); the database "
                    "was not modified."
                )
            if version == 0:
                conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = %s", (target,))
                log.info("gallery schema of %s migrated to version %d", where, target)
        return str(schema)

    @staticmethod
    def _version(conn: psycopg.Connection, schema: str, where: str) -> int:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        }
        if "schema_version" not in tables:
            if tables & set(OUR_TABLES):
                raise StoreError(
                    f"{where} has tables named {sorted(tables & set(OUR_TABLES))} but is not a "
                    "faceserve gallery (no schema_version table); use another schema or database"
                )
            return 0
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    @staticmethod
    def _last_change(conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT coalesce(max(change_id), 0) FROM changes").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ writes

    _JSON_CAST = "::json"

    def _log_changes(self, conn: psycopg.Connection, op: str, row_ids: list[int]) -> int:
        return (self._log_adds if op == "add" else self._log_deletes)(conn, row_ids)

    def add_face(
        self, face: NewFace, metadata: dict[str, Any] | None, replace_metadata: bool = True
    ) -> AddResult:
        meta_json = None if metadata is None else json.dumps(metadata, ensure_ascii=False)
        with self._write_transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO subjects (subject_id, metadata, created_at) "
                "VALUES (%s, %s::json, %s) ON CONFLICT (subject_id) DO NOTHING RETURNING 1",
                (face.subject_id, meta_json or "{}", face.created_at),
            ).fetchone()
            subject_created = inserted is not None
            replaced = not subject_created and meta_json is not None and replace_metadata
            if replaced:
                conn.execute(
                    "UPDATE subjects SET metadata = %s::json WHERE subject_id = %s",
                    (meta_json, face.subject_id),
                )
            existing = conn.execute(
                f"SELECT {FACE_COLUMNS}, embedding FROM faces "
                "WHERE subject_id = %s AND image_sha256 = %s",
                (face.subject_id, face.image_sha256),
            ).fetchone()
            if existing is not None:
                return AddResult(
                    self._face_record(existing, True), int(existing[0]), False, False,
                    self._last_change(conn), replaced,
                )
            bbox = [int(v) for v in face.bbox]
            landmarks = [[float(c) for c in point] for point in face.landmarks]
            row = conn.execute(
                "INSERT INTO faces (face_id, subject_id, bbox, landmarks, detection_confidence, "
                "model, image_sha256, created_at, embedding, chip) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    face.face_id,
                    face.subject_id,
                    bbox,
                    landmarks,
                    float(face.detection_confidence),
                    face.model,
                    face.image_sha256,
                    face.created_at,
                    to_blob(face.embedding),
                    face.chip_jpeg,
                ),
            ).fetchone()
            assert row is not None
            row_id = int(row[0])
            change = conn.execute(
                "INSERT INTO changes (op, face_row_id) VALUES ('add', %s) RETURNING change_id",
                (row_id,),
            ).fetchone()
            assert change is not None
            change_id = int(change[0])
            self._notify(conn, change_id)
        record = FaceRecord(
            face_id=face.face_id,
            subject_id=face.subject_id,
            bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
            landmarks=landmarks,
            detection_confidence=float(face.detection_confidence),
            model=face.model,
            image_sha256=face.image_sha256,
            created_at=face.created_at,
            embedding=from_blob(to_blob(face.embedding)),
        )
        return AddResult(record, row_id, True, subject_created, change_id, replaced)

    def import_batch(
        self, subjects: Sequence[SubjectRecord], faces: Sequence[NewFace]
    ) -> ImportBatchResult:
        with self._write_transaction() as conn:
            subjects_added = 0
            if subjects:
                row = conn.execute(
                    "WITH added AS (INSERT INTO subjects (subject_id, metadata, created_at) "
                    "SELECT * FROM unnest(%s::text[], %s::json[], %s::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM added",
                    ([s.subject_id for s in subjects],
                     [json.dumps(s.metadata, ensure_ascii=False) for s in subjects],
                     [s.created_at for s in subjects]),
                ).fetchone()
                subjects_added = int(row[0]) if row else 0
            row_ids: list[int] = []
            if faces:
                with conn.cursor() as cur:
                    # One statement per face, pipelined; a face already present returns no row.
                    cur.executemany(
                        "INSERT INTO faces (face_id, subject_id, bbox, landmarks, "
                        "detection_confidence, model, image_sha256, created_at, embedding, "
                        "chip) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING RETURNING id",
                        [
                            (f.face_id, f.subject_id, [int(v) for v in f.bbox],
                             [[float(c) for c in point] for point in f.landmarks],
                             float(f.detection_confidence), f.model, f.image_sha256,
                             f.created_at, to_blob(f.embedding), f.chip_jpeg)
                            for f in faces
                        ],
                        returning=True,
                    )
                    while True:
                        got = cur.fetchone()
                        if got is not None:
                            row_ids.append(int(got[0]))
                        if not cur.nextset():
                            break
            change_id = self._log_adds(conn, row_ids) if row_ids else self._last_change(conn)
        return ImportBatchResult(subjects_added, len(row_ids), change_id)

    def _log_adds(self, conn: psycopg.Connection, row_ids: list[int]) -> int:
        row = conn.execute(
            "WITH logged AS (INSERT INTO changes (op, face_row_id) "
            "SELECT 'add', r FROM unnest(%s::bigint[]) WITH ORDINALITY AS t (r, n) ORDER BY n "
            "RETURNING change_id) SELECT max(change_id) FROM logged",
            (row_ids,),
        ).fetchone()
        assert row is not None and row[0] is not None
        change_id = int(row[0])
        self._notify(conn, change_id)
        return change_id

    def _log_deletes(self, conn: psycopg.Connection, row_ids: list[int]) -> int:
        row = conn.execute(
            "WITH logged AS (INSERT INTO changes (op, face_row_id) "
            "SELECT 'delete', r FROM unnest(%s::bigint[]) WITH ORDINALITY AS t (r, n) ORDER BY n "
            "RETURNING change_id) SELECT max(change_id) FROM logged",
            (row_ids,),
        ).fetchone()
        assert row is not None and row[0] is not None
        change_id = int(row[0])
        self._notify(conn, change_id)
        return change_id

    def delete_subject(self, subject_id: str) -> DeleteResult:
        with self._write_transaction() as conn:
            if self._erasure_tombstones(conn, subject_id, _now()) is None:
                return DeleteResult([], False, self._last_change(conn))
            row_ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM faces WHERE subject_id = %s ORDER BY id", (subject_id,)
                )
            ]
            change_id = self._log_deletes(conn, row_ids) if row_ids else self._last_change(conn)
            conn.execute("DELETE FROM subjects WHERE subject_id = %s", (subject_id,))  # cascades
        return DeleteResult(row_ids, True, change_id)

    def delete_face(self, face_id: str) -> DeleteResult:
        with self._write_transaction() as conn:
            row = conn.execute(
                "SELECT id, subject_id FROM faces WHERE face_id = %s", (face_id,)
            ).fetchone()
            if row is None:
                return DeleteResult([], False, self._last_change(conn))
            row_ids = [int(row[0])]
            self._tombstone(conn, Tombstone("face", face_id, _now()))
            change_id = self._log_deletes(conn, row_ids)
            conn.execute("DELETE FROM faces WHERE id = %s", (row_ids[0],))
            # The last face takes its subject along (see ``DeleteResult.subject_deleted``).
            gone = conn.execute(
                "DELETE FROM subjects WHERE subject_id = %s AND NOT EXISTS "
                "(SELECT 1 FROM faces WHERE subject_id = %s)", (row[1], row[1]),
            ).rowcount > 0
        return DeleteResult(row_ids, True, change_id, gone)

    # ------------------------------------------------------------ reads

    def scan_faces(self, chunk_size: int, *, with_embeddings: bool) -> Iterator[FaceChunk]:
        columns = "id, face_id, subject_id" + (", embedding" if with_embeddings else "")
        with self._read_transaction() as conn, conn.cursor(name="faceserve_scan") as cur:
            cur.itersize = chunk_size
            cur.execute(f"SELECT {columns} FROM faces ORDER BY id")
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
                "WHERE c.change_id > %s ORDER BY c.change_id LIMIT %s",
                (int(after), int(limit)),
            ).fetchall()
            row = conn.execute("SELECT count(*) FROM subjects").fetchone()
            subjects = int(row[0]) if row else 0
            pruned = self._pruned_through(conn)
        changes = [
            Change(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5],
                   None if r[6] is None else from_blob(r[6]))
            for r in rows
        ]
        return ChangeBatch(changes, subjects, pruned)

    # ------------------------------------------------------------ clustering (#17)

    @contextmanager
    def clustering_lock(self, gallery: str) -> Iterator[bool]:
        """A session advisory lock per schema and gallery, on a pooled connection held for the
        whole run: every replica's POST /clusters of that gallery excludes the others'. A
        replica that dies while holding it loses its session, and the lock with it."""
        with self._reader() as conn:
            key = ("faceserve.clusters." + self.schema + "." + gallery,)
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", key).fetchone()
            taken = bool(row and row[0])
            try:
                yield taken
            finally:
                if taken and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", key)

    # ------------------------------------------------------------ replicas and pruning (#16)

    @staticmethod
    def _pruned_through(conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT pruned_through FROM change_log").fetchone()
        return int(row[0]) if row else 0

    def log_pruned_through(self) -> int:
        """Change-log entries up to this id may be gone: a follower behind it rebuilds."""
        with self._reader() as conn:
            return self._pruned_through(conn)

    def record_applied(self, replica_id: str, change_id: int) -> None:
        """A replica's heartbeat: it has applied every change up to ``change_id``."""
        with self._plain_write() as conn:
            conn.execute(
                "INSERT INTO replicas (replica_id, applied_change_id) VALUES (%s, %s) "
                "ON CONFLICT (replica_id) DO UPDATE SET applied_change_id = "
                "excluded.applied_change_id, seen_at = clock_timestamp()",
                (replica_id, int(change_id)),
            )

    def replica_positions(self) -> dict[str, tuple[int, float]]:
        """Each recorded replica's applied change id and seconds since its heartbeat."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT replica_id, applied_change_id, "
                "extract(epoch FROM clock_timestamp() - seen_at) FROM replicas"
            ).fetchall()
        return {str(r[0]): (int(r[1]), float(r[2])) for r in rows}

    def prune_log(self, live_s: float) -> tuple[int, int]:
        """Delete the change-log entries every live replica (heartbeat within ``live_s``) has
        applied; (pruned through, entries deleted). Nothing without a live replica, and never
        the last entry (the head change id is ``max(change_id)``). Replicas silent for ten
        times ``live_s`` are forgotten."""
        with self._plain_write() as conn:
            conn.execute("DELETE FROM replicas WHERE seen_at < clock_timestamp() - "
                         "make_interval(secs => %s)", (10 * float(live_s),))
            row = conn.execute(
                "SELECT min(applied_change_id) FROM replicas "
                "WHERE seen_at >= clock_timestamp() - make_interval(secs => %s)",
                (float(live_s),),
            ).fetchone()
            bound = None if row is None or row[0] is None else int(row[0])
            if bound is None:
                return self._pruned_through(conn), 0
            row = conn.execute(
                "WITH gone AS (DELETE FROM changes WHERE change_id <= %s AND change_id < "
                "(SELECT max(change_id) FROM changes) RETURNING change_id) "
                "SELECT count(*), max(change_id) FROM gone",
                (bound,),
            ).fetchone()
            removed, through = (int(row[0]), row[1]) if row else (0, None)
            if through is not None:
                conn.execute("UPDATE change_log SET pruned_through = "
                             "greatest(pruned_through, %s)", (int(through),))
            return self._pruned_through(conn), removed

    def log_position(self, after: int) -> LogPosition:
        with self._read_transaction() as conn:
            head = self._last_change(conn)
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at)) "
                "FROM changes WHERE change_id > %s",
                (int(after),),
            ).fetchone()
        assert row is not None
        return LogPosition(head, int(row[0]), max(0.0, float(row[1] or 0.0)))

    # ------------------------------------------------------------ API keys and audit (issue 7)

    @contextmanager
    def _plain_write(self) -> Iterator[psycopg.Connection]:
        """A write outside the gallery's change log: no advisory lock, no change id."""
        with self._write_lock:
            if self._closed:
                raise StoreError("the store is closed")
            conn = self._writer_connection()
            with conn.transaction():
                yield conn

    def add_key(self, key: KeyRecord) -> None:
        with self._plain_write() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, name, key_hash, scopes, gallery, created_at, "
                "revoked_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (key.key_id, key.name, key.key_hash, ",".join(key.scopes), key.gallery,
                 key.created_at, key.revoked_at),
            )

    def find_key(self, key_hash: str) -> KeyRecord | None:
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = %s", (key_hash,)
            ).fetchone()
        return None if row is None else key_record(row)

    def list_keys(self, gallery: str | None = None) -> list[KeyRecord]:
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys "
                "WHERE %s::text IS NULL OR gallery = %s ORDER BY seq",
                (gallery, gallery),
            ).fetchall()
        return [key_record(r) for r in rows]

    def revoke_key(self, key_id: str, at: str, gallery: str | None = None) -> KeyRecord | None:
        with self._plain_write() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL "
                "AND (%s::text IS NULL OR gallery = %s)",
                (at, key_id, gallery, gallery),
            )
            if cur.rowcount > 0:
                self._tombstone(conn, Tombstone("key", key_id, at))
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s "
                "AND (%s::text IS NULL OR gallery = %s)",
                (key_id, gallery, gallery),
            ).fetchone()
        return None if row is None else key_record(row)

    def _gallery_write(self) -> AbstractContextManager[psycopg.Connection]:
        return self._plain_write()

    def key_count(self, *, active_only: bool) -> int:
        where = " WHERE revoked_at IS NULL" if active_only else ""
        with self._reader() as conn:
            row = conn.execute(f"SELECT count(*) FROM api_keys{where}").fetchone()
        return int(row[0]) if row else 0

    def add_audit(self, event: NewAuditEvent) -> int:
        with self._plain_write() as conn:
            row = conn.execute(
                "INSERT INTO audit (at, key_id, key_name, action, gallery, subject_id, face_id, "
                "detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::json) RETURNING id",
                (event.at, event.key_id, event.key_name, event.action, event.gallery,
                 event.subject_id, event.face_id,
                 json.dumps(event.detail, ensure_ascii=False, separators=(",", ":"))),
            ).fetchone()
        assert row is not None
        return int(row[0])

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
                    "WHERE gallery = %s) AS g WHERE seq > %s "
                    "AND (%s::text IS NULL OR action = %s) ORDER BY seq LIMIT %s",
                    (gallery, int(after), action, action, int(limit)),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT id, at, key_id, key_name, action, gallery, subject_id, face_id, "
                    "detail FROM audit WHERE id > %s AND (%s::text IS NULL OR gallery = %s) "
                    "AND (%s::text IS NULL OR action = %s) ORDER BY id LIMIT %s",
                    (int(after), gallery, gallery, action, action, int(limit)),
                ).fetchall()
        return [
            AuditRecord(
                id=int(r[0]), at=r[1], key_id=r[2], key_name=r[3], action=r[4], gallery=r[5],
                subject_id=r[6], face_id=r[7], detail=r[8],
            )
            for r in rows
        ]

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    break
            if self._writer is not None:
                self._writer.close()
