"""GET /subjects (paginated), GET /subjects/{id}, DELETE /subjects/{id} (erasure)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from service.deps import GalleryDep
from service.errors import BadRequest, SubjectNotFound, error_responses
from service.gallery import Gallery
from service.routes.common import landmarks_list, run_in_threadpool, to_bbox
from service.schemas import (
    DeleteSubjectResponse,
    FaceInfo,
    SubjectDetail,
    SubjectList,
    SubjectSummary,
)

router = APIRouter(prefix="/subjects", tags=["gallery"])

SubjectPath = Annotated[
    str, Path(min_length=1, max_length=128, description="The subject's id (URL-encoded).")
]


def face_info(record: Any) -> FaceInfo:
    return FaceInfo(
        face_id=record.face_id,
        subject_id=record.subject_id,
        bbox=to_bbox(record.bbox),
        landmarks=landmarks_list(record.landmarks),
        detection_confidence=float(record.detection_confidence),
        model=record.model,
        image_sha256=record.image_sha256,
        created_at=record.created_at,
    )


def _summary(record: Any) -> SubjectSummary:
    return SubjectSummary(
        subject_id=record.subject_id,
        metadata=record.metadata or {},
        created_at=record.created_at,
        face_count=record.face_count,
    )


@router.get(
    "",
    response_model=SubjectList,
    summary="List subjects",
    description="Subjects in a stable order, `limit` per page; follow `next_cursor`.",
    responses=error_responses(400, 422, 503),
)
async def list_subjects(
    gallery: GalleryDep,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Subjects per page.")] = 100,
) -> SubjectList:
    def page() -> tuple[list[Any], str | None]:
        try:
            return gallery.list_subjects(cursor, limit)
        except ValueError:
            raise BadRequest("cursor is not valid", code="invalid_cursor") from None

    records, next_cursor = await run_in_threadpool(page)
    return SubjectList(subjects=[_summary(r) for r in records], next_cursor=next_cursor)


def _detail(gallery: Gallery, subject_id: str) -> SubjectDetail:
    record = gallery.get_subject(subject_id)
    if record is None:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    faces = record.faces if record.faces or not record.face_count else (
        gallery.subject_faces(subject_id)
    )
    return SubjectDetail(**_summary(record).model_dump(), faces=[face_info(f) for f in faces])


@router.get(
    "/{subject_id:path}",
    response_model=SubjectDetail,
    summary="A subject, its metadata and faces",
    responses=error_responses(404, 422, 503),
)
async def get_subject(subject_id: SubjectPath, gallery: GalleryDep) -> SubjectDetail:
    return await run_in_threadpool(_detail, gallery, subject_id)


def _delete(gallery: Gallery, subject_id: str) -> int:
    existed = gallery.get_subject(subject_id) is not None
    removed = gallery.delete_subject(subject_id)
    if not existed and removed == 0:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    return removed


@router.delete(
    "/{subject_id:path}",
    response_model=DeleteSubjectResponse,
    summary="Erase a subject",
    description=(
        "Removes the subject, its metadata and every template from storage and from the "
        "search index before answering: no later identify or verify can return them."
    ),
    responses=error_responses(404, 422, 503),
)
async def delete_subject(subject_id: SubjectPath, gallery: GalleryDep) -> DeleteSubjectResponse:
    removed = await run_in_threadpool(_delete, gallery, subject_id)
    return DeleteSubjectResponse(subject_id=subject_id, faces_deleted=removed)
