"""GET /subjects (paginated), GET /subjects/{id}, DELETE /subjects/{id} (erasure)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from service.api.deps import GalleryDep, ServicesDep
from service.api.errors import BadRequest, SubjectNotFound, error_responses
from service.api.routes.common import audit_event, landmarks_list, run_in_threadpool, to_bbox
from service.api.schemas import (
    DeleteSubjectResponse,
    FaceInfo,
    SubjectDetail,
    SubjectList,
    SubjectSummary,
)
from service.gallery.gallery import Gallery, _decode_cursor, _encode_cursor
from service.security.auth import EraseKey, Principal, ReadKey
from service.security.keys import Namespace

router = APIRouter(prefix="/subjects", tags=["gallery"])

SubjectPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        # As for enrolled ids: no control characters (which also keeps other galleries'
        # stored ids, "\x1f<gallery>\x1f<id>", out of reach).
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The subject's id (URL-encoded).",
    ),
]


def face_info(record: Any, namespace: Namespace | None = None) -> FaceInfo:
    """``record`` as the API shows it; ``namespace`` maps its stored subject id back."""
    subject_id = record.subject_id
    if namespace is not None:
        subject_id = namespace.external(subject_id) or subject_id
    return FaceInfo(
        face_id=record.face_id,
        subject_id=subject_id,
        bbox=to_bbox(record.bbox),
        landmarks=landmarks_list(record.landmarks),
        detection_confidence=float(record.detection_confidence),
        model=record.model,
        image_sha256=record.image_sha256,
        created_at=record.created_at,
    )


def _summary(record: Any, namespace: Namespace) -> SubjectSummary:
    return SubjectSummary(
        subject_id=namespace.external(record.subject_id) or record.subject_id,
        metadata=record.metadata or {},
        created_at=record.created_at,
        face_count=record.face_count,
    )


@router.get(
    "",
    response_model=SubjectList,
    summary="List subjects",
    description="Subjects of the key's gallery in a stable order, `limit` per page; follow "
    "`next_cursor`. Needs scope `read`.",
    responses=error_responses(400, 401, 403, 408, 422, 429, 503),
)
async def list_subjects(
    principal: ReadKey,
    gallery: GalleryDep,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Subjects per page.")] = 100,
) -> SubjectList:
    namespace = principal.namespace

    def page() -> tuple[list[Any], str | None]:
        # A gallery's stored ids form one contiguous run (service.security.keys): start at its
        # beginning, or at a cursor inside it, and stop at the first id outside it.
        try:
            if cursor is not None and not namespace.owns(_decode_cursor(cursor)):
                raise ValueError("cursor of another gallery")
            start = cursor if cursor is not None else _encode_cursor(namespace.list_after)
            records, next_cursor = gallery.list_subjects(start, limit)
        except ValueError:
            raise BadRequest("cursor is not valid", code="invalid_cursor") from None
        mine = [r for r in records if namespace.owns(r.subject_id)]
        return mine, next_cursor if len(mine) == len(records) else None

    records, next_cursor = await run_in_threadpool(page)
    return SubjectList(
        subjects=[_summary(r, namespace) for r in records], next_cursor=next_cursor
    )


def _detail(gallery: Gallery, subject_id: str, namespace: Namespace) -> SubjectDetail:
    stored = namespace.internal(subject_id)
    record = gallery.get_subject(stored)
    if record is None:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    faces = record.faces if record.faces or not record.face_count else (
        gallery.subject_faces(stored)
    )
    return SubjectDetail(
        **_summary(record, namespace).model_dump(),
        faces=[face_info(f, namespace) for f in faces],
    )


@router.get(
    "/{subject_id:path}",
    response_model=SubjectDetail,
    summary="A subject, its metadata and faces",
    description="Needs scope `read`; a subject of another gallery is 404.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def get_subject(
    principal: ReadKey, subject_id: SubjectPath, gallery: GalleryDep
) -> SubjectDetail:
    return await run_in_threadpool(_detail, gallery, subject_id, principal.namespace)


def _delete(gallery: Gallery, subject_id: str, principal: Principal) -> int:
    stored = principal.namespace.internal(subject_id)
    existed = gallery.get_subject(stored) is not None
    removed = gallery.delete_subject(stored)
    if not existed and removed == 0:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    return removed


@router.delete(
    "/{subject_id:path}",
    response_model=DeleteSubjectResponse,
    summary="Erase a subject",
    description=(
        "Removes the subject, its metadata and every template from storage and from the "
        "search index before answering: no later identify or verify can return them. The "
        "database overwrites the erased rows and its write-ahead log is emptied, so the bytes "
        "are gone from disk too; the audit log keeps who erased which subject id, and when. "
        "Needs scope `erase`; a subject of another gallery is 404."
    ),
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def delete_subject(
    principal: EraseKey, subject_id: SubjectPath, services: ServicesDep, gallery: GalleryDep
) -> DeleteSubjectResponse:
    removed = await run_in_threadpool(_delete, gallery, subject_id, principal)
    await audit_event(services, principal, "delete_subject", subject_id=subject_id,
                      detail={"faces_deleted": removed})
    return DeleteSubjectResponse(subject_id=subject_id, faces_deleted=removed)
