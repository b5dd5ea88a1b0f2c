"""Negative examples of subjects (issue 17, "not this person"): faces a user said are not them.

Each row holds the embedding of a face marked "not S" for one subject S (and its chip when
the face had one), with where it came from (an enrolled face, a pool face, or an embedding the
client sent) and when. Identify refuses S for a face nearer to one of S's negatives than to
S's best enrolled face (``models.negatives``). Negatives are never searched themselves and are
not faces of the gallery: no change-log entry, no index; identify reads the few negatives of
its candidate subjects from the store, so every replica honours a negative as soon as it is
committed. The rows reference their subject with ``ON DELETE CASCADE``: erasing the subject
erases its negatives in the same transaction (and SQLite's ``secure_delete`` overwrites them).
The table is created by migration 7 of the SQLite store and 8 of the PostgreSQL one. A
renamed or merged subject takes its negatives along (``SqlReads._move_negatives``).

A negative holds biometric data, so deleting one writes a tombstone (kind ``negative``, its
random id) in the same transaction, and erasing a subject one for each of its negatives
(``TombstoneSql._erasure_tombstones``): restoring an older backup erases them again
(``service.gallery.backup``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.gallery.store.base import Tombstone
from service.gallery.store.sql_common import from_blob, to_blob

__all__ = ["NEGATIVE_COLUMNS", "NEGATIVE_SOURCES", "NegativeRecord", "NegativesSql",
           "SubjectMissing", "negative_record"]

NEGATIVE_SOURCES = ("face", "unknown_face", "embedding")
NEGATIVE_COLUMNS = "negative_id, subject_id, source, source_id, model, created_at"


class SubjectMissing(LookupError):
    """The subject a negative is for does not exist (any more)."""


@dataclass(frozen=True)
class NegativeRecord:
    negative_id: str
    subject_id: str  # as stored (a named gallery's prefix included)
    source: str  # one of NEGATIVE_SOURCES
    source_id: str | None  # the face or pool face it was taken from; None for an embedding
    model: str
    created_at: str
    embedding: np.ndarray | None = None
    chip_jpeg: bytes | None = None


def negative_record(row: Sequence[Any], embedding: Any = None, chip: Any = None) -> NegativeRecord:
    return NegativeRecord(
        negative_id=row[0], subject_id=row[1], source=row[2], source_id=row[3], model=row[4],
        created_at=row[5], embedding=None if embedding is None else from_blob(embedding),
        chip_jpeg=None if chip is None else bytes(chip),
    )


class NegativesSql:
    """The statements; mixed into both SQL stores (``?`` or ``%s`` through ``_P``)."""

    _P: str

    def _read_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _after_erasure(self) -> None:
        """Erase deleted bytes the database still holds elsewhere (a no-op by default)."""

    def add_negative(self, negative: NegativeRecord) -> None:
        """Store ``negative``; ``SubjectMissing`` when its subject does not exist (checked in
        the same transaction, so a negative never outlives an erasure that raced it)."""
        p = self._P
        with self._write_transaction() as conn:
            if conn.execute(f"SELECT 1 FROM subjects WHERE subject_id = {p}",
                            (negative.subject_id,)).fetchone() is None:
                raise SubjectMissing(negative.subject_id)
            conn.execute(
                f"INSERT INTO negatives ({NEGATIVE_COLUMNS}, embedding, chip) "
                f"VALUES ({', '.join([p] * 8)})",
                (negative.negative_id, negative.subject_id, negative.source, negative.source_id,
                 negative.model, negative.created_at, to_blob(np.asarray(negative.embedding)),
                 negative.chip_jpeg))

    def negatives(
        self, subject_ids: Sequence[str], *, with_embeddings: bool = True
    ) -> list[NegativeRecord]:
        """The negatives of these subjects, oldest first (per subject)."""
        ids = list(dict.fromkeys(subject_ids))
        if not ids:
            return []
        p = self._P
        cols = NEGATIVE_COLUMNS + (", embedding" if with_embeddings else "")
        out: list[NegativeRecord] = []
        with self._read_transaction() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = conn.execute(
                    f"SELECT {cols} FROM negatives WHERE subject_id IN "
                    f"({', '.join([p] * len(chunk))}) ORDER BY subject_id, id", tuple(chunk)
                ).fetchall()
                out += [negative_record(r, r[6] if with_embeddings else None) for r in rows]
        return out

    def negative(self, negative_id: str) -> NegativeRecord | None:
        """One negative, without its embedding, or None."""
        p = self._P
        with self._read_transaction() as conn:
            row = conn.execute(f"SELECT {NEGATIVE_COLUMNS} FROM negatives "
                               f"WHERE negative_id = {p}", (negative_id,)).fetchone()
        return None if row is None else negative_record(row)

    def delete_negative(self, subject_id: str, negative_id: str) -> bool:
        """Erase one negative of ``subject_id``; False when it has no such negative. Its
        tombstone is written in the same transaction (and to the journal after commit), so a
        restore of an older backup erases it again."""
        p = self._P
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        tombstone = Tombstone("negative", negative_id, at)
        with self._write_transaction() as conn:
            cur = conn.execute(
                f"DELETE FROM negatives WHERE subject_id = {p} AND negative_id = {p}",
                (subject_id, negative_id))
            removed = cur.rowcount > 0
            if removed:
                self._tombstone(conn, tombstone)  # type: ignore[attr-defined]
        if removed:
            self._journal([tombstone])  # type: ignore[attr-defined]
            self._after_erasure()
        return removed

    def negatives_to_reembed(
        self, model: str, after: int, limit: int
    ) -> list[tuple[int, str, bytes | None]]:
        """``(row id, negative id, chip or None)`` of up to ``limit`` negatives not of
        ``model``, row ids above ``after``, in row order (``faceserve reembed``)."""
        p = self._P
        with self._read_transaction() as conn:
            rows = conn.execute(
                f"SELECT id, negative_id, chip FROM negatives WHERE model <> {p} AND id > {p} "
                f"ORDER BY id LIMIT {p}", (model, int(after), int(limit))).fetchall()
        return [(int(r[0]), r[1], None if r[2] is None else bytes(r[2])) for r in rows]

    def set_negative_embeddings(self, updates: Sequence[tuple[str, np.ndarray]],
                                model: str) -> int:
        p = self._P
        changed = 0
        with self._write_transaction() as conn:
            for negative_id, vector in updates:
                cur = conn.execute(f"UPDATE negatives SET embedding = {p}, model = {p} "
                                   f"WHERE negative_id = {p}", (to_blob(vector), model,
                                                                negative_id))
                changed += max(cur.rowcount, 0)
        return changed

    def import_negatives(self, negatives: Sequence[NegativeRecord]) -> int:
        """Insert these negatives (ids and times as given) in one transaction, skipping ids
        already present and negatives of subjects the store does not hold; how many were
        added."""
        p = self._P
        added = 0
        with self._write_transaction() as conn:
            for n in negatives:
                if conn.execute(f"SELECT 1 FROM subjects WHERE subject_id = {p}",
                                (n.subject_id,)).fetchone() is None:
                    continue
                cur = conn.execute(
                    f"INSERT INTO negatives ({NEGATIVE_COLUMNS}, embedding, chip) "
                    f"VALUES ({', '.join([p] * 8)}) ON CONFLICT (negative_id) DO NOTHING",
                    (n.negative_id, n.subject_id, n.source, n.source_id, n.model, n.created_at,
                     to_blob(np.asarray(n.embedding)), n.chip_jpeg))
                added += max(cur.rowcount, 0)
        return added
