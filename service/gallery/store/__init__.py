"""Durable storage of the gallery behind the ``GalleryStore`` protocol: SQLite or PostgreSQL.

``open_store`` is the one place that picks the backend: SQLite in the data directory by default,
PostgreSQL when a ``postgresql://`` database URL is given. Everything else talks to the protocol
and asks the store what it needs to know (``shared``: followed through its change log by several
processes), never which database it is.
"""

from __future__ import annotations

from pathlib import Path

from service.gallery.store.base import (
    AddResult,
    Change,
    ChangeBatch,
    ChangeListener,
    DeleteResult,
    FaceChunk,
    FaceRecord,
    GalleryStore,
    LogPosition,
    NewFace,
    SchemaTooNew,
    SharedGalleryStore,
    StoreError,
    StoreState,
    SubjectRecord,
)
from service.gallery.store.sqlite import SqliteStore

__all__ = [
    "POSTGRES_SCHEMES",
    "AddResult",
    "Change",
    "ChangeBatch",
    "ChangeListener",
    "DeleteResult",
    "FaceChunk",
    "FaceRecord",
    "GalleryStore",
    "LogPosition",
    "NewFace",
    "SchemaTooNew",
    "SharedGalleryStore",
    "SqliteStore",
    "StoreError",
    "StoreState",
    "SubjectRecord",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(
    data_dir: Path, database_url: str | None = None, *, exclusive: bool = False
) -> GalleryStore:
    """The gallery store: ``<data_dir>/gallery.sqlite3``, or the PostgreSQL database at
    ``database_url`` (migrated to the current schema version on open).

    ``exclusive`` (PostgreSQL): refuse unless no other process has the gallery open, and keep
    every other process out until closed. The SQLite gallery is kept to one process by the
    data directory's lock instead (``service.gallery.gallery.lock_data_dir``).
    """
    if not database_url:
        return SqliteStore.open(data_dir)
    if database_url.startswith(POSTGRES_SCHEMES):
        from service.gallery.store.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore.open(database_url, exclusive=exclusive)
    scheme = database_url.split("://", 1)[0] if "://" in database_url else database_url[:20]
    raise StoreError(
        f"unsupported database URL scheme {scheme!r}: use postgresql://user:password@host/db, "
        "or leave database_url empty for the SQLite gallery in the data directory"
    )
