"""The pool of unknown faces (issue 17): faces identify matched to nobody, kept on request.

Not the gallery: pool faces are never searched by identify or verify, have no subject, and
expire (``FACESERVE_UNKNOWN_TTL_DAYS``). They are clustered into groups a user can name
(enrolling the group's faces as a subject) or discard. The same SQL runs on SQLite and
PostgreSQL (``?`` or ``%s`` through the store's ``_P``); each store runs it in its own
transactions and, after a deletion, erases what it can of the deleted bytes
(``_after_erasure``: SQLite empties its write-ahead log). The table is created by migration 3
of each store.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.gallery.store.base import Tombstone
from service.gallery.store.sql_common import from_blob, to_blob

__all__ = ["UNKNOWN_COLUMNS", "UnknownFace", "UnknownPoolSql", "unknown_record"]

UNKNOWN_COLUMNS = ("face_id, gallery, photo, source, bbox, landmarks, detection_confidence, "
                   "model, created_at, cluster_id, pinned")


_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class UnknownFace:
    face_id: str
    gallery: str
    photo: str  # the image's SHA-256: faces of one photo are never put in one cluster
    source: str | None  # the client's own reference to the photo, as given
    bbox: tuple[int, int, int, int]
    landmarks: list[list[float]]
    detection_confidence: float
    model: str
    created_at: str
    embedding: np.ndarray | None = None
    chip_jpeg: bytes | None = None
    cluster_id: str | None = None
    pinned: bool = False  # placed by a user's correction: reclustering leaves it where it is


def unknown_record(row: Sequence[Any], embedding: Any = None, chip: Any = None) -> UnknownFace:
    return UnknownFace(
        face_id=row[0], gallery=row[1], photo=row[2], source=row[3],
        bbox=tuple(json.loads(row[4])), landmarks=json.loads(row[5]),
        detection_confidence=float(row[6]), model=row[7], created_at=row[8],
        cluster_id=row[9], pinned=bool(row[10]),
        embedding=None if embedding is None else from_blob(embedding),
        chip_jpeg=None if chip is None else bytes(chip),
    )


class UnknownPoolSql:
    """The pool's statements; mixed into the SQL stores (see the module docstring)."""

    _P: str

    def _read_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _after_erasure(self) -> None:
        """Erase deleted bytes the database still holds elsewhere (a no-op by default)."""

    @contextmanager
    def clustering_lock(self, gallery: str) -> Iterator[bool]:
        """Hold the right to cluster ``gallery``'s pool: True when taken, False when another
        clustering of it is running (the caller answers 409 rather than queue: a second run
        would redo the same work on the same faces). Here a lock of this process, which is
        enough for SQLite: one process per data directory (``gallery.lock_data_dir``). The
        PostgreSQL store overrides it with an advisory lock, which replicas share."""
        with _LOCKS_GUARD:
            locks = self.__dict__.setdefault("_clustering_locks", {})
            lock = locks.setdefault(gallery, threading.Lock())
        taken = lock.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                lock.release()

    def add_unknown(self, faces: Sequence[UnknownFace], *, skip_present: bool = False) -> int:
        """Store these pool faces; ``skip_present`` (an import): leave out face ids the pool
        already holds instead of failing. How many were added."""
        if not faces:
            return 0
        p = self._P
        conflict = " ON CONFLICT (face_id) DO NOTHING" if skip_present else ""
        sql = (f"INSERT INTO unknown_faces ({UNKNOWN_COLUMNS}, embedding, chip) "
               f"VALUES ({', '.join([p] * 13)}){conflict}")
        rows = [(f.face_id, f.gallery, f.photo, f.source, json.dumps(list(f.bbox)),
                 json.dumps(f.landmarks), f.detection_confidence, f.model, f.created_at,
                 f.cluster_id, int(f.pinned), to_blob(np.asarray(f.embedding)), f.chip_jpeg)
                for f in faces]
        with self._write_transaction() as conn:
            if not skip_present:
                conn.cursor().executemany(sql, rows)
                return len(rows)
            return sum(max(conn.execute(sql, row).rowcount, 0) for row in rows)

    def unknown_faces(
        self, gallery: str, *, with_embeddings: bool = True, cluster_id: str | None = None
    ) -> list[UnknownFace]:
        """The gallery's pool in insertion order (only ``cluster_id``'s faces when given)."""
        p = self._P
        extra = f" AND cluster_id = {p}" if cluster_id is not None else ""
        args: tuple[Any, ...] = (gallery,) if cluster_id is None else (gallery, cluster_id)
        cols = UNKNOWN_COLUMNS + (", embedding" if with_embeddings else "")
        with self._read_transaction() as conn:
            rows = list(conn.execute(
                f"SELECT {cols} FROM unknown_faces WHERE gallery = {p}{extra} ORDER BY id", args))
        return [unknown_record(r, r[11] if with_embeddings else None) for r in rows]

    def unknown_face(self, gallery: str, face_id: str) -> UnknownFace | None:
        """One pool face of the gallery, with its embedding and chip, or None."""
        p = self._P
        with self._read_transaction() as conn:
            row = conn.execute(
                f"SELECT {UNKNOWN_COLUMNS}, embedding, chip FROM unknown_faces "
                f"WHERE gallery = {p} AND face_id = {p}", (gallery, face_id)).fetchone()
        return None if row is None else unknown_record(row, row[11], row[12])

    def unknown_chip(self, gallery: str, face_id: str) -> bytes | None:
        p = self._P
        with self._read_transaction() as conn:
            row = conn.execute(
                f"SELECT chip FROM unknown_faces WHERE gallery = {p} AND face_id = {p}",
                (gallery, face_id)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def set_unknown_clusters(
        self, gallery: str, clusters: dict[str, str | None], *, pin: bool = False
    ) -> None:
        """Record each face's cluster; ``pin``: and that a user put it there."""
        p = self._P
        pinned = ", pinned = 1" if pin else ""
        with self._write_transaction() as conn:
            conn.cursor().executemany(
                f"UPDATE unknown_faces SET cluster_id = {p}{pinned} "
                f"WHERE gallery = {p} AND face_id = {p}",
                [(c, gallery, f) for f, c in clusters.items()],
            )

    def unknown_to_reembed(
        self, model: str, after: int, limit: int
    ) -> list[tuple[int, str, bytes | None]]:
        """``(row id, face id, chip or None)`` of up to ``limit`` pool faces (any gallery)
        not of ``model``, row ids above ``after``, in row order (``faceserve reembed``)."""
        p = self._P
        with self._read_transaction() as conn:
            rows = conn.execute(
                f"SELECT id, face_id, chip FROM unknown_faces WHERE model <> {p} AND id > {p} "
                f"ORDER BY id LIMIT {p}", (model, int(after), int(limit))).fetchall()
        return [(int(r[0]), r[1], None if r[2] is None else bytes(r[2])) for r in rows]

    def set_unknown_embeddings(self, updates: Sequence[tuple[str, np.ndarray]],
                               model: str) -> int:
        p = self._P
        changed = 0
        with self._write_transaction() as conn:
            for face_id, vector in updates:
                cur = conn.execute(f"UPDATE unknown_faces SET embedding = {p}, model = {p} "
                                   f"WHERE face_id = {p}", (to_blob(vector), model, face_id))
                changed += max(cur.rowcount, 0)
        return changed

    def delete_unknown(self, gallery: str, face_ids: Sequence[str]) -> int:
        """Erase these faces of the gallery's pool; returns how many there were."""
        p = self._P
        removed = 0
        tombstones: list[Tombstone] = []
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._write_transaction() as conn:
            for chunk in _chunks(list(face_ids), 500):
                marks = ", ".join([p] * len(chunk))
                # A tombstone for each face erased, so a restore erases it again (the store's
                # TombstoneSql); a face moved into the gallery by naming its cluster gets one
                # too, and keeps its enrolled copy, which has a face id of its own.
                found = conn.execute(
                    f"SELECT face_id FROM unknown_faces WHERE gallery = {p} AND face_id IN "
                    f"({marks})", (gallery, *chunk)).fetchall()
                for (face_id,) in found:
                    tombstones.append(Tombstone("unknown_face", str(face_id), at))
                    self._tombstone(conn, tombstones[-1])  # type: ignore[attr-defined]
                cur = conn.execute(
                    f"DELETE FROM unknown_faces WHERE gallery = {p} AND face_id IN "
                    f"({marks})", (gallery, *chunk))
                removed += max(cur.rowcount, 0)
        self._journal(tombstones)  # type: ignore[attr-defined]
        if removed:
            self._after_erasure()
        return removed

    def expire_unknown(self, before: str) -> int:
        """Erase every pool face created before ``before`` (ISO time); returns how many."""
        p = self._P
        with self._write_transaction() as conn:
            cur = conn.execute(f"DELETE FROM unknown_faces WHERE created_at < {p}", (before,))
            removed = max(cur.rowcount, 0)
        if removed:
            self._after_erasure()
        return removed


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
