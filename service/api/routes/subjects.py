"""GET /subjects (paginated), GET/PATCH/DELETE /subjects/{id}, GET /subjects/{id}/faces
(paginated) and POST /subjects/{id}/merge.

The id is one path segment (``{subject_id:subject}``, ``service.api.subject_paths``): ids
with ``/`` from older versions are reached with ``%2F``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query

import service.api.subject_paths  # noqa: F401  (registers the `subject` path convertor)
from service.api.cursors import CursorQuery, decode_cursor, encode_cursor, invalid_cursor
from service.api.deps import GalleryDep, ServicesDep
from service.api.errors import (
    InvalidField,
    ServiceError,
    SubjectNotFound,
    error_responses,
)
from service.api.routes.common import (
    audit_event,
    landmarks_list,
    parse_metadata,
    run_in_threadpool,
    to_bbox,
)
from service.api.schemas import (
    DeleteSubjectResponse,
    FaceInfo,
    FaceList,
    MergeSubjectRequest,
    MergeSubjectResponse,
    SubjectDetail,
    SubjectList,
    SubjectSummary,
    UpdateSubjectRequest,
    UpdateSubjectResponse,
)
from service.gallery.gallery import Gallery, _decode_cursor, _encode_cursor
from service.gallery.store.base import MoveResult
from service.security.auth import EnrollKey, EraseKey, Principal, ReadKey
from service.security.keys import Namespace

router = APIRouter(prefix="/subjects", tags=["gallery"])


class SubjectExists(ServiceError):
    """A rename's target id is taken."""

    status, code = 409, "subject_exists"

SubjectPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        # As for enrolled ids: no control characters (which also keeps other galleries'
        # stored ids, "\x1f<gallery>\x1f<id>", out of reach).
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The subject's id, URL-encoded as one path segment (a `/` in an id "
        "enrolled by an older version is written `%2F`).",
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
    responses=error_responses(401, 403, 408, 422, 429, 503),
)
async def list_subjects(
    principal: ReadKey,
    gallery: GalleryDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Subjects per page.")] = 100,
) -> SubjectList:
    namespace = principal.namespace

    def page() -> tuple[list[Any], str | None]:
        # A gallery's stored ids form one contiguous run (service.security.keys): start at its
        # beginning, or after the cursor's subject, and stop at the first id outside it.
        start = _encode_cursor(namespace.list_after)
        if cursor is not None:
            start = _start_of(cursor, namespace)
        try:
            records, more = gallery.list_subjects(start, limit)
        except ValueError:
            raise invalid_cursor() from None
        mine = [r for r in records if namespace.owns(r.subject_id)]
        if more is None or len(mine) < len(records) or not mine:
            return mine, None
        last = namespace.external(mine[-1].subject_id)
        return mine, encode_cursor("subjects", namespace.gallery, last or "")

    records, next_cursor = await run_in_threadpool(page)
    return SubjectList(
        subjects=[_summary(r, namespace) for r in records], next_cursor=next_cursor
    )


def _start_of(cursor: str, namespace: Namespace) -> str:
    """The gallery's own cursor for an API cursor (``service.api.cursors``). The unversioned
    cursors of earlier releases (which showed the stored id, gallery prefix included) are still
    taken, for one release, when they point into the caller's gallery."""
    try:
        after = decode_cursor("subjects", namespace.gallery, cursor)
    except ServiceError:
        try:
            legacy = _decode_cursor(cursor)
        except ValueError:
            legacy = None
        if legacy is None or not namespace.owns(legacy):
            raise
        return cursor
    try:
        return _encode_cursor(namespace.internal(after))
    except ValueError:
        raise invalid_cursor() from None


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
    "/{subject_id:subject}",
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
    "/{subject_id:subject}",
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


# ---------------------------------------------------------------- faces of a subject

def _face_page(
    gallery: Gallery, subject_id: str, namespace: Namespace, cursor: str | None, limit: int
) -> FaceList:
    after = 0 if cursor is None else decode_cursor("subject_faces", namespace.gallery, cursor, int)
    if after < 0:
        raise invalid_cursor()
    stored = namespace.internal(subject_id)
    if gallery.get_subject(stored) is None:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    rows = gallery.face_page(stored, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return FaceList(
        faces=[face_info(record, namespace) for _, record in rows],
        next_cursor=(encode_cursor("subject_faces", namespace.gallery, rows[-1][0])
                     if more else None),
    )


_FACES_EXAMPLE = {
    "faces": [{
        "face_id": "3f2a9c0d5e8b4a7f9d1c2b3a4e5f6071", "subject_id": "rose-tyler",
        "bbox": {"left": 212, "top": 96, "right": 331, "bottom": 215},
        "landmarks": [[300.5, 130.0], [285.0, 131.2], [240.1, 129.8], [255.6, 130.9],
                      [270.3, 170.4]],
        "detection_confidence": 1.04, "model": "dlib-resnet-v1",
        "image_sha256": "9b74c9897bac770ffc029102a200c5de",
        "created_at": "2026-12-04T09:30:00.000Z",
    }],
    "next_cursor": encode_cursor("subject_faces", "", 12),
}


@router.get(
    "/{subject_id:subject}/faces",
    response_model=FaceList,
    summary="A subject's faces, page by page",
    description="The subject's faces, oldest first, `limit` per page; follow `next_cursor` "
    "(opaque, as for GET /subjects). A face deleted between two pages is simply not listed. "
    "Needs scope `read`; a subject of another gallery is 404.",
    responses={
        200: {"content": {"application/json": {"example": _FACES_EXAMPLE}}},
        **error_responses(400, 401, 403, 404, 408, 422, 429, 503),
    },
)
async def list_subject_faces(
    principal: ReadKey,
    subject_id: SubjectPath,
    gallery: GalleryDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Faces per page.")] = 100,
) -> FaceList:
    return await run_in_threadpool(
        _face_page, gallery, subject_id, principal.namespace, cursor, limit
    )


# ---------------------------------------------------------------- rename, metadata, merge


def _move_error(result: MoveResult, subject_id: str, other: str) -> ServiceError | None:
    if result.status == "no_source":
        return SubjectNotFound(f"subject {subject_id!r} does not exist")
    if result.status == "no_target":
        return SubjectNotFound(f"subject {other!r} (into) does not exist",
                               code="target_not_found")
    if result.status == "target_exists":
        return SubjectExists(
            f"subject {other!r} already exists: a rename needs a free id. To combine the two "
            f"subjects, POST /subjects/{{id}}/merge with {{\"into\": {other!r}}}"
        )
    if result.status == "same":
        return InvalidField(f"subject {subject_id!r} cannot be merged into itself")
    return None


def _update(
    gallery: Gallery, subject_id: str, body: UpdateSubjectRequest, metadata: dict | None,
    namespace: Namespace,
) -> tuple[UpdateSubjectResponse, list[str]]:
    """The update, and the metadata keys the subject had before (for the audit)."""
    stored = namespace.internal(subject_id)
    before = gallery.get_subject(stored)
    if before is None:
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    new_id = body.subject_id if body.subject_id not in (None, subject_id) else None
    moved = 0
    if new_id is not None:
        result = gallery.rename_subject(stored, namespace.internal(new_id), metadata)
        error = _move_error(result, subject_id, new_id)
        if error is not None:
            raise error
        moved = result.faces_moved
    elif metadata is not None and not gallery.update_metadata(stored, metadata):
        raise SubjectNotFound(f"subject {subject_id!r} does not exist")
    current = new_id if new_id is not None else subject_id
    record = gallery.get_subject(namespace.internal(current))
    if record is None:  # erased by another request meanwhile
        raise SubjectNotFound(f"subject {current!r} does not exist")
    return UpdateSubjectResponse(
        **_summary(record, namespace).model_dump(),
        renamed_from=subject_id if new_id is not None else None,
        faces_moved=moved,
        metadata_replaced=metadata is not None,
    ), sorted(before.metadata)


@router.patch(
    "/{subject_id:subject}",
    response_model=UpdateSubjectResponse,
    summary="Rename a subject or replace its metadata",
    description=(
        "`subject_id` renames: the subject and every face of it move to the new id in one "
        "transaction (face ids, chips and times are kept) and the search index follows before "
        "the answer, on every replica as for enrollments; 409 `subject_exists` when the new id "
        "is taken (to combine two subjects: POST /subjects/{id}/merge). `metadata` replaces "
        "the metadata as a whole; with both, both happen in that one transaction. Audited as "
        "`rename_subject` (the old id in `detail.renamed_from`) or `update_subject` (the "
        "metadata's key names only). Needs scope `enroll`; a subject of another gallery is 404."
    ),
    responses={
        200: {"content": {"application/json": {"example": {
            "subject_id": "rose-tyler", "metadata": {"name": "Rose Tyler", "team": "desk"},
            "created_at": "2026-12-04T09:30:00.000Z", "face_count": 3,
            "renamed_from": "rose", "faces_moved": 3, "metadata_replaced": True,
        }}}},
        **error_responses(400, 401, 403, 404, 408, 409, 422, 429, 503),
    },
)
async def update_subject(
    principal: EnrollKey,
    subject_id: SubjectPath,
    services: ServicesDep,
    gallery: GalleryDep,
    body: Annotated[UpdateSubjectRequest, Body()],
) -> UpdateSubjectResponse:
    if body.subject_id is None and body.metadata is None:
        raise InvalidField("give subject_id (a new id), metadata, or both")
    metadata = parse_metadata(body.metadata) if body.metadata is not None else None
    if body.metadata is not None and metadata is None:
        metadata = {}
    result, keys_before = await run_in_threadpool(
        _update, gallery, subject_id, body, metadata, principal.namespace
    )
    detail: dict[str, Any] = {"metadata_replaced": result.metadata_replaced}
    if result.metadata_replaced:
        detail.update(metadata_keys_before=keys_before,
                      metadata_keys_after=sorted(result.metadata))
    if result.renamed_from is not None:
        detail.update(renamed_from=result.renamed_from, faces_moved=result.faces_moved)
        await audit_event(services, principal, "rename_subject",
                          subject_id=result.subject_id, detail=detail)
    elif result.metadata_replaced:
        await audit_event(services, principal, "update_subject",
                          subject_id=result.subject_id, detail=detail)
    return result


def _merge(
    gallery: Gallery, subject_id: str, into: str, namespace: Namespace
) -> MergeSubjectResponse:
    result = gallery.merge_subjects(namespace.internal(subject_id), namespace.internal(into))
    error = _move_error(result, subject_id, into)
    if error is not None:
        raise error
    record = gallery.get_subject(namespace.internal(into))
    return MergeSubjectResponse(
        subject_id=into,
        merged_subject_id=subject_id,
        faces_moved=result.faces_moved,
        faces_dropped=result.faces_dropped,
        face_count=0 if record is None else record.face_count,
    )


@router.post(
    "/{subject_id:subject}/merge",
    response_model=MergeSubjectResponse,
    summary="Merge a subject into another",
    description=(
        "Moves every face of the path's subject to `into` and removes the path's subject "
        "with its metadata, in one transaction; `into` keeps its id and metadata. The search "
        "index follows before the answer (on every replica, as for enrollments). A face "
        "whose image `into` already has is erased rather than moved (`faces_dropped`). For "
        "two ids of one person, or a mislabelled enrollment. Audited as `merge_subject` on "
        "`into`, with the merged id in `detail.merged_subject_id`. Needs scope `enroll`; 404 "
        "`subject_not_found` (the path's subject) or `target_not_found` (`into`)."
    ),
    responses={
        200: {"content": {"application/json": {"example": {
            "subject_id": "rose-tyler", "merged_subject_id": "rose-t", "faces_moved": 2,
            "faces_dropped": 0, "face_count": 5,
        }}}},
        **error_responses(400, 401, 403, 404, 408, 422, 429, 503),
    },
)
async def merge_subject(
    principal: EnrollKey,
    subject_id: SubjectPath,
    services: ServicesDep,
    gallery: GalleryDep,
    body: Annotated[MergeSubjectRequest, Body()],
) -> MergeSubjectResponse:
    result = await run_in_threadpool(_merge, gallery, subject_id, body.into, principal.namespace)
    await audit_event(services, principal, "merge_subject", subject_id=result.subject_id,
                      detail={"merged_subject_id": result.merged_subject_id,
                              "faces_moved": result.faces_moved,
                              "faces_dropped": result.faces_dropped})
    return result
