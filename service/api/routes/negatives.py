"""POST /negatives, GET /negatives?subject_id=, DELETE /negatives/{id}: faces marked "not this
person" for a subject (issue 17).

A negative is a copy of a face's embedding (and chip, when it has one) kept as a counter-example
of one subject; identify then refuses that subject for any face at least as similar to one of
its negatives as to its best enrolled face (``models.negatives``, README "Clustering"). The
marked face can be an enrolled face of another subject, a pool or cluster face, or the
embedding of a face of an identify result (``return_embedding``), which a face that matched is
(it never reached the pool). Negatives are erased with their subject.

A resource of its own rather than ``/subjects/{id}/negatives``: subject ids may contain ``/``
(``/subjects/{id}`` takes the rest of the path), so ``/subjects/a/negatives`` would also be
subject ``a/negatives``, and DELETE on it that subject's erasure.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query

from service.api.deps import GalleryDep, ServicesDep
from service.api.errors import (
    FaceNotFound,
    InvalidField,
    ModelMismatch,
    ServiceError,
    SubjectNotFound,
    error_responses,
)
from service.api.routes.common import audit_event, decode_embedding, run_in_threadpool
from service.api.schemas import (
    DeleteNegativeResponse,
    ErrorResponse,
    NegativeInfo,
    NegativeList,
    NegativeRequest,
)
from service.gallery.gallery import Gallery
from service.gallery.store.negatives import NegativeRecord, SubjectMissing
from service.security.auth import EnrollKey, EraseKey, Principal, ReadKey

router = APIRouter(prefix="/negatives", tags=["gallery"])

NegativePath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$",
                                   description="A negative's id.")]


class FaceOfSubject(ServiceError):
    status, code = 409, "face_of_subject"


class NegativeNotFound(ServiceError):
    status, code = 404, "negative_not_found"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _info(record: NegativeRecord, subject_id: str) -> NegativeInfo:
    return NegativeInfo(negative_id=record.negative_id, subject_id=subject_id,
                        source=record.source,  # type: ignore[arg-type]
                        source_id=record.source_id, model=record.model,
                        created_at=record.created_at)


def _check_subject(gallery: Gallery, stored: str, subject_id: str) -> None:
    if gallery.store.get_subject(stored, with_faces=False) is None:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")


def _negative_of(
    gallery: Gallery, principal: Principal, body: NegativeRequest
) -> NegativeRecord:
    """The negative ``body`` describes, for the stored subject id (read, not yet written)."""
    given = [x for x in (body.face_id, body.unknown_face_id, body.embedding) if x is not None]
    if len(given) != 1:
        raise InvalidField("give exactly one of face_id, unknown_face_id or embedding")
    namespace = principal.namespace
    subject_id = body.subject_id
    stored = namespace.internal(subject_id)
    _check_subject(gallery, stored, subject_id)
    chip: bytes | None = None
    if body.face_id is not None:
        record = gallery.get_face(body.face_id)
        if record is None or not namespace.owns(record.subject_id):
            raise FaceNotFound(f"face {body.face_id!r} does not exist")
        if record.subject_id == stored:
            raise FaceOfSubject(
                f"face {body.face_id!r} is enrolled as {subject_id!r} itself: move it to the "
                "right subject (POST /faces/{face_id}/move) or delete it, then mark it")
        vector, model, source, source_id = record.embedding, record.model, "face", body.face_id
        chip = gallery.get_chip(body.face_id)
    elif body.unknown_face_id is not None:
        pooled = gallery.store.unknown_face(  # type: ignore[attr-defined]
            namespace.gallery, body.unknown_face_id)
        if pooled is None:
            raise FaceNotFound(f"pool face {body.unknown_face_id!r} does not exist")
        vector, model, source = pooled.embedding, pooled.model, "unknown_face"
        source_id, chip = body.unknown_face_id, pooled.chip_jpeg
    else:
        assert body.embedding is not None
        vector, model, source, source_id = (decode_embedding(body.embedding),
                                            gallery.model_version, "embedding", None)
    if model != gallery.model_version:
        raise ModelMismatch(
            f"that face's embedding is of model {model!r}, the gallery's {gallery.model_version}")
    return NegativeRecord(
        negative_id=uuid.uuid4().hex, subject_id=stored, source=source, source_id=source_id,
        model=model, created_at=_now(), embedding=np.asarray(vector, np.float32),
        chip_jpeg=chip if gallery.store_chips else None)


@router.post(
    "",
    response_model=NegativeInfo,
    status_code=201,
    summary="Mark a face \"not this person\"",
    description=(
        "Stores the face as a negative example of the subject: from then on identify never "
        "gives the subject to a face at least as similar to one of its negatives as to its "
        "best enrolled face (the candidate is reported with `suppressed_by`; verify against the "
        "subject says no match), so the marked face, and other photos nearer to it than to "
        "the subject, stop matching. Give `subject_id` and exactly "
        "one of `face_id` (an enrolled face of another subject), `unknown_face_id` (a pool or "
        "cluster face) or `embedding` (`embedding_b64` of an identify result with "
        "`return_embedding`). The embedding is copied; the face itself is not changed. Needs "
        "scope `enroll` (it changes whom identify gives faces to, as enrolling does)."
    ),
    responses={**error_responses(400, 401, 403, 404, 408, 409, 422, 429, 503), 409: {
        "model": ErrorResponse, "description": "`face_of_subject`: the face is "
        "enrolled as that subject itself; `model_mismatch`: its embedding is of another model."}},
)
async def add_negative(
    principal: EnrollKey, services: ServicesDep, gallery: GalleryDep, body: NegativeRequest,
) -> NegativeInfo:
    subject_id = body.subject_id

    def add() -> NegativeRecord:
        negative = _negative_of(gallery, principal, body)
        try:
            gallery.store.add_negative(negative)  # type: ignore[attr-defined]
        except SubjectMissing:  # erased since it was checked
            raise SubjectNotFound(f"subject {subject_id!r} does not exist") from None
        return negative

    negative = await run_in_threadpool(add)
    await audit_event(services, principal, "add_negative", subject_id=subject_id,
                      face_id=negative.source_id,
                      detail={"negative_id": negative.negative_id, "source": negative.source})
    return _info(negative, subject_id)


@router.get(
    "",
    response_model=NegativeList,
    summary="A subject's negative examples",
    description="The faces marked \"not this person\" for the subject, oldest first. Needs "
    "scope `read`.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def list_negatives(
    principal: ReadKey, gallery: GalleryDep,
    subject_id: Annotated[str, Query(min_length=1, max_length=128,
                                     pattern=r"^[^\x00-\x1f\x7f]+$",
                                     description="The subject whose negatives to list.")],
) -> NegativeList:
    def read() -> NegativeList:
        stored = principal.namespace.internal(subject_id)
        _check_subject(gallery, stored, subject_id)
        records = gallery.store.negatives(  # type: ignore[attr-defined]
            [stored], with_embeddings=False)
        return NegativeList(subject_id=subject_id,
                            negatives=[_info(r, subject_id) for r in records])

    return await run_in_threadpool(read)


@router.delete(
    "/{negative_id}",
    response_model=DeleteNegativeResponse,
    summary="Delete a negative example",
    description="Erases the negative (its embedding and chip; with SQLite, from the database "
    "files too): identify may give the subject to such faces again. Needs scope `erase`.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def delete_negative(
    principal: EraseKey, services: ServicesDep, gallery: GalleryDep, negative_id: NegativePath,
) -> DeleteNegativeResponse:
    namespace = principal.namespace

    def delete() -> str:
        record = gallery.store.negative(negative_id)  # type: ignore[attr-defined]
        # Keyed by its subject too: a negative of another gallery is never touched.
        if (record is None or not namespace.owns(record.subject_id)
                or not gallery.store.delete_negative(  # type: ignore[attr-defined]
                    record.subject_id, negative_id)):
            raise NegativeNotFound(f"negative {negative_id!r} does not exist")
        return namespace.external(record.subject_id) or record.subject_id

    subject_id = await run_in_threadpool(delete)
    await audit_event(services, principal, "delete_negative", subject_id=subject_id,
                      detail={"negative_id": negative_id})
    return DeleteNegativeResponse(negative_id=negative_id, subject_id=subject_id, deleted=True)
