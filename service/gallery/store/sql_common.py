"""What the SQLite and PostgreSQL stores share: row codecs, the read queries, re-embedding.

Both stores hold the same schema. They differ in parameter style (``?`` or ``%s``), in how
JSON columns come back (text from SQLite, already decoded by psycopg), and in connections,
transactions and locking, which each store keeps to itself. The reads are written once here
against those two hooks, so a fix to a query reaches both backends. The two statements of
``faceserve reembed`` (read faces of other models, write new embeddings) are the same on both
as well; the write runs in the store's own ``_write_transaction``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, get_args

import numpy as np

from service.gallery.store.base import (
    FaceMoveResult,
    FaceRecord,
    KeyRecord,
    MoveResult,
    NewFace,
    StoreState,
    SubjectRecord,
    Tombstone,
    TombstoneKind,
)

__all__ = [
    "FACE_COLUMNS",
    "KEY_COLUMNS",
    "ReembedRow",
    "SqlReads",
    "SqlSnapshot",
    "TombstoneSql",
    "from_blob",
    "key_record",
    "to_blob",
]

log = logging.getLogger("faceserve.store")

# The columns a moved face keeps (everything but its row id and subject).
_MOVED_COLUMNS = (
    "face_id, bbox, landmarks, detection_confidence, model, image_sha256, created_at, "
    "embedding, chip"
)

# (row id, face id, stored chip JPEG or None)
ReembedRow = tuple[int, str, bytes | None]

FACE_COLUMNS = (
    "id, face_id, subject_id, bbox, landmarks, detection_confidence, model, image_sha256, "
    "created_at"
)
KEY_COLUMNS = "key_id, name, key_hash, scopes, gallery, created_at, revoked_at"


def to_blob(embedding: np.ndarray) -> bytes:
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def from_blob(blob: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def key_record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(
        key_id=row[0], name=row[1], key_hash=row[2],
        scopes=tuple(s for s in row[3].split(",") if s), gallery=row[4], created_at=row[5],
        revoked_at=row[6],
    )


class SqlReads:
    """Read queries over the gallery schema, shared by the SQL stores.

    A store supplies ``_P`` (its parameter placeholder), ``_json`` (how a JSON column value
    becomes Python), ``_reader()``, ``_read_transaction()`` and ``_write_transaction()``
    (connection context managers) and ``_last_change(conn)``.
    """

    _P: str

    @staticmethod
    def _json(value: Any) -> Any:
        raise NotImplementedError

    def _reader(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    @staticmethod
    def _last_change(conn: Any) -> int:
        raise NotImplementedError

    def _face_record(self, row: Any, with_embedding: bool) -> FaceRecord:
        bbox = self._json(row[3])
        return FaceRecord(
            face_id=row[1],
            subject_id=row[2],
            bbox=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
            landmarks=[[float(c) for c in point] for point in self._json(row[4])],
            detection_confidence=float(row[5]),
            model=row[6],
            image_sha256=row[7],
            created_at=row[8],
            embedding=from_blob(row[9]) if with_embedding else None,
        )

    def _state(self, conn: Any) -> StoreState:
        models = {
            str(m): int(n)
            for m, n in conn.execute("SELECT model, count(*) FROM faces GROUP BY model")
        }
        subjects = int(conn.execute("SELECT count(*) FROM subjects").fetchone()[0])
        return StoreState(sum(models.values()), subjects, self._last_change(conn), models)

    def state(self) -> StoreState:
        with self._read_transaction() as conn:
            return self._state(conn)

    @contextmanager
    def snapshot(self, lo: str = "", hi: str | None = None) -> Iterator[SqlSnapshot]:
        """Paged reads of one state: one read transaction (SQLite's WAL snapshot, PostgreSQL's
        REPEATABLE READ) held for the block; pages are keyset queries on the primary keys.
        ``lo``, ``hi``: only subjects with ids in ``[lo, hi)`` (one gallery), and their faces."""
        with self._read_transaction() as conn:
            yield SqlSnapshot(self, conn, lo, hi)

    def known_face_ids(self, face_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        ids = list(face_ids)
        with self._reader() as conn:
            for start in range(0, len(ids), 500):  # below every SQLite's parameter limit
                part = ids[start:start + 500]
                marks = ", ".join([self._P] * len(part))
                rows = conn.execute(
                    f"SELECT face_id FROM faces WHERE face_id IN ({marks})", part
                ).fetchall()
                found.update(str(r[0]) for r in rows)
        return found

    def get_face(self, face_id: str, *, with_embedding: bool = True) -> FaceRecord | None:
        columns = FACE_COLUMNS + (", embedding" if with_embedding else "")
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {columns} FROM faces WHERE face_id = {self._P}", (face_id,)
            ).fetchone()
        return None if row is None else self._face_record(row, with_embedding)

    def get_chip(self, face_id: str) -> bytes | None:
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT chip FROM faces WHERE face_id = {self._P}", (face_id,)
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _faces_of(self, conn: Any, subject_id: str, with_embeddings: bool) -> list[FaceRecord]:
        columns = FACE_COLUMNS + (", embedding" if with_embeddings else "")
        rows = conn.execute(
            f"SELECT {columns} FROM faces WHERE subject_id = {self._P} ORDER BY id",
            (subject_id,),
        )
        return [self._face_record(r, with_embeddings) for r in rows]

    def get_subject(self, subject_id: str, *, with_faces: bool = True) -> SubjectRecord | None:
        with self._read_transaction() as conn:
            row = conn.execute(
                "SELECT subject_id, metadata, created_at, "
                "(SELECT count(*) FROM faces f WHERE f.subject_id = s.subject_id) "
                f"FROM subjects s WHERE subject_id = {self._P}",
                (subject_id,),
            ).fetchone()
            if row is None:
                return None
            faces = self._faces_of(conn, subject_id, False) if with_faces else []
        return SubjectRecord(row[0], self._json(row[1]), row[2], int(row[3]), faces)

    def subject_faces(self, subject_id: str, *, with_embeddings: bool = True) -> list[FaceRecord]:
        with self._reader() as conn:
            return self._faces_of(conn, subject_id, with_embeddings)

    def face_page(
        self, subject_id: str, after_row: int, limit: int
    ) -> list[tuple[int, FaceRecord]]:
        p = self._P
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT {FACE_COLUMNS} FROM faces WHERE subject_id = {p} AND id > {p} "
                f"ORDER BY id LIMIT {p}",
                (subject_id, int(after_row), int(limit)),
            ).fetchall()
        return [(int(r[0]), self._face_record(r, False)) for r in rows]

    def list_subjects(self, after: str | None, limit: int) -> list[SubjectRecord]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT subject_id, metadata, created_at, "
                "(SELECT count(*) FROM faces f WHERE f.subject_id = s.subject_id) "
                f"FROM subjects s WHERE subject_id > {self._P} ORDER BY subject_id "
                f"LIMIT {self._P}",
                ("" if after is None else after, int(limit)),
            ).fetchall()
        return [SubjectRecord(r[0], self._json(r[1]), r[2], int(r[3])) for r in rows]

    # ------------------------------------------------------------ renames and merges

    # How a JSON parameter is written in SQL ("::json" for PostgreSQL's json column).
    _JSON_CAST = ""

    def _log_changes(self, conn: Any, op: str, row_ids: list[int]) -> int:
        """Append one ``op`` change per row, in order; the last change id."""
        raise NotImplementedError

    def _after_move(self) -> None:
        """Called after a committed move (SQLite erases the old rows from its WAL)."""

    def _move_faces(self, conn: Any, source: str, target: str) -> MoveResult:
        """Move ``source``'s faces to ``target`` inside the caller's write transaction: each
        row is deleted and inserted again under ``target`` (a new row id, the same face id),
        so followers of the change log see a delete and an add, as for any other write.
        A face whose image ``target`` already has is only deleted (``faces_dropped``)."""
        p = self._P
        rows = conn.execute(
            f"SELECT id, {_MOVED_COLUMNS} FROM faces WHERE subject_id = {p} ORDER BY id",
            (source,),
        ).fetchall()
        taken = {
            str(r[0]) for r in conn.execute(
                f"SELECT image_sha256 FROM faces WHERE subject_id = {p}", (target,)
            ).fetchall()
        }
        removed: list[int] = []
        added: list[int] = []
        marks = ", ".join([p] * 10)
        for row in rows:
            conn.execute(f"DELETE FROM faces WHERE id = {p}", (row[0],))
            removed.append(int(row[0]))
            if str(row[6]) in taken:
                continue
            new = conn.execute(
                f"INSERT INTO faces (subject_id, {_MOVED_COLUMNS}) VALUES ({marks}) RETURNING id",
                (target, *row[1:]),
            ).fetchone()
            added.append(int(new[0]))
        change_id = self._last_change(conn)
        if removed:
            change_id = self._log_changes(conn, "delete", removed)
        if added:
            change_id = self._log_changes(conn, "add", added)
        return MoveResult("ok", removed, added, len(added), len(removed) - len(added),
                          change_id)

    def _subject_exists(self, conn: Any, subject_id: str) -> bool:
        return conn.execute(
            f"SELECT 1 FROM subjects WHERE subject_id = {self._P}", (subject_id,)
        ).fetchone() is not None

    def move_face(self, face_id: str, subject_id: str, created_at: str) -> FaceMoveResult:
        """One face to ``subject_id`` (see ``GalleryStore.move_face``), as ``_move_faces``
        moves a subject's: its row deleted and inserted again, a delete and an add logged."""
        p = self._P
        with self._write_transaction() as conn:
            row = conn.execute(f"SELECT {FACE_COLUMNS}, embedding FROM faces "
                               f"WHERE face_id = {p}", (face_id,)).fetchone()
            if row is None:
                return FaceMoveResult(None, None, change_id=self._last_change(conn))
            record, old_row = self._face_record(row, True), int(row[0])
            source = record.subject_id
            same = conn.execute(f"SELECT face_id FROM faces WHERE subject_id = {p} AND "
                                f"image_sha256 = {p}", (subject_id, record.image_sha256)
                                ).fetchone()
            if same is not None:
                return FaceMoveResult(record, source, change_id=self._last_change(conn),
                                      conflict=str(same[0]))
            created = not self._subject_exists(conn, subject_id)
            if created:
                conn.execute(f"INSERT INTO subjects (subject_id, metadata, created_at) "
                             f"VALUES ({p}, '{{}}', {p})", (subject_id, created_at))
            moved = conn.execute(f"SELECT {_MOVED_COLUMNS} FROM faces WHERE id = {p}",
                                 (old_row,)).fetchone()
            conn.execute(f"DELETE FROM faces WHERE id = {p}", (old_row,))
            new = conn.execute(
                f"INSERT INTO faces (subject_id, {_MOVED_COLUMNS}) VALUES "
                f"({', '.join([p] * 10)}) RETURNING id", (subject_id, *moved)).fetchone()
            self._log_changes(conn, "delete", [old_row])
            change_id = self._log_changes(conn, "add", [int(new[0])])
            # A subject never stays behind without faces (its negatives go with it).
            gone = conn.execute(
                f"DELETE FROM subjects WHERE subject_id = {p} AND NOT EXISTS "
                f"(SELECT 1 FROM faces WHERE subject_id = {p})", (source, source)).rowcount > 0
        self._after_move()
        record.subject_id = subject_id
        return FaceMoveResult(record, source, created, gone, change_id)

    def _move_negatives(self, conn: Any, source: str, target: str) -> None:
        """A renamed or merged subject's negatives ("not this person") go to ``target``: they
        were said of the same person (deleting ``source`` would erase them otherwise)."""
        conn.execute(f"UPDATE negatives SET subject_id = {self._P} WHERE subject_id = {self._P}",
                     (target, source))

    def rename_subject(
        self, subject_id: str, new_id: str, metadata: dict[str, Any] | None = None
    ) -> MoveResult:
        p = self._P
        with self._write_transaction() as conn:
            if not self._subject_exists(conn, subject_id):
                return MoveResult("no_source", change_id=self._last_change(conn))
            if subject_id == new_id:
                return MoveResult("same", change_id=self._last_change(conn))
            if self._subject_exists(conn, new_id):
                return MoveResult("target_exists", change_id=self._last_change(conn))
            conn.execute(
                "INSERT INTO subjects (subject_id, metadata, created_at) "
                f"SELECT {p}, metadata, created_at FROM subjects WHERE subject_id = {p}",
                (new_id, subject_id),
            )
            if metadata is not None:
                conn.execute(
                    f"UPDATE subjects SET metadata = {p}{self._JSON_CAST} WHERE subject_id = {p}",
                    (json.dumps(metadata, ensure_ascii=False), new_id),
                )
            result = self._move_faces(conn, subject_id, new_id)
            self._move_negatives(conn, subject_id, new_id)
            # The subject keeps its erasure token under its new id, so that erasing it erases
            # its copies in backups made before the rename too (service/gallery/backup.py).
            token = conn.execute(f"SELECT erasure_token FROM subjects WHERE subject_id = {p}",
                                 (subject_id,)).fetchone()[0]
            conn.execute(f"DELETE FROM subjects WHERE subject_id = {p}", (subject_id,))
            conn.execute(f"UPDATE subjects SET erasure_token = {p} WHERE subject_id = {p}",
                         (token, new_id))
        self._after_move()
        return result

    def merge_subjects(self, source: str, target: str) -> MoveResult:
        with self._write_transaction() as conn:
            if not self._subject_exists(conn, source):
                return MoveResult("no_source", change_id=self._last_change(conn))
            if source == target:
                return MoveResult("same", change_id=self._last_change(conn))
            if not self._subject_exists(conn, target):
                return MoveResult("no_target", change_id=self._last_change(conn))
            result = self._move_faces(conn, source, target)
            self._move_negatives(conn, source, target)
            conn.execute(f"DELETE FROM subjects WHERE subject_id = {self._P}", (source,))
        self._after_move()
        return result

    def update_metadata(self, subject_id: str, metadata: dict[str, Any]) -> bool:
        p = self._P
        with self._write_transaction() as conn:
            cur = conn.execute(
                f"UPDATE subjects SET metadata = {p}{self._JSON_CAST} WHERE subject_id = {p}",
                (json.dumps(metadata, ensure_ascii=False), subject_id),
            )
            found = cur.rowcount > 0
        if found:
            self._after_move()  # the old metadata is personal data: erase it as a deletion
        return found

    # ------------------------------------------------------------ re-embedding

    def faces_to_reembed(self, model: str, after: int, limit: int) -> list[ReembedRow]:
        """Up to ``limit`` faces not (yet) embedded by ``model`` with row ids above ``after``,
        in row-id order, with their stored chips."""
        p = self._P
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT id, face_id, chip FROM faces WHERE model <> {p} AND id > {p} "
                f"ORDER BY id LIMIT {p}",
                (model, int(after), int(limit)),
            ).fetchall()
        return [(int(r[0]), str(r[1]), None if r[2] is None else bytes(r[2])) for r in rows]

    def faces_without_chips(self, model: str) -> list[str]:
        """Ids of the faces not embedded by ``model`` that have no stored chip (cheap: the
        chips themselves are not read)."""
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT face_id FROM faces WHERE model <> {self._P} AND chip IS NULL "
                "ORDER BY id",
                (model,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def set_embeddings(self, updates: Sequence[tuple[int, np.ndarray]], model: str) -> int:
        """Replace the embeddings of these rows and label them ``model``, in one transaction;
        the number of rows changed (a row deleted meanwhile is skipped).

        Only ``faceserve reembed`` calls this, with the gallery held exclusively: it is the one
        write that changes a row after insertion, and it writes no change-log entry (no
        process follows the log while it runs; each rebuilds its index when it starts)."""
        p = self._P
        changed = 0
        with self._write_transaction() as conn:
            for row_id, embedding in updates:
                cur = conn.execute(
                    f"UPDATE faces SET embedding = {p}, model = {p} WHERE id = {p}",
                    (to_blob(embedding), model, int(row_id)),
                )
                changed += max(int(cur.rowcount), 0)
        return changed


class TombstoneSql:
    """Tombstones (erasures and revocations a restore must re-apply; see
    ``service.gallery.backup``), in the table ``tombstones`` of both SQL stores.

    Each erasure writes its tombstone in the transaction that erases (``_tombstone``), so a
    committed erasure always has one. A store supplies what ``SqlReads`` needs plus
    ``delete_subject``, ``delete_face``, ``delete_unknown``, ``delete_negative`` and
    ``revoke_key``, which ``apply_tombstones`` uses so that a re-applied erasure is a real one
    (change log, WAL erased, audit-free)."""

    _P: str

    def _reader(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _journal(self, items: Sequence[Tombstone]) -> None:
        """Copy committed tombstones outside the database (SQLite: a file beside it)."""

    def _tombstone(self, conn: Any, item: Tombstone) -> None:
        p = self._P
        conn.execute(
            f"INSERT INTO tombstones (kind, ref, at) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (kind, ref) DO NOTHING",
            (item.kind, item.ref, item.at),
        )

    def _erasure_tombstones(self, conn: Any, subject_id: str, at: str) -> list[Tombstone] | None:
        """Record (in ``conn``'s transaction) the tombstones of erasing a subject: its token,
        and each of its faces by face id and negatives by negative id, since both keep their
        ids when a rename or a merge moves them (a backup from before a merge holds them under
        the other subject). None when there is no such subject."""
        token = self._subject_token(conn, subject_id)
        if token is None:
            return None
        items = [Tombstone("subject", token, at)] + [
            Tombstone("face", str(r[0]), at) for r in conn.execute(
                f"SELECT face_id FROM faces WHERE subject_id = {self._P} ORDER BY id",
                (subject_id,)).fetchall()
        ] + [
            Tombstone("negative", str(r[0]), at) for r in conn.execute(
                f"SELECT negative_id FROM negatives WHERE subject_id = {self._P} ORDER BY id",
                (subject_id,)).fetchall()
        ]
        for item in items:
            self._tombstone(conn, item)
        return items

    def _subject_token(self, conn: Any, subject_id: str) -> str | None:
        """The subject's erasure token, or None when there is no such subject."""
        row = conn.execute(
            f"SELECT erasure_token FROM subjects WHERE subject_id = {self._P}", (subject_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def tombstones(self) -> list[Tombstone]:
        """Every tombstone, oldest first."""
        with self._reader() as conn:
            rows = conn.execute("SELECT kind, ref, at FROM tombstones ORDER BY id").fetchall()
        return [Tombstone(r[0], r[1], r[2]) for r in rows]

    def add_tombstones(self, items: Sequence[Tombstone]) -> None:
        """Record tombstones (those already present are kept as they are)."""
        with self._write_transaction() as conn:
            for item in items:
                self._tombstone(conn, item)

    def _matching(self, column: str, table: str, refs: Sequence[str],
                  extra: str = "") -> list[str]:
        found: list[str] = []
        refs = sorted(set(refs))
        with self._reader() as conn:
            for start in range(0, len(refs), 500):  # below every SQLite's parameter limit
                part = refs[start:start + 500]
                marks = ", ".join([self._P] * len(part))
                sql = (f"SELECT {column} FROM {table} WHERE {column} IN ({marks}){extra} "
                       f"ORDER BY {column}")
                found.extend(str(r[0]) for r in conn.execute(sql, part).fetchall())
        return found

    def apply_tombstones(self, items: Sequence[Tombstone]) -> dict[str, int]:
        """Erase and revoke again what ``items`` name and this store still holds (as after
        restoring an older backup), then record the tombstones; counts of what was undone."""
        refs: dict[str, list[str]] = {kind: [] for kind in get_args(TombstoneKind)}
        revoked_at: dict[str, str] = {}
        known: list[Tombstone] = []
        for item in items:
            if item.kind not in refs:  # from a newer faceserve: nothing here to erase
                log.warning("skipped a tombstone of unknown kind %r", item.kind)
                continue
            known.append(item)
            refs[item.kind].append(item.ref)
            if item.kind == "key":
                revoked_at.setdefault(item.ref, item.at)
        tokens = self._matching("erasure_token", "subjects", refs["subject"])
        subjects: list[str] = []
        with self._reader() as conn:
            for token in tokens:
                row = conn.execute(
                    f"SELECT subject_id FROM subjects WHERE erasure_token = {self._P}", (token,)
                ).fetchone()
                if row is not None:
                    subjects.append(str(row[0]))
        erased_faces = 0
        for subject_id in subjects:
            erased_faces += len(self.delete_subject(subject_id).row_ids)  # type: ignore[attr-defined]
        faces = self._matching("face_id", "faces", refs["face"])
        for face_id in faces:
            self.delete_face(face_id)  # type: ignore[attr-defined]
        unknown = 0
        for face_id in self._matching("face_id", "unknown_faces", refs["unknown_face"]):
            with self._reader() as conn:
                row = conn.execute(
                    f"SELECT gallery FROM unknown_faces WHERE face_id = {self._P}", (face_id,)
                ).fetchone()
            if row is not None:
                unknown += self.delete_unknown(str(row[0]), [face_id])  # type: ignore[attr-defined]
        negatives = 0  # after the subjects: an erased subject took its negatives along
        for negative_id in self._matching("negative_id", "negatives", refs["negative"]):
            with self._reader() as conn:
                row = conn.execute(
                    f"SELECT subject_id FROM negatives WHERE negative_id = {self._P}",
                    (negative_id,)).fetchone()
            if row is not None and self.delete_negative(  # type: ignore[attr-defined]
                    str(row[0]), negative_id):
                negatives += 1
        keys = self._matching("key_id", "api_keys", refs["key"], " AND revoked_at IS NULL")
        for key_id in keys:
            self.revoke_key(key_id, revoked_at[key_id])  # type: ignore[attr-defined]
        self.add_tombstones(known)
        return {"subjects_erased": len(subjects), "faces_erased": len(faces) + erased_faces,
                "unknown_faces_erased": unknown, "negatives_erased": negatives,
                "keys_revoked": len(keys)}


class SqlSnapshot:
    """``StoreSnapshot`` over an open read transaction of a SQL store (see ``snapshot``),
    limited to the subjects with ids in ``[lo, hi)`` (one gallery) when given."""

    def __init__(self, store: SqlReads, conn: Any, lo: str = "", hi: str | None = None) -> None:
        self._store = store
        self._conn = conn
        p = store._P
        self._where = f"subject_id >= {p}" + ("" if hi is None else f" AND subject_id < {p}")
        self._bounds: tuple[str, ...] = (lo,) if hi is None else (lo, hi)

    def state(self) -> StoreState:
        models = {
            str(m): int(n)
            for m, n in self._conn.execute(
                f"SELECT model, count(*) FROM faces WHERE {self._where} GROUP BY model",
                self._bounds,
            )
        }
        subjects = int(self._conn.execute(
            f"SELECT count(*) FROM subjects WHERE {self._where}", self._bounds
        ).fetchone()[0])
        return StoreState(sum(models.values()), subjects, self._store._last_change(self._conn),
                          models)

    def last_audit_id(self) -> int:
        row = self._conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
        return int(row[0])

    def chipless_models(self) -> dict[str, int]:
        rows = self._conn.execute(
            f"SELECT model, count(*) FROM faces WHERE chip IS NULL AND {self._where} "
            "GROUP BY model",
            self._bounds,
        ).fetchall()
        return {str(m): int(n) for m, n in rows}

    def subject_pages(self, size: int) -> Iterator[list[SubjectRecord]]:
        p, after = self._store._P, ""
        while True:
            rows = self._conn.execute(
                "SELECT subject_id, metadata, created_at, "
                "(SELECT count(*) FROM faces f WHERE f.subject_id = s.subject_id) "
                f"FROM subjects s WHERE subject_id > {p} AND {self._where} "
                f"ORDER BY subject_id LIMIT {p}",
                (after, *self._bounds, int(size)),
            ).fetchall()
            if not rows:
                return
            yield [SubjectRecord(r[0], self._store._json(r[1]), r[2], int(r[3])) for r in rows]
            after = rows[-1][0]

    def face_pages(self, size: int) -> Iterator[list[NewFace]]:
        p, after = self._store._P, 0
        while True:
            rows = self._conn.execute(
                f"SELECT {FACE_COLUMNS}, embedding, chip FROM faces WHERE id > {p} "
                f"AND {self._where} ORDER BY id LIMIT {p}",
                (after, *self._bounds, int(size)),
            ).fetchall()
            if not rows:
                return
            page = []
            for r in rows:
                rec = self._store._face_record(r, True)
                assert rec.embedding is not None
                page.append(NewFace(
                    face_id=rec.face_id, subject_id=rec.subject_id, bbox=rec.bbox,
                    landmarks=rec.landmarks, detection_confidence=rec.detection_confidence,
                    model=rec.model, image_sha256=rec.image_sha256, created_at=rec.created_at,
                    embedding=rec.embedding, chip_jpeg=None if r[10] is None else bytes(r[10]),
                ))
            yield page
            after = int(rows[-1][0])

    def unknown_pages(
        self, size: int, gallery: str | None = None, created_after: str | None = None
    ) -> Iterator[list[Any]]:
        """The unknown-face pool (of one gallery, "" the default, or all when None; created
        after ``created_after`` when given: the faces within their retention limit), with
        embeddings and chips, in insertion order, ``size`` at a time."""
        from service.gallery.store.unknown import UNKNOWN_COLUMNS, unknown_record

        p, after = self._store._P, 0
        where, args = "", []
        if gallery is not None:
            where += f" AND gallery = {p}"
            args.append(gallery)
        if created_after is not None:
            where += f" AND created_at >= {p}"
            args.append(created_after)
        while True:
            rows = self._conn.execute(
                f"SELECT id, {UNKNOWN_COLUMNS}, embedding, chip FROM unknown_faces "
                f"WHERE id > {p}{where} ORDER BY id LIMIT {p}",
                (after, *args, int(size)),
            ).fetchall()
            if not rows:
                return
            yield [unknown_record(r[1:], r[12], r[13]) for r in rows]
            after = int(rows[-1][0])

    def negative_pages(self, size: int) -> Iterator[list[Any]]:
        """The negatives of the snapshot's subjects with embeddings and chips, in insertion
        order, ``size`` at a time."""
        from service.gallery.store.negatives import NEGATIVE_COLUMNS, negative_record

        p, after = self._store._P, 0
        while True:
            rows = self._conn.execute(
                f"SELECT id, {NEGATIVE_COLUMNS}, embedding, chip FROM negatives "
                f"WHERE id > {p} AND {self._where} ORDER BY id LIMIT {p}",
                (after, *self._bounds, int(size)),
            ).fetchall()
            if not rows:
                return
            yield [negative_record(r[1:], r[7], r[8]) for r in rows]
            after = int(rows[-1][0])
