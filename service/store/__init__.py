"""Durable storage of the gallery behind the ``GalleryStore`` protocol (SQLite today)."""

from service.store.base import (
    AddResult,
    DeleteResult,
    FaceChunk,
    FaceRecord,
    GalleryStore,
    NewFace,
    SchemaTooNew,
    StoreError,
    StoreState,
    SubjectRecord,
)
from service.store.sqlite import SqliteStore

__all__ = [
    "AddResult",
    "DeleteResult",
    "FaceChunk",
    "FaceRecord",
    "GalleryStore",
    "NewFace",
    "SchemaTooNew",
    "SqliteStore",
    "StoreError",
    "StoreState",
    "SubjectRecord",
]
