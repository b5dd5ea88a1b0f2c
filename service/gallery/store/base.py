"""The storage interface of the gallery and the records it hands out.

The store is the source of truth; the FAISS index is a cache rebuilt from it. SQLite implements
this protocol and so does PostgreSQL, so nothing here may assume a particular database: ids are
opaque strings outside, and the int64 row id exists only because FAISS needs integer ids.

A store that several processes share (``shared``) is followed through its change log: each
process keeps its own index and applies the log's adds and deletes in change-id order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "AddResult",
    "AuditRecord",
    "Change",
    "ChangeBatch",
    "ChangeListener",
    "DeleteResult",
    "FaceChunk",
    "FaceMoveResult",
    "FaceRecord",
    "GalleryStore",
    "ImportBatchResult",
    "KeyRecord",
    "LogPosition",
    "MoveResult",
    "NewAuditEvent",
    "NewFace",
    "SchemaTooNew",
    "SecurityStore",
    "SharedGalleryStore",
    "StoreError",
    "StoreSnapshot",
    "StoreState",
    "SubjectRecord",
    "Tombstone",
    "TombstoneKind",
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
    metadata_replaced: bool = False  # an existing subject's metadata was overwritten


@dataclass(frozen=True)
class DeleteResult:
    row_ids: list[int]  # FAISS ids of the faces removed
    subject_existed: bool
    change_id: int
    # ``delete_face``: the face was its subject's last, and the subject went with it (a
    # subject never stays behind without faces: it could be listed but never found).
    subject_deleted: bool = False


@dataclass(frozen=True)
class MoveResult:
    """What ``rename_subject`` or ``merge_subjects`` did; nothing unless ``status`` is "ok".

    A moved face keeps its face id, times, embedding and chip, but is a new row (a new FAISS
    id): the transaction logs a "delete" of each old row and an "add" of each new one, so
    every replica's index follows a move as it follows enrollments and deletions."""

    status: Literal["ok", "no_source", "no_target", "target_exists", "same"]
    removed_row_ids: list[int] = field(default_factory=list)
    added_row_ids: list[int] = field(default_factory=list)
    faces_moved: int = 0
    # Merges: faces of the source whose image the target already had (the same photo
    # enrolled for both); erased rather than moved (a subject holds one face per image).
    faces_dropped: int = 0
    change_id: int = 0


@dataclass(frozen=True)
class FaceMoveResult:
    """One face given to another subject (``move_face``): deleted and inserted again in one
    transaction, like the faces of a merge (see ``MoveResult``)."""

    record: FaceRecord | None  # the face as now stored; None: no such face
    from_subject: str | None  # its subject before the move
    subject_created: bool = False
    # The face was its subject's last: the subject went with it (and its negatives).
    subject_deleted: bool = False
    change_id: int = 0
    # The target subject already has a face of the same image (nothing was changed): its id
    conflict: str | None = None


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


@dataclass(frozen=True)
class ImportBatchResult:
    """What one ``import_batch`` transaction added (rows already present are skipped)."""

    subjects_added: int
    faces_added: int
    change_id: int  # the store's last change id after the transaction


class StoreSnapshot(Protocol):
    """Reads that all see one state of the store, page by page (``faceserve export-gallery``):
    a whole gallery can be streamed out consistently while others write, holding one page in
    memory at a time."""

    def state(self) -> StoreState: ...

    def last_audit_id(self) -> int:
        """The id of the last audit event (0 when none): where the audit log stood."""
        ...

    def chipless_models(self) -> dict[str, int]:
        """Faces without a stored chip, per model (they cannot be re-embedded)."""
        ...

    def subject_pages(self, size: int) -> Iterator[list[SubjectRecord]]:
        """Every subject in id order (``faces`` empty, ``face_count`` set), ``size`` at a time."""
        ...

    def face_pages(self, size: int) -> Iterator[list[NewFace]]:
        """Every face in row-id order with its embedding and chip, ``size`` at a time."""
        ...


@dataclass(frozen=True)
class Change:
    """One change-log entry, as a process following the log applies it to its index."""

    change_id: int
    op: str  # "add" or "delete"
    row_id: int  # the FAISS id
    # Adds only, and only while the face still exists: a face deleted since has a later
    # "delete" entry, so there is nothing to add. Rows are never updated after insertion,
    # except by `faceserve reembed`, which runs while no process follows the log.
    face_id: str | None = None
    subject_id: str | None = None
    model: str | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class ChangeBatch:
    """Change-log entries after some id, in id order, and the subject count, in one read."""

    changes: list[Change]
    subject_count: int
    # Entries up to this id may have been pruned (read in the same transaction): a follower
    # that has applied less than it cannot trust the batch and must rebuild from the store.
    pruned_through: int = 0


@dataclass(frozen=True)
class LogPosition:
    """How far a follower that has applied everything up to ``after`` is behind."""

    head: int  # the last committed change id
    behind: int  # entries after ``after``
    oldest_pending_s: float  # age of the oldest of them; 0.0 when there are none


class GalleryStore(Protocol):
    """Durable subjects and faces. Every write is one transaction that also appends to the change
    log (an 'add' or 'delete' per face row), so the last change id identifies the store's state.
    Writes may be called from one thread at a time; reads from any number of threads.

    Change ids increase in commit order: a reader that has seen change ``n`` committed will never
    later find a change committed with an id below ``n`` (followers read the log by id)."""

    shared: bool  # other processes may write to it: follow its change log, keep no snapshot
    location: str  # for messages (never holds a password)

    def state(self) -> StoreState: ...

    def add_face(
        self, face: NewFace, metadata: dict[str, Any] | None, replace_metadata: bool = True
    ) -> AddResult:
        """Insert ``face`` (creating its subject), or return the existing face of the same subject
        and image bytes. ``metadata`` is a new subject's; it replaces an existing subject's
        metadata only with ``replace_metadata``."""
        ...

    def update_metadata(self, subject_id: str, metadata: dict[str, Any]) -> bool:
        """Replace the subject's metadata (the old value erased as by a deletion); False when
        the subject does not exist."""
        ...

    def rename_subject(
        self, subject_id: str, new_id: str, metadata: dict[str, Any] | None = None
    ) -> MoveResult:
        """Give the subject and all its faces the id ``new_id``, in one transaction (status
        ``target_exists`` when taken, ``no_source`` when the subject does not exist);
        ``metadata``, when given, replaces its metadata in the same transaction."""
        ...

    def merge_subjects(self, source: str, target: str) -> MoveResult:
        """Move every face of ``source`` to ``target`` (both must exist) and remove ``source``
        with its metadata, in one transaction; ``target`` keeps its metadata."""
        ...

    def delete_subject(self, subject_id: str) -> DeleteResult:
        """Remove the subject and all its faces; erased, not just unlinked, when it returns."""
        ...

    def delete_face(self, face_id: str) -> DeleteResult:
        """Remove one face; its subject too when it was the last (``subject_deleted``)."""
        ...

    def move_face(self, face_id: str, subject_id: str, created_at: str) -> FaceMoveResult:
        """Give the face to ``subject_id`` (created, with ``created_at`` and no metadata, when
        new), atomically; its old subject goes when it was its last face."""
        ...

    def get_face(self, face_id: str, *, with_embedding: bool = True) -> FaceRecord | None: ...

    def get_chip(self, face_id: str) -> bytes | None: ...

    def get_subject(self, subject_id: str, *, with_faces: bool = True) -> SubjectRecord | None:
        """The subject with its faces (without embeddings), or None."""
        ...

    def subject_faces(self, subject_id: str, *, with_embeddings: bool = True) -> list[FaceRecord]:
        ...

    def face_page(
        self, subject_id: str, after_row: int, limit: int
    ) -> list[tuple[int, FaceRecord]]:
        """Up to ``limit`` of the subject's faces with row ids above ``after_row``, oldest
        first, each with its row id (the keyset of the next page); no embeddings."""
        ...

    def list_subjects(self, after: str | None, limit: int) -> list[SubjectRecord]:
        """Up to ``limit`` subjects with ids greater than ``after``, in id order (faces empty)."""
        ...

    def scan_faces(self, chunk_size: int, *, with_embeddings: bool) -> Iterator[FaceChunk]:
        """Every face in row-id order, one consistent read, ``chunk_size`` rows at a time."""
        ...

    def changes_since(self, after: int, limit: int) -> ChangeBatch:
        """Up to ``limit`` change-log entries with ids above ``after``, in id order."""
        ...

    def log_position(self, after: int) -> LogPosition: ...

    def faces_to_reembed(
        self, model: str, after: int, limit: int
    ) -> list[tuple[int, str, bytes | None]]:
        """``(row id, face id, chip JPEG or None)`` of up to ``limit`` faces whose model is not
        ``model``, with row ids above ``after``, in row-id order."""
        ...

    def faces_without_chips(self, model: str) -> list[str]:
        """Face ids, in row-id order, of the faces not of ``model`` that have no stored chip."""
        ...

    def set_embeddings(self, updates: Sequence[tuple[int, np.ndarray]], model: str) -> int:
        """Replace these rows' embeddings and model label in one transaction (re-embedding
        only, with the gallery held exclusively); the number of rows changed."""
        ...

    def snapshot(
        self, lo: str = "", hi: str | None = None
    ) -> AbstractContextManager[StoreSnapshot]:
        """Paged reads of one consistent state (one read transaction for the block), of the
        subjects with ids in ``[lo, hi)`` and their faces (all of them by default)."""
        ...

    def known_face_ids(self, face_ids: Sequence[str]) -> set[str]:
        """Those of ``face_ids`` that the store holds."""
        ...

    def import_batch(
        self, subjects: Sequence[SubjectRecord], faces: Sequence[NewFace]
    ) -> ImportBatchResult:
        """Insert these subjects (metadata and creation time as given) and faces (ids and
        times as given) in one transaction, with an 'add' change per face, skipping any subject
        id, face id or (subject, image) already present: re-running a batch adds nothing."""
        ...

    def close(self) -> None: ...


class ChangeListener(Protocol):
    """Wakes a follower when another process commits a change (a hint: the log is the truth)."""

    def wait(self, timeout: float) -> bool:
        """True when woken by a change, False after ``timeout`` seconds without one."""
        ...

    def close(self) -> None: ...


class SharedGalleryStore(GalleryStore, Protocol):
    """A store several processes share; each opens a listener to follow it promptly."""

    def open_listener(self) -> ChangeListener: ...


# ---------------------------------------------------------------- API keys and audit (issue 7)


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: never the token itself, only its SHA-256 (hex)."""

    key_id: str  # public id, for listing and revoking
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    gallery: str  # "" is the default gallery
    created_at: str
    revoked_at: str | None = None


TombstoneKind = Literal["subject", "face", "unknown_face", "key", "negative"]


@dataclass(frozen=True)
class Tombstone:
    """Something that happened and must not be undone by restoring an older backup: a subject,
    face or negative example ("not this person") erased, an API key revoked
    (``service.gallery.backup``).

    ``ref`` identifies it without personal data: a subject by the random erasure token it was
    given at creation (not its id, which may be a name), a face (or a face of the unknown-face
    pool, ``unknown_face``) by its random face id, a negative by its random negative id, a key
    by its key id. Once the subject is
    erased, its token links to nothing but the copies of it in older backups, which is
    exactly what a restore must find."""

    kind: TombstoneKind
    ref: str
    at: str  # when it happened (ISO 8601 UTC); a re-applied revocation keeps this time


@dataclass(frozen=True)
class NewAuditEvent:
    """Who did what, when: never an image, embedding, chip or metadata."""

    at: str
    key_id: str | None  # None when the server runs without keys
    key_name: str
    action: str
    gallery: str = ""
    subject_id: str | None = None  # the client's id (not the internal namespaced one)
    face_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord(NewAuditEvent):
    id: int = 0


class SecurityStore(Protocol):
    """API keys and the audit log, in the gallery's database (tables ``api_keys``, ``audit``).

    Keys are never deleted, only revoked, so "keys were ever configured" cannot be undone by
    revoking them all."""

    def add_key(self, key: KeyRecord) -> None: ...

    def find_key(self, key_hash: str) -> KeyRecord | None:
        """The key (revoked or not) whose token hashes to ``key_hash``."""
        ...

    def list_keys(self, gallery: str | None = None) -> list[KeyRecord]:
        """Every key in creation order, or those of one gallery."""
        ...

    def revoke_key(self, key_id: str, at: str, gallery: str | None = None) -> KeyRecord | None:
        """Revoke (idempotent); the key as it now is, or None if unknown (in that gallery)."""
        ...

    def key_count(self, *, active_only: bool) -> int: ...

    # Galleries (service/gallery/store/galleries.py).

    def add_gallery(self, name: str, created_at: str) -> bool:
        """Record a named gallery; False when it was recorded already."""
        ...

    def remove_gallery(self, name: str) -> bool: ...

    def list_galleries(self) -> dict[str, str | None]:
        """Every named gallery (recorded, or implied by keys, subjects or pool faces) and
        when it was created where known, sorted by name."""
        ...

    def gallery_counts(self, name: str) -> Any:
        """A ``GalleryCounts`` of one gallery ("" the default one)."""
        ...

    def add_audit(self, event: NewAuditEvent) -> int:
        """Append an event (its own transaction, committed on return); its id."""
        ...

    def list_audit(
        self, gallery: str | None, after: int, limit: int, action: str | None = None,
        *, per_gallery: bool = False,
    ) -> list[AuditRecord]:
        """Events with ids above ``after`` in id order (one gallery, or all when None).

        ``per_gallery`` (with a gallery): ids are the events' positions in that gallery's own
        log (1, 2, 3 ...), so a tenant cannot count other galleries' events in the gaps of
        the global sequence; ``after`` is such a position too."""
        ...
