"""Galleries (namespaces) as the stores know them: created ones, and those data or keys imply.

A gallery is a prefix of stored subject ids (``service.security.keys``), so it needs no table
to exist: a key bound to it, its subjects or its pool faces are enough (that is how
``keys create --gallery`` and ``import-gallery`` make one). The ``galleries`` table (SQLite
migration 5, PostgreSQL 6) adds what nothing else records: a gallery created empty over HTTP,
and when a gallery was created. Listing is the union of the table, the galleries of unrevoked
keys, of pool faces, and of subjects; the last is a skip scan on the subjects' primary key
(one index probe per gallery, whatever the number of subjects).

The same SQL runs on SQLite and PostgreSQL (``?`` or ``%s`` through the store's ``_P``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

__all__ = ["GalleryCounts", "GalleryRegistrySql", "gallery_range"]

_SEP = "\x1f"
# Above every named gallery's stored ids ("\x1f<name>\x1f..." with names of [A-Za-z0-9_.-]).
_NAMED_END = _SEP + "\x7f"


def gallery_range(gallery: str) -> tuple[str, str | None]:
    """The stored subject ids ``[lo, hi)`` of one gallery ("" the default one)."""
    if not gallery:
        return "\x20", None
    return f"{_SEP}{gallery}{_SEP}", f"{_SEP}{gallery}\x20"


@dataclass(frozen=True)
class GalleryCounts:
    subjects: int
    faces: int
    unknown_faces: int  # in the unknown-face pool
    active_keys: int


class GalleryRegistrySql:
    """The registry's statements; mixed into the SQL stores (see the module docstring)."""

    _P: str

    def _reader(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _gallery_write(self) -> AbstractContextManager[Any]:
        """A transaction for the registry table (no change-log entry: not gallery content)."""
        raise NotImplementedError

    def add_gallery(self, name: str, created_at: str) -> bool:
        """Record a named gallery; False when the table already held it."""
        p = self._P
        with self._gallery_write() as conn:
            cur = conn.execute(
                f"INSERT INTO galleries (name, created_at) VALUES ({p}, {p}) "
                "ON CONFLICT (name) DO NOTHING", (name, created_at))
            return bool(cur.rowcount and cur.rowcount > 0)

    def remove_gallery(self, name: str) -> bool:
        with self._gallery_write() as conn:
            cur = conn.execute(f"DELETE FROM galleries WHERE name = {self._P}", (name,))
            return bool(cur.rowcount and cur.rowcount > 0)

    def list_galleries(self) -> dict[str, str | None]:
        """Every named gallery (see the module docstring) and when it was created, where
        known; sorted by name."""
        p = self._P
        found: dict[str, str | None] = {}
        with self._reader() as conn:
            for name, at in conn.execute("SELECT name, created_at FROM galleries"):
                found[str(name)] = str(at)
            for (name,) in conn.execute(
                    "SELECT DISTINCT gallery FROM api_keys WHERE revoked_at IS NULL "
                    "AND gallery <> ''"):
                found.setdefault(str(name), None)
            for (name,) in conn.execute(
                    "SELECT DISTINCT gallery FROM unknown_faces WHERE gallery <> ''"):
                found.setdefault(str(name), None)
            after = _SEP
            while True:  # skip scan: the first subject id past each gallery's run
                row = conn.execute(
                    f"SELECT min(subject_id) FROM subjects WHERE subject_id > {p} "
                    f"AND subject_id < {p}", (after, _NAMED_END)).fetchone()
                if row is None or row[0] is None:
                    break
                stored = str(row[0])
                end = stored.find(_SEP, 1)
                if end < 0:  # not a namespaced id (cannot be written through the API)
                    after = stored
                    continue
                name = stored[1:end]
                found.setdefault(name, None)
                after = f"{_SEP}{name}\x20"
        return dict(sorted(found.items()))

    def gallery_counts(self, name: str) -> GalleryCounts:
        """Subjects, faces, pool faces and unrevoked keys of one gallery ("" the default)."""
        p = self._P
        lo, hi = gallery_range(name)
        where = f"subject_id >= {p}" + (f" AND subject_id < {p}" if hi is not None else "")
        bounds: Sequence[str] = (lo, hi) if hi is not None else (lo,)
        with self._reader() as conn:
            subjects = conn.execute(f"SELECT count(*) FROM subjects WHERE {where}",
                                    bounds).fetchone()[0]
            faces = conn.execute(f"SELECT count(*) FROM faces WHERE {where}", bounds).fetchone()[0]
            pool = conn.execute(f"SELECT count(*) FROM unknown_faces WHERE gallery = {p}",
                                (name,)).fetchone()[0]
            keys = conn.execute(
                f"SELECT count(*) FROM api_keys WHERE gallery = {p} AND revoked_at IS NULL",
                (name,)).fetchone()[0]
        return GalleryCounts(int(subjects), int(faces), int(pool), int(keys))
