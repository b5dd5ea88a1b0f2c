"""The gallery: durable enrolled faces (the store) and fast search over them (the FAISS index).

The store is the truth and the index a cache of it. An index snapshot is used at start-up only if
it was built from exactly the store's current state (same last change id, face count, model and
index kind, same ids); otherwise the index is rebuilt from the store, so a crash at any moment
costs start-up time, never data.

Consistency. Writes are serialised by one mutex. A write commits to the store first (so an
acknowledged enrollment is durable), then updates the index and the id map under the exclusive
side of a readers-writer lock (so it is searchable when acknowledged, and a search sees a
deletion either entirely or not at all). Searches and store reads take the shared side and run
in parallel. Deletions also remove the on-disk snapshot, which still holds the erased vectors;
the next ``close`` writes a fresh one.

One process per data directory: an advisory lock refuses a second one, whose index would
silently diverge from the first's.

Shared stores (PostgreSQL, ``database_url``): several processes (replicas) write to one store,
each with its own index. The index then follows the store's change log in change-id order
(``catch_up``, driven by ``service.gallery.replication.Replicator``), and this process's own writes
apply to the index through the same log: after its commit a write catches up to (at least) its
own change, so it is searchable here when acknowledged and no other replica's earlier change is
skipped. A replica keeps its own snapshot in its data directory, tagged with the change id it
reflects; at start-up it loads it (whatever the store's state), drops the faces deleted since,
and replays the log from that change id (``_load_replica_snapshot``), unless the log has been
pruned past it (``service.gallery.replication``): then it rebuilds from the store.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.impostors import GalleryImpostors, GalleryView
from service.gallery.index import FaceIndex, SnapshotInvalid, remove_snapshot
from service.gallery.private import private_dir
from service.gallery.replication import CATCH_UP_BATCH, Replicator
from service.gallery.rwlock import RWLock
from service.gallery.search_policy import choose_index_kind
from service.gallery.store import open_store
from service.gallery.store.base import (
    ChangeBatch,
    DeleteResult,
    FaceMoveResult,
    FaceRecord,
    GalleryStore,
    LogPosition,
    MoveResult,
    NewFace,
    StoreState,
    SubjectRecord,
)
from service.gallery.store.sqlite import FILENAME as SQLITE_FILENAME

__all__ = [
    "SNAPSHOT_NAME",
    "FaceRecord",
    "Gallery",
    "GalleryClosed",
    "GalleryError",
    "GalleryLocked",
    "Hit",
    "ModelMismatch",
    "SubjectRecord",
    "lock_data_dir",
    "unlock_data_dir",
]

log = logging.getLogger("faceserve.gallery")

SNAPSHOT_NAME = "index.faiss"
LOCK_NAME = "gallery.lock"
SCAN_CHUNK = 8192
INDEX_KINDS = ("flat", "pq", "hnsw", "auto")
_CURSOR_PREFIX = "s1."
_NORM_TOLERANCE = 1e-3


class GalleryError(RuntimeError):
    """The gallery cannot serve (wrong model, already open elsewhere, closed, out of sync)."""


class ModelMismatch(GalleryError):
    """The store holds embeddings of another model: similarities across models are meaningless."""


class GalleryLocked(GalleryError):
    """Another process has this data directory open."""


class GalleryClosed(GalleryError):
    """Used after ``close()``."""


@dataclass(frozen=True)
class Hit:
    face_id: str
    subject_id: str
    similarity: float


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode_cursor(subject_id: str) -> str:
    raw = base64.urlsafe_b64encode(subject_id.encode("utf-8")).decode("ascii")
    return _CURSOR_PREFIX + raw.rstrip("=")


def _decode_cursor(cursor: str) -> str:
    """The subject id after which a page starts; ``ValueError`` for anything we did not issue."""
    if not cursor.startswith(_CURSOR_PREFIX):
        raise ValueError("invalid cursor")
    raw = cursor[len(_CURSOR_PREFIX):]
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if _encode_cursor(data.decode("utf-8")) != cursor:  # one spelling per position
            raise ValueError("invalid cursor")
        return data.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None


def lock_data_dir(data_dir: Path) -> int:
    """Hold the data directory for this process (``GalleryLocked`` if another holds it); the
    descriptor to pass to :func:`unlock_data_dir`."""
    fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GalleryLocked(
            f"the gallery in {data_dir} is already open in another process: stop the server "
            "(`faceserve serve`) or the other faceserve command using this data directory "
            "first, then run this again (one faceserve process per data directory)"
        ) from None
    return fd


def unlock_data_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _replica_id(data_dir: Path) -> str:
    """This data directory's replica name in a shared store, made once and kept."""
    path = data_dir / "replica-id"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        name = f"{os.uname().nodename}-{uuid.uuid4().hex[:12]}"
        path.write_text(name + "\n", encoding="utf-8")
        return name


class Gallery:
    """Enroll, search, list and erase faces; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: GalleryStore,
        *,
        model_version: str,
        dim: int = 128,
        index_kind: str = "flat",
        store_chips: bool = True,
        snapshot_path: Path | None = None,
        snapshot_every: int | None = None,
        location: str | None = None,
        partition: Callable[[str], str] | None = None,
        replica_id: str | None = None,
    ) -> None:
        """Wrap an open ``store`` (this object closes it). Prefer ``Gallery.open``.

        ``partition`` maps a stored subject id to its tenant (see ``view``); ``replica_id``
        names this replica's heartbeat in a shared store (see ``heartbeat``)."""
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {INDEX_KINDS}, not {index_kind!r}")
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be positive, not {snapshot_every}")
        self._store = store
        self.model_version = model_version
        self.dim = dim
        self.store_chips = store_chips
        self._snapshot_path = snapshot_path
        self._snapshot_every = snapshot_every
        self._write_mutex = threading.Lock()
        self._rw = RWLock()
        self._closed = False
        self._broken: BaseException | None = None
        self._lock_fd: int | None = None
        self._changes_since_snapshot = 0
        self._shared = bool(getattr(store, "shared", False))
        self._replicator: Any = None  # service.gallery.replication.Replicator, when following
        location = location or getattr(store, "location", "the store")
        self._location = location
        self.replica_id = replica_id
        self.rebuilds = 0  # times the log was found pruned past this replica (rebuilt then)
        if self._shared and replica_id is not None:
            # Hold the log from its pruned point until this replica has loaded and caught up,
            # so no other replica prunes what it is about to replay.
            store.record_applied(replica_id, store.log_pruned_through())  # type: ignore[attr-defined]

        state = store.state()
        others = {m: n for m, n in state.model_counts.items() if m != model_version}
        if others:
            held = ", ".join(f"{n} faces of model {m!r}" for m, n in sorted(others.items()))
            mixed = len(state.model_counts) > 1
            raise ModelMismatch(
                f"{location} holds {held}, but this service computes {model_version!r} "
                "embeddings, which cannot be compared with them, so it refuses to start. "
                + ("The gallery holds several models' embeddings, as an interrupted "
                   "`faceserve reembed` leaves it; run it again to finish. " if mixed else "")
                + "With the service stopped, `faceserve reembed --model <this model>` "
                "re-computes every embedding from the stored face chips; or serve this "
                "gallery with the model that built it, or use another data directory."
            )
        kind = choose_index_kind(state.face_count) if index_kind == "auto" else index_kind
        self._subjects = state.subject_count
        self._last_change_id = state.last_change_id
        self._faces: dict[int, tuple[str, str]] = {}
        self._impostors = GalleryImpostors(dim, partition)
        self._index, self.index_source = self._load_index(state, kind)
        self._sample_impostors()
        if self._shared and self.index_source == "snapshot":
            self._catch_up_locked(None)  # ready means caught up, as after a rebuild
        if self._shared:
            self.heartbeat()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        model_version: str,
        dim: int = 128,
        index_kind: str = "flat",
        store_chips: bool = True,
        *,
        snapshot_every: int | None = None,
        database_url: str | None = None,
        follow: bool = True,
        partition: Callable[[str], str] | None = None,
    ) -> Gallery:
        """The gallery in ``data_dir`` (created if new): SQLite store plus index snapshot; or,
        with ``database_url``, the shared PostgreSQL store, followed by a background
        ``Replicator`` unless ``follow`` is False (then only ``catch_up`` calls apply others'
        changes)."""
        data_dir = Path(data_dir)
        private_dir(data_dir, tighten_existing=(data_dir / SQLITE_FILENAME).exists())
        lock_fd = lock_data_dir(data_dir)
        try:
            store = open_store(data_dir, database_url)
        except BaseException:
            unlock_data_dir(lock_fd)
            raise
        try:
            gallery = cls(
                store,
                model_version=model_version,
                dim=dim,
                index_kind=index_kind,
                store_chips=store_chips,
                snapshot_path=data_dir / SNAPSHOT_NAME,
                snapshot_every=snapshot_every,
                location=store.location,
                partition=partition,
                replica_id=_replica_id(data_dir) if store.shared else None,
            )
        except BaseException:
            store.close()
            unlock_data_dir(lock_fd)
            raise
        gallery._lock_fd = lock_fd
        if store.shared and follow:
            gallery._replicator = Replicator(gallery, store.open_listener)  # type: ignore[attr-defined]
            gallery._replicator.start()
        return gallery

    # ------------------------------------------------------------ start-up

    def _load_index(self, state: StoreState, kind: str) -> tuple[FaceIndex, str]:
        if self._snapshot_path is not None and self._shared:
            try:
                return self._load_replica_snapshot(state, kind), "snapshot"
            except SnapshotInvalid as exc:
                log.info("index snapshot not used (%s); rebuilding from the store", exc)
                self._faces.clear()
                self._impostors.clear()
                self._last_change_id = state.last_change_id
        elif self._snapshot_path is not None:
            try:
                index = FaceIndex.load_snapshot(
                    self._snapshot_path,
                    dim=self.dim,
                    kind=kind,
                    model=self.model_version,
                    count=state.face_count,
                    last_change_id=state.last_change_id,
                )
                for chunk in self._store.scan_faces(SCAN_CHUNK, with_embeddings=False):
                    self._remember(chunk.row_ids, chunk.face_ids, chunk.subject_ids)
                if not np.array_equal(index.ids(), np.fromiter(self._faces, dtype=np.int64)):
                    raise SnapshotInvalid("its ids differ from the store's")
                log.info("index loaded from snapshot: %d faces, %s", index.ntotal, kind)
                return index, "snapshot"
            except SnapshotInvalid as exc:
                log.info("index snapshot not used (%s); rebuilding from the store", exc)
                self._faces.clear()
                self._impostors.clear()
        return self._rebuild_index(kind), "store"

    def _rebuild_index(self, kind: str) -> FaceIndex:
        """The index of every stored face (``_faces`` and impostors filled on the way), and a
        snapshot of it tagged with ``_last_change_id``, which the caller read before."""
        index = FaceIndex(self.dim, kind)
        for chunk in self._store.scan_faces(SCAN_CHUNK, with_embeddings=True):
            vectors = chunk.embeddings
            if vectors is None or vectors.shape[1] != self.dim:
                got = None if vectors is None else vectors.shape[1]
                raise GalleryError(f"stored embeddings have {got} dimensions, not {self.dim}")
            index.add(chunk.row_ids, vectors)
            self._remember(chunk.row_ids, chunk.face_ids, chunk.subject_ids)
            if self._impostors.wants_vectors():
                for row, vector, subject in zip(chunk.row_ids.tolist(), vectors,
                                                chunk.subject_ids, strict=True):
                    self._impostors.sample(row, vector, subject)
        log.info("index rebuilt from the store: %d faces, %s", index.ntotal, kind)
        if self._snapshot_path is not None and index.ntotal:
            # A rebuild can take minutes (HNSW); do not pay it again after a crash.
            try:
                index.write_snapshot(
                    self._snapshot_path, model=self.model_version,
                    last_change_id=self._last_change_id,
                )
            except OSError as exc:
                log.warning("could not write the index snapshot: %s", exc)
        return index

    def _load_replica_snapshot(self, state: StoreState, kind: str) -> FaceIndex:
        """A replica's snapshot from any earlier change id S, made consistent with the log:
        faces of the index no longer stored (deleted after S) leave it now; faces stored but not
        in it (added after S) are left out of the id map, so replaying the log from S adds
        them. The caller catches up before serving."""
        assert self._snapshot_path is not None
        index = FaceIndex.load_snapshot(
            self._snapshot_path, dim=self.dim, kind=kind, model=self.model_version,
            count=None, last_change_id=None,
        )
        since = int(index.snapshot_change_id or 0)
        if since > state.last_change_id:
            raise SnapshotInvalid(f"it reflects change {since}, beyond the store's last change "
                                  f"{state.last_change_id} (a restored database?)")
        pruned = int(getattr(self._store, "log_pruned_through", lambda: 0)())
        if since < pruned:
            raise SnapshotInvalid(f"it reflects change {since}, but the change log was pruned "
                                  f"up to change {pruned}")
        indexed = index.ids()
        for chunk in self._store.scan_faces(SCAN_CHUNK, with_embeddings=False):
            keep = np.isin(chunk.row_ids, indexed)
            self._remember(chunk.row_ids[keep], [f for f, k in zip(chunk.face_ids, keep,
                                                                   strict=True) if k],
                           [s for s, k in zip(chunk.subject_ids, keep, strict=True) if k])
        gone = indexed[~np.isin(indexed, np.fromiter(self._faces, dtype=np.int64))]
        if len(gone):
            index.remove(gone)
            remove_snapshot(self._snapshot_path)  # it holds their vectors; close writes anew
        self._last_change_id = since
        log.info("index loaded from snapshot at change %d: %d faces (%d deleted since), %s; "
                 "catching up to change %d", since, index.ntotal, len(gone), kind,
                 state.last_change_id)
        return index

    def _remember(self, row_ids: np.ndarray, face_ids: list[str], subject_ids: list[str]) -> None:
        subjects = [sys.intern(s) for s in subject_ids]  # many faces share a subject
        rows = row_ids.tolist()
        self._faces.update(zip(rows, zip(face_ids, subjects, strict=True), strict=True))
        for subject in subjects:
            self._impostors.count(subject)

    def _sample_impostors(self) -> None:
        """Fill each tenant's impostor sample from the store's first faces (in row order, so
        replicas agree); stops reading as soon as every sample is full."""
        if not self._impostors.wants_vectors():
            return
        for chunk in self._store.scan_faces(SCAN_CHUNK, with_embeddings=True):
            if chunk.embeddings is None:
                return
            for row, vector, subject in zip(chunk.row_ids.tolist(), chunk.embeddings,
                                            chunk.subject_ids, strict=True):
                if row in self._faces:  # a replica's later faces are sampled as they are added
                    self._impostors.sample(row, vector, subject)
            if not self._impostors.wants_vectors():
                return

    def view(self, partition: str = "") -> GalleryView:
        """How many faces the tenant ``partition`` has and how alike its different subjects
        are: what an identify threshold that holds a false positive rate is computed from."""
        with self._rw.read():
            return self._impostors.view(partition)

    def partition_of(self, subject_id: str) -> str:
        return self._impostors.partition_of(subject_id)

    # ------------------------------------------------------------ properties

    @property
    def store(self) -> GalleryStore:
        """The store, for data kept beside the gallery (the unknown-face pool)."""
        return self._store

    @property
    def size(self) -> int:
        return len(self._faces)

    @property
    def subject_count(self) -> int:
        return self._subjects

    @property
    def index_kind(self) -> str:
        return self._index.kind

    @property
    def last_change_id(self) -> int:
        """The index reflects every store change up to this id."""
        return self._last_change_id

    @property
    def shared(self) -> bool:
        """Other processes write to this gallery's store (see the module docstring)."""
        return self._shared

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def replicator(self) -> Any:
        """The ``Replicator`` following the store, or None (SQLite, or ``follow=False``)."""
        return self._replicator

    # ------------------------------------------------------------ writes

    def _check_writable(self) -> None:
        if self._closed:
            raise GalleryClosed("the gallery is closed")
        if self._broken is not None:
            raise GalleryError(
                "the search index fell out of step with the store "
                f"({type(self._broken).__name__}: {self._broken}); restart to rebuild it"
            )

    def _mutate_index(self, change: Callable[[], None], change_id: int, changes: int) -> None:
        """Apply an already-committed store change to the index, atomically for searches."""
        try:
            with self._rw.write():
                change()
                self._last_change_id = change_id
        except BaseException as exc:
            self._broken = exc
            raise GalleryError("the change was stored but the index could not follow it; "
                               "restart to rebuild the index") from exc
        self._changes_since_snapshot += changes
        if self._snapshot_every and self._changes_since_snapshot >= self._snapshot_every:
            self._write_snapshot()

    def _vector(self, embedding: np.ndarray) -> np.ndarray:
        v = np.asarray(embedding, dtype=np.float32)
        if v.shape != (self.dim,):
            raise ValueError(f"embedding must have shape ({self.dim},), not {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("embedding has non-finite values")
        norm = float(np.linalg.norm(v))
        if abs(norm - 1.0) > _NORM_TOLERANCE:
            raise ValueError(f"embedding must be L2-normalised (norm {norm:.4f})")
        return v

    def enroll(
        self,
        subject_id: str,
        embedding: np.ndarray,
        *,
        bbox: Sequence[int],
        landmarks: Sequence[Sequence[float]] | np.ndarray,
        detection_confidence: float,
        image_sha256: str,
        chip_jpeg: bytes | None = None,
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = True,
    ) -> tuple[FaceRecord, bool]:
        """Store a face (durable and searchable on return); ``created`` is False when this subject
        already has a face from the same image bytes, which is returned unchanged. ``metadata``
        is a new subject's, and replaces an existing subject's with ``replace_metadata``."""
        record, created, _ = self.add(
            subject_id, embedding, bbox=bbox, landmarks=landmarks,
            detection_confidence=detection_confidence, image_sha256=image_sha256,
            chip_jpeg=chip_jpeg, metadata=metadata, replace_metadata=replace_metadata,
        )
        return record, created

    def add(
        self,
        subject_id: str,
        embedding: np.ndarray,
        *,
        bbox: Sequence[int],
        landmarks: Sequence[Sequence[float]] | np.ndarray,
        detection_confidence: float,
        image_sha256: str,
        chip_jpeg: bytes | None = None,
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = True,
    ) -> tuple[FaceRecord, bool, bool]:
        """``enroll``, also saying whether the subject's metadata was replaced."""
        if not subject_id:
            raise ValueError("subject_id must not be empty")
        if len(bbox) != 4:
            raise ValueError(f"bbox must have 4 values, not {len(bbox)}")
        face = NewFace(
            face_id=uuid.uuid4().hex,
            subject_id=subject_id,
            bbox=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
            landmarks=np.asarray(landmarks, dtype=np.float64).reshape(-1, 2).tolist(),
            detection_confidence=float(detection_confidence),
            model=self.model_version,
            image_sha256=image_sha256,
            created_at=_now(),
            embedding=self._vector(embedding),
            chip_jpeg=chip_jpeg if self.store_chips else None,
        )
        with self._write_mutex:
            self._check_writable()
            result = self._store.add_face(face, metadata, replace_metadata)
            if self._shared:
                self._catch_up_locked(None)
                return result.record, result.created, result.metadata_replaced
            if result.subject_created:
                self._subjects += 1
            if result.created:
                vector = face.embedding.reshape(1, -1)
                entry = (result.record.face_id, sys.intern(result.record.subject_id))

                def add() -> None:
                    self._index.add(np.array([result.row_id], dtype=np.int64), vector)
                    self._faces[result.row_id] = entry
                    self._impostors.add(result.row_id, vector[0], entry[1])

                self._mutate_index(add, result.change_id, 1)
            return result.record, result.created, result.metadata_replaced

    def _forget(self, row_ids: list[int], change_id: int) -> None:
        if self._snapshot_path is not None:
            remove_snapshot(self._snapshot_path)  # it still holds the erased vectors

        def remove() -> None:
            self._index.remove(row_ids)
            for row_id in row_ids:
                entry = self._faces.pop(row_id, None)
                if entry is not None:
                    self._impostors.remove(row_id, entry[1])

        self._mutate_index(remove, change_id, len(row_ids))
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._index.needs_compaction:
            try:
                fresh = self._index.compacted()  # searches go on against the old graph meanwhile
            except Exception:
                log.exception("index compaction failed; searches still skip the tombstones")
                return
            with self._rw.write():
                self._index = fresh
            log.info("index compacted: %d faces", fresh.ntotal)

    def delete_subject(self, subject_id: str) -> int:
        """Erase the subject and its faces from store and index; the number of faces removed."""
        with self._write_mutex:
            self._check_writable()
            result = self._store.delete_subject(subject_id)
            if self._shared:
                self._catch_up_locked(None)
                return len(result.row_ids)
            if result.subject_existed:
                self._subjects -= 1
            if result.row_ids:
                self._forget(result.row_ids, result.change_id)
            return len(result.row_ids)

    def delete_face(self, face_id: str) -> bool:
        """Erase one face (and its subject with its last face); False if unknown."""
        return bool(self.remove_face(face_id).row_ids)

    def remove_face(self, face_id: str) -> DeleteResult:
        """``delete_face``, saying also whether the subject went with it."""
        with self._write_mutex:
            self._check_writable()
            result = self._store.delete_face(face_id)
            if self._shared:
                self._catch_up_locked(None)
                return result
            if result.subject_deleted:
                self._subjects -= 1
            if result.row_ids:
                self._forget(result.row_ids, result.change_id)
            return result

    def rename_subject(
        self, subject_id: str, new_id: str, metadata: dict[str, Any] | None = None
    ) -> MoveResult:
        """Give a subject and its faces a new id in one store transaction (see
        ``GalleryStore.rename_subject``); searchable under the new id on return."""
        with self._write_mutex:
            self._check_writable()
            result = self._store.rename_subject(subject_id, new_id, metadata)
            self._follow_move(result)
            return result

    def merge_subjects(self, source: str, target: str) -> MoveResult:
        """Move every face of ``source`` to ``target`` and remove ``source``, atomically in
        the store; the index follows before this returns."""
        with self._write_mutex:
            self._check_writable()
            result = self._store.merge_subjects(source, target)
            self._follow_move(result)
            return result

    def _follow_move(self, result: MoveResult) -> None:
        """A move is a delete and an add per face in the change log: apply it to the index
        the way replicas do, by reading the log (caller holds the write mutex)."""
        if result.status == "ok" and result.removed_row_ids:
            self._catch_up_locked(None)
        elif result.status == "ok":
            self._subjects = self._store.state().subject_count

    def update_metadata(self, subject_id: str, metadata: dict[str, Any]) -> bool:
        """Replace a subject's metadata; False when it does not exist."""
        with self._write_mutex:
            self._check_writable()
            return self._store.update_metadata(subject_id, metadata)

    def move_face(self, face_id: str, subject_id: str) -> FaceMoveResult:
        """Give a face to another subject (created when new; the old one goes with its last
        face), in the store and the index at once: a search sees the face under its old
        subject or its new one, never both or neither. Nothing changes when the face is
        unknown or the target subject already has a face of the same image (``conflict``)."""
        if not subject_id:
            raise ValueError("subject_id must not be empty")
        with self._write_mutex:
            self._check_writable()
            result = self._store.move_face(face_id, subject_id, _now())
            if result.record is not None and result.conflict is None:
                self._catch_up_locked(None)  # a delete and an add, as for a merge
            return result

    # ------------------------------------------------------------ following the change log

    def catch_up(self, limit: int = CATCH_UP_BATCH) -> int:
        """Apply up to ``limit`` store changes committed after ``last_change_id`` (by any
        process) to the index; the number applied. A no-op once closed."""
        with self._write_mutex:
            if self._closed:
                return 0
            self._check_writable()
            return self._catch_up_locked(limit)

    def _catch_up_locked(self, limit: int | None) -> int:
        """Caller holds the write mutex. ``limit=None``: until no change is left."""
        applied = 0
        batch_size = limit or CATCH_UP_BATCH
        while True:
            batch = self._store.changes_since(self._last_change_id, batch_size)
            if batch.pruned_through > self._last_change_id:
                self._rebuild_behind(batch.pruned_through)
                continue
            if batch.changes:
                self._apply(batch)
                applied += len(batch.changes)
            else:
                self._subjects = batch.subject_count
            if limit is not None or len(batch.changes) < batch_size:
                return applied

    def _apply(self, batch: ChangeBatch) -> None:
        """One batch of the log, in one exclusive section: a search sees all of it or none.
        Idempotent (see ``replication``), so a replay after a restart is harmless."""
        deleted = [c.row_id for c in batch.changes if c.op == "delete" and c.row_id in self._faces]
        added = [c for c in batch.changes
                 if c.op == "add" and c.embedding is not None and c.row_id not in self._faces]
        foreign = sorted({str(c.model) for c in added if c.model != self.model_version})
        if foreign:
            self._broken = ModelMismatch(
                f"another process stored faces of model(s) {foreign} in {self._location}, but "
                f"this one computes {self.model_version!r}: run every replica with one model"
            )
            raise self._broken
        vectors = np.stack([c.embedding for c in added]) if added else None  # type: ignore[misc]
        if vectors is not None and vectors.shape[1] != self.dim:
            raise GalleryError(f"stored embeddings have {vectors.shape[1]} dimensions, "
                               f"not {self.dim}")
        ids = np.array([c.row_id for c in added], dtype=np.int64)
        if deleted and self._snapshot_path is not None:
            remove_snapshot(self._snapshot_path)  # it still holds the erased vectors

        def apply() -> None:
            if deleted:
                self._index.remove(deleted)
                for row_id in deleted:
                    entry = self._faces.pop(row_id, None)
                    if entry is not None:
                        self._impostors.remove(row_id, entry[1])
            if vectors is not None:
                self._index.add(ids, vectors)
                for c, vector in zip(added, vectors, strict=True):
                    subject = sys.intern(str(c.subject_id))
                    self._faces[c.row_id] = (str(c.face_id), subject)
                    self._impostors.add(c.row_id, vector, subject)

        self._mutate_index(apply, batch.changes[-1].change_id, len(batch.changes))
        self._subjects = batch.subject_count
        if deleted:
            self._maybe_compact()

    def _rebuild_behind(self, pruned_through: int) -> None:
        """The log no longer holds every change this replica has not applied (it was not seen
        as live while the others pruned): rebuild from the store, searches waiting meanwhile
        (they would be answered from a stale index otherwise). Caller holds the write mutex."""
        log.warning("replica %s is behind the pruned change log (applied %d, pruned through "
                    "%d): rebuilding the index from the store", self.replica_id,
                    self._last_change_id, pruned_through)
        with self._rw.write():
            state = self._store.state()
            self._faces.clear()
            self._impostors.clear()
            self._last_change_id = state.last_change_id
            self._subjects = state.subject_count
            self._index = self._rebuild_index(self._index.kind)
            self.index_source = "store"
            self._sample_impostors()
        self.rebuilds += 1
        log.warning("replica %s rebuilt: %d faces at change %d", self.replica_id,
                    self._index.ntotal, self._last_change_id)

    def heartbeat(self) -> None:
        """Record in the shared store that this replica has applied up to ``last_change_id``
        (what pruning waits for); a no-op for a private store."""
        if self._shared and self.replica_id is not None and not self._closed:
            self._store.record_applied(self.replica_id, self._last_change_id)  # type: ignore[attr-defined]

    def prune_log(self, live_s: float) -> tuple[int, int]:
        """Prune the shared change log of what every live replica has applied; (pruned
        through, entries deleted)."""
        if not self._shared:
            return 0, 0
        return self._store.prune_log(live_s)  # type: ignore[attr-defined,no-any-return]

    def log_position(self, after: int | None = None) -> LogPosition:
        """The store's change-log head and how far ``after`` (default: this index) is behind."""
        return self._store.log_position(self._last_change_id if after is None else after)

    def replication_status(self) -> Any:
        """``replication.ReplicationStatus`` when following a shared store, else None."""
        return None if self._replicator is None else self._replicator.status()

    # ------------------------------------------------------------ reads

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryClosed("the gallery is closed")

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` most similar faces per query (fewer if the gallery is smaller), best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), not {q.shape}")
        with self._rw.read():
            self._check_open()
            results = self._index.search(q, k)
            faces = self._faces
            return [
                [
                    Hit(*faces[i], similarity=s)
                    for s, i in zip(sims.tolist(), ids.tolist(), strict=True)
                ]
                for sims, ids in results
            ]

    def get_face(self, face_id: str) -> FaceRecord | None:
        with self._rw.read():
            self._check_open()
            return self._store.get_face(face_id, with_embedding=True)

    def get_chip(self, face_id: str) -> bytes | None:
        """The aligned face chip as JPEG, or None (unknown face, or chips not stored)."""
        with self._rw.read():
            self._check_open()
            return self._store.get_chip(face_id)

    def get_subject(self, subject_id: str) -> SubjectRecord | None:
        """The subject with its faces (without embeddings: see ``subject_faces``)."""
        with self._rw.read():
            self._check_open()
            return self._store.get_subject(subject_id, with_faces=True)

    def subject_faces(self, subject_id: str) -> list[FaceRecord]:
        """The subject's faces with embeddings (empty if unknown), oldest first."""
        with self._rw.read():
            self._check_open()
            return self._store.subject_faces(subject_id, with_embeddings=True)

    def face_page(
        self, subject_id: str, after_row: int, limit: int
    ) -> list[tuple[int, FaceRecord]]:
        """One page of the subject's faces, oldest first, each with its row id (the keyset)."""
        with self._rw.read():
            self._check_open()
            return self._store.face_page(subject_id, after_row, limit)

    def list_subjects(
        self, cursor: str | None, limit: int
    ) -> tuple[list[SubjectRecord], str | None]:
        """One page of subjects in id order and the cursor of the next page (None at the end).
        ``ValueError`` for a cursor this gallery did not issue."""
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        after = None if cursor is None else _decode_cursor(cursor)
        with self._rw.read():
            self._check_open()
            records = self._store.list_subjects(after, limit + 1)
        if len(records) <= limit:
            return records, None
        records = records[:limit]
        return records, _encode_cursor(records[-1].subject_id)

    # ------------------------------------------------------------ snapshots, lifecycle

    def _write_snapshot(self) -> None:
        """Caller holds the write mutex, so the index matches ``last_change_id`` throughout."""
        if self._snapshot_path is None:
            return
        with self._rw.read():
            self._index.write_snapshot(
                self._snapshot_path, model=self.model_version, last_change_id=self._last_change_id
            )
        self._changes_since_snapshot = 0

    def snapshot(self) -> None:
        """Write the index snapshot now (searches continue; writes wait)."""
        with self._write_mutex:
            self._check_writable()
            self._write_snapshot()

    def close(self) -> None:
        """Write the index snapshot and release the store; later calls raise ``GalleryClosed``."""
        if self._replicator is not None:
            self._replicator.stop()  # before the mutex: its catch-up takes the mutex
        with self._write_mutex:
            if self._closed:
                return
            try:
                if self._broken is None:
                    self._write_snapshot()
            except Exception:
                log.exception("could not write the index snapshot; the next start rebuilds it")
            finally:
                with self._rw.write():  # waits for searches and reads in flight
                    self._closed = True
                try:
                    self._store.close()
                finally:
                    unlock_data_dir(self._lock_fd)
                    self._lock_fd = None
