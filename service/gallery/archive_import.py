"""Importing an archive from ``faceserve export-gallery`` into a gallery (the format, and
writing and reading it: ``service.gallery.archive``).

Resuming: faces are keyed by their face id, which the import keeps. Each page is committed in
one transaction after skipping the faces the target already holds, so an interrupted import
(killed, a truncated archive, ``limit``) is finished by running it again: nothing is added
twice. The target's audit log records the start (with the archive id, which is how a re-run is
recognised as a resume) and the end of each import.

The unknown-face pool and the negatives (archive version 2) are imported after the faces, by
their ids (a re-run adds nothing twice): pool faces past the target's retention limit
(``unknown_after``) are left out, and negatives of subjects the target does not hold are
skipped. Pool faces and negatives of another model than the target's are re-embedded from
their chips with ``embed``, or skipped (counted) without it or without a chip.

Models: an archive whose embeddings are of another model than the target serves is refused
(similarities across models mean nothing), unless an ``embed`` function is given, which
re-computes them from the archive's chips, as ``faceserve reembed`` does in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.gallery.archive import ArchiveError, ArchiveModelMismatch, ArchiveReader, now_iso
from service.gallery.store.base import GalleryStore, NewAuditEvent, NewFace, SecurityStore

__all__ = [
    "ArchiveStore",
    "ImportResult",
    "archive_store_ready",
    "check_archive_model",
    "import_gallery",
]

START_ACTION = "import_gallery_started"
DONE_ACTION = "import_gallery"
# (N, 150, 150, 3) uint8 chips -> (N, D) float32 unit vectors, as ``service.gallery.reembed``
EmbedFn = Callable[[np.ndarray], np.ndarray]


class ArchiveStore(GalleryStore, SecurityStore, Protocol):
    """Both stores are both: the import records itself in the target's audit log."""


@dataclass
class ImportResult:
    archive_id: str
    resumed: bool = False
    complete: bool = False  # False: stopped by ``limit``; run again to continue
    subjects_added: int = 0
    faces_added: int = 0
    faces_present: int = 0  # already in the target (a resumed import, or --merge)
    faces_conflicting: int = 0  # same subject and image as a target face under another id
    faces_without_chip_skipped: int = 0
    reembedded: int = 0
    unknown_added: int = 0  # pool faces (issue 17)
    negatives_added: int = 0
    pool_reembedded: int = 0
    pool_skipped: int = 0  # pool faces or negatives past retention, of another model, or orphan
    seconds: float = 0.0
    galleries: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def faces_per_s(self) -> float:
        return self.faces_added / self.seconds if self.seconds > 0 else 0.0


def check_archive_model(
    reader: ArchiveReader, target_model: str, target_dim: int | None, *, reembed: bool,
    skip_without_chip: bool = False,
) -> None:
    """``ArchiveModelMismatch`` unless the archive's embeddings can serve ``target_model``
    (as they are, or re-embedded from its chips)."""
    others = {m: n for m, n in reader.models.items() if m != target_model}
    if others and not reembed:
        held = ", ".join(f"{n} faces of model {m!r}" for m, n in sorted(others.items()))
        raise ArchiveModelMismatch(
            f"{reader.path} holds {held}, but the target gallery is for model "
            f"{target_model!r} (--model / FACESERVE_MODEL): their similarities cannot be "
            "compared, so nothing was imported. Pass --reembed to re-compute the embeddings "
            "from the archive's face chips with the target model, or --model with the model "
            "the archive was made with."
        )
    if (not others and target_dim is not None and reader.embedding_size is not None
            and reader.embedding_size != target_dim):
        raise ArchiveModelMismatch(
            f"{reader.path} holds {reader.embedding_size}-d embeddings but model "
            f"{target_model!r} computes {target_dim}-d ones")
    chipless = {m: n for m, n in
                (reader.manifest.get("counts", {}).get("faces_without_chip") or {}).items()
                if n and m in others}
    if chipless and not skip_without_chip:
        raise ArchiveError(
            f"{sum(chipless.values())} faces of the archive to re-embed have no chip (enrolled "
            "with store_chips off), so they cannot be re-embedded; nothing was imported. Pass "
            "--skip-faces-without-chips to leave them out (re-enroll them from their photos)."
        )


def archive_store_ready(
    reader: ArchiveReader, store: ArchiveStore, target_model: str, target_dim: int | None,
    *, reembed: bool, merge: bool, skip_without_chip: bool = False,
) -> bool:
    """Check that this archive may go into ``store`` (``ArchiveError`` explains why not);
    True when it continues an earlier import of the same archive. Changes nothing."""
    check_archive_model(reader, target_model, target_dim, reembed=reembed,
                        skip_without_chip=skip_without_chip)
    state = store.state()
    foreign = {m: n for m, n in state.model_counts.items() if m != target_model}
    if foreign:
        held = ", ".join(f"{n} faces of model {m!r}" for m, n in sorted(foreign.items()))
        raise ArchiveModelMismatch(f"the target ({store.location}) already holds {held}, not "
                                   f"{target_model!r}: importing would mix models")
    resumed = _started(store, reader.archive_id)
    if (state.face_count or state.subject_count) and not resumed and not merge:
        raise ArchiveError(
            f"the target ({store.location}) is not empty ({state.subject_count} subjects, "
            f"{state.face_count} faces) and no import of this archive was started there; "
            "import into an empty gallery, or pass --merge to add the archive to it (subjects "
            "it already has keep their metadata)."
        )
    return resumed


def _started(store: ArchiveStore, archive_id: str) -> bool:
    after = 0
    while events := store.list_audit(None, after, 1000, START_ACTION):
        if any(e.detail.get("archive_id") == archive_id for e in events):
            return True
        after = events[-1].id
    return False


def import_gallery(
    reader: ArchiveReader,
    store: ArchiveStore,
    target_model: str,
    *,
    target_dim: int | None = None,
    embed: EmbedFn | None = None,
    merge: bool = False,
    skip_without_chip: bool = False,
    limit: int | None = None,
    progress: bool = True,
    after_page: Callable[[ImportResult], None] | None = None,
    unknown_after: str | None = None,
) -> ImportResult:
    """Add the archive's subjects and faces to ``store`` (see the module docstring).

    ``embed``: re-embed faces of other models than ``target_model`` from their chips (without
    it such an archive is refused). ``limit``: stop after adding this many faces (the rest is
    added by a later run). ``after_page`` is called after each committed page."""
    from tqdm import tqdm

    start = time.perf_counter()
    resumed = archive_store_ready(reader, store, target_model, target_dim,
                                  reembed=embed is not None, merge=merge,
                                  skip_without_chip=skip_without_chip)
    result = ImportResult(reader.archive_id, resumed=resumed)
    if not resumed:
        store.add_audit(NewAuditEvent(
            at=now_iso(), key_id=None, key_name="(command line)", action=START_ACTION,
            detail={"archive_id": reader.archive_id, "source": reader.manifest.get("source"),
                    "exported_at": reader.manifest.get("exported_at"),
                    "cursor": reader.manifest.get("cursor"), "faces": reader.face_count,
                    "subjects": reader.subject_count, "model": target_model,
                    "reembed": embed is not None},
        ))
    for page in reader.subject_pages():
        result.subjects_added += store.import_batch(page, []).subjects_added
    stopped = False
    with tqdm(total=reader.face_count, unit="face", desc="importing faces",
              disable=not progress) as bar:
        for faces in reader.face_pages():
            if stopped:
                break  # the rest is for the next run (whose read checks the digest)
            present = store.known_face_ids([f.face_id for f in faces])
            todo = [f for f in faces if f.face_id not in present]
            result.faces_present += len(faces) - len(todo)
            if limit is not None and result.faces_added + len(todo) > limit:
                todo = todo[: max(limit - result.faces_added, 0)]
                stopped = True
            if embed is not None:
                todo = _reembed(todo, embed, target_model, target_dim, result)
            added = store.import_batch([], todo).faces_added
            result.faces_added += added
            result.faces_conflicting += len(todo) - added
            bar.update(len(faces))
            if after_page is not None:
                after_page(result)
    if not stopped:
        _import_pool(reader, store, target_model, target_dim, embed, unknown_after, result)
    result.complete = not stopped
    result.galleries = reader.galleries
    result.seconds = time.perf_counter() - start
    if result.complete:
        store.add_audit(NewAuditEvent(
            at=now_iso(), key_id=None, key_name="(command line)", action=DONE_ACTION,
            detail={"archive_id": reader.archive_id, "subjects_added": result.subjects_added,
                    "faces_added": result.faces_added, "faces_present": result.faces_present,
                    "reembedded": result.reembedded, "model": target_model,
                    "unknown_added": result.unknown_added,
                    "negatives_added": result.negatives_added},
        ))
    return result


def _import_pool(
    reader: ArchiveReader, store: ArchiveStore, model: str, dim: int | None,
    embed: EmbedFn | None, unknown_after: str | None, result: ImportResult,
) -> None:
    """The archive's pool faces and negatives (see the module docstring)."""
    for kind, page in reader.pool_pages():
        keep = [r for r in page
                if kind != "unknown" or unknown_after is None or r.created_at >= unknown_after]
        same = [r for r in keep if r.model == model]
        other = [r for r in keep if r.model != model and r.chip_jpeg is not None]
        if other and embed is not None:
            from dataclasses import replace

            from service.gallery.reembed import ReembedError, decode_chip

            try:
                chips = np.stack([decode_chip(r.chip_jpeg or b"", getattr(
                    r, "face_id", getattr(r, "negative_id", ""))) for r in other])
            except ReembedError as exc:
                raise ArchiveError(str(exc)) from None
            vectors = np.asarray(embed(chips), dtype=np.float32)
            if vectors.shape[0] != len(other) or (dim is not None and vectors.shape[1] != dim):
                raise ArchiveError(f"the model returned {vectors.shape} embeddings for "
                                   f"{len(other)} chips")
            same += [replace(r, embedding=vectors[i], model=model) for i, r in enumerate(other)]
            result.pool_reembedded += len(other)
        if kind == "unknown":
            added = store.add_unknown(same, skip_present=True)  # type: ignore[attr-defined]
            result.unknown_added += added
        else:
            added = store.import_negatives(same)  # type: ignore[attr-defined]
            result.negatives_added += added
        result.pool_skipped += len(page) - added


def _reembed(
    faces: list[NewFace], embed: EmbedFn, model: str, dim: int | None, result: ImportResult
) -> list[NewFace]:
    """``faces`` with the ones of other models re-embedded by ``model`` from their chips."""
    from service.gallery.reembed import ReembedError, decode_chip  # the index, faiss: only here

    keep = [f for f in faces if f.model == model]
    other = [f for f in faces if f.model != model]
    usable = [f for f in other if f.chip_jpeg is not None]
    result.faces_without_chip_skipped += len(other) - len(usable)
    if not usable:
        return keep
    try:
        # Any chip size: the embedder checks it against its geometry (archive_commands).
        chips = np.stack([decode_chip(f.chip_jpeg or b"", f.face_id, None) for f in usable])
    except ReembedError as exc:
        raise ArchiveError(str(exc)) from None
    vectors = np.asarray(embed(chips), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(usable) or (
        dim is not None and vectors.shape[1] != dim
    ) or not np.all(np.isfinite(vectors)):
        raise ArchiveError(f"the model returned {vectors.shape} embeddings for "
                           f"{len(usable)} chips")
    result.reembedded += len(usable)
    done = [
        NewFace(face_id=f.face_id, subject_id=f.subject_id, bbox=f.bbox, landmarks=f.landmarks,
                detection_confidence=f.detection_confidence, model=model,
                image_sha256=f.image_sha256, created_at=f.created_at, embedding=vectors[i],
                chip_jpeg=f.chip_jpeg)
        for i, f in enumerate(usable)
    ]
    # Keep the archive's (enrollment) order within the page.
    order = {f.face_id: i for i, f in enumerate(faces)}
    return sorted(keep + done, key=lambda f: order[f.face_id])
