"""The storage interface of the gallery and the records it hands out.

The store is the source of truth; the FAISS index is a cache rebuilt from it. SQLite implements
this protocol now and PostgreSQL will later, so nothing here may assume a particular database:
ids are opaque strings outside, and the int64 row id exists only because FAISS needs integer ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "AddResult",
    "DeleteResult",
    "FaceChunk",
    "FaceRecord",
    "GalleryStore",
    "NewFace",
    "SchemaTooNew",
    "StoreError",
    "StoreState",
    "SubjectRecord",
]


class StoreError(RuntimeError):
    """The store cannot be used as it is (not a gallery, unreadable, wrong version)."""


class SchemaTooNew(StoreError):
    """Written by a newer faceserve: opening it could silently lose or corrupt its data."""


@dataclass
class FaceRecord:
    face_id: str
    subject_id: str
    bbox: tuple[int, int, int, int]
    landmarks: list[list[float]]
    detection_confidence: float
    model: str
    image_sha256: str
    created_at: str
    embedding: np.ndarray | None = None


@dataclass
class SubjectRecord:
    subject_id: str
    metadata: dict[str, Any]
    created_at: str
    face_count: int
    faces: list[FaceRecord] = field(default_factory=list)


@dataclass(frozen=True)
class NewFace:
    """A face to enroll; ids and timestamps are chosen by the caller, not the database."""

    face_id: str
    subject_id: str
    bbox: tuple[int, int, int, int]
    landmarks: list[list[float]]
    detection_confidence: float
    model: str
    image_sha256: str
    created_at: str
    embedding: np.ndarray
    chip_jpeg: bytes | None = None


@dataclass(frozen=True)
class AddResult:
    record: FaceRecord
    row_id: int  # the FAISS id
    created: bool  # False: this subject already had a face from the same image bytes
    subject_created: bool
    change_id: int  # the store's last change id after the transaction


@dataclass(frozen=True)
class DeleteResult:
    row_ids: list[int]  # FAISS ids of the faces removed
    subject_existed: bool
    change_id: int


@dataclass(frozen=True)
class FaceChunk:
    """A slice of the faces table in row-id order, for building the index without loading it all."""

    row_ids: np.ndarray  # (n,) int64
    face_ids: list[str]
    subject_ids: list[str]
    embeddings: np.ndarray | None  # (n, dim) float32, when asked for


@dataclass(frozen=True)
class StoreState:
    """Totals read in one transaction: what an index snapshot must agree with."""

    face_count: int
    subject_count: int
    last_change_id: int
    model_counts: dict[str, int]


class GalleryStore(Protocol):
    """Durable subjects and faces. Every write is one transaction that also appends to the change
    log (an 'add' or 'delete' per face row), so the last change id identifies the store's state.
    Writes may be called from one thread at a time; reads from any number of threads."""

    def state(self) -> StoreState: ...

    def add_face(self, face: NewFace, metadata: dict[str, Any] | None) -> AddResult:
        """Insert ``face`` (creating its subject), or return the existing face of the same subject
        and image bytes. ``metadata``, when given, replaces the subject's metadata."""
        ...

    def delete_subject(self, subject_id: str) -> DeleteResult:
        """Remove the subject and all its faces; erased, not just unlinked, when it returns."""
        ...

    def delete_face(self, face_id: str) -> DeleteResult:
        """Remove one face (its subject stays, possibly with no faces)."""
        ...

    def get_face(self, face_id: str, *, with_embedding: bool = True) -> FaceRecord | None: ...

    def get_chip(self, face_id: str) -> bytes | None: ...

    def get_subject(self, subject_id: str, *, with_faces: bool = True) -> SubjectRecord | None:
        """The subject with its faces (without embeddings), or None."""
        ...

    def subject_faces(self, subject_id: str, *, with_embeddings: bool = True) -> list[FaceRecord]:
        ...

    def list_subjects(self, after: str | None, limit: int) -> list[SubjectRecord]:
        """Up to ``limit`` subjects with ids greater than ``after``, in id order (faces empty)."""
        ...

    def scan_faces(self, chunk_size: int, *, with_embeddings: bool) -> Iterator[FaceChunk]:
        """Every face in row-id order, one consistent read, ``chunk_size`` rows at a time."""
        ...

    def close(self) -> None: ...
