"""GET /faces/{face_id}, GET /faces/{face_id}/chip, DELETE /faces/{face_id} and POST
/faces/{face_id}/move (a face split out of its subject): single templates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from service.api.deps import GalleryDep, ServicesDep
from service.api.errors import FaceNotFound, InvalidField, ServiceError, error_responses
from service.api.routes.common import audit_event, run_in_threadpool
from service.api.routes.subjects import face_info
from service.api.schemas import (
    DeleteFaceResponse,
    ErrorResponse,
    FaceInfo,
    MoveFaceRequest,
    MoveFaceResponse,
)
from service.gallery.gallery import Gallery
from service.security.auth import EnrollKey, EraseKey, Principal, ReadKey

router = APIRouter(prefix="/faces", tags=["gallery"])

FacePath = Annotated[str, Path(min_length=1, max_length=64, description="A face id.")]


def _get(gallery: Gallery, face_id: str, principal: Principal) -> FaceInfo:
    record = gallery.get_face(face_id)
    if record is None or not principal.namespace.owns(record.subject_id):
        raise FaceNotFound(f"face {face_id!r} does not exist")
    return face_info(record, principal.namespace)


@router.get(
    "/{face_id}",
    response_model=FaceInfo,
    summary="A stored face",
    description="Needs scope `read`; a face of another gallery is 404.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def get_face(principal: ReadKey, face_id: FacePath, gallery: GalleryDep) -> FaceInfo:
    return await run_in_threadpool(_get, gallery, face_id, principal)


def _chip(gallery: Gallery, face_id: str, principal: Principal) -> bytes:
    _get(gallery, face_id, principal)  # 404 for an unknown face or one of another gallery
    chip = gallery.get_chip(face_id)
    if chip is None:
        raise FaceNotFound(f"face {face_id!r} has no stored chip (store_chips is off)",
                           code="chip_not_found")
    return chip


@router.get(
    "/{face_id}/chip",
    summary="A stored face's aligned chip",
    response_class=Response,
    description="The aligned 150x150 face chip stored at enrollment, as JPEG (what re-embedding "
    "uses; the web console shows it as the face's thumbnail). Needs scope `read`, as GET "
    "/faces/{id}; a face of another gallery is 404, and so is a face stored without a chip "
    "(`chip_not_found`, when `store_chips` is off).",
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The chip, JPEG."},
        **error_responses(401, 403, 404, 408, 422, 429, 503),
    },
)
async def get_face_chip(principal: ReadKey, face_id: FacePath, gallery: GalleryDep) -> Response:
    chip = await run_in_threadpool(_chip, gallery, face_id, principal)
    # Private: a face image must not stay in a shared cache.
    return Response(chip, media_type="image/jpeg",
                    headers={"Cache-Control": "private, no-store"})


def _delete(gallery: Gallery, face_id: str, principal: Principal) -> DeleteFaceResponse:
    record = gallery.get_face(face_id)
    if record is None or not principal.namespace.owns(record.subject_id):
        raise FaceNotFound(f"face {face_id!r} does not exist")
    result = gallery.remove_face(face_id)
    if not result.row_ids:
        raise FaceNotFound(f"face {face_id!r} does not exist")
    subject_id = principal.namespace.external(record.subject_id) or record.subject_id
    return DeleteFaceResponse(face_id=face_id, subject_id=subject_id, deleted=True,
                              subject_deleted=result.subject_deleted)


@router.delete(
    "/{face_id}",
    response_model=DeleteFaceResponse,
    summary="Delete one template",
    description="Removes the face from storage and from the search index before answering "
    "(erased on disk as for subjects). A subject never stays without faces: deleting its "
    "last face erases the subject and its metadata too (`subject_deleted: true`; afterwards "
    "GET /subjects does not list it and GET /subjects/{id} is 404). Needs scope `erase`; a "
    "face of another gallery is 404.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def delete_face(
    principal: EraseKey, face_id: FacePath, services: ServicesDep, gallery: GalleryDep
) -> DeleteFaceResponse:
    result = await run_in_threadpool(_delete, gallery, face_id, principal)
    await audit_event(services, principal, "delete_face", subject_id=result.subject_id,
                      face_id=face_id, detail={"subject_deleted": result.subject_deleted})
    return result


class SameImageInSubject(ServiceError):
    status, code = 409, "duplicate_face"


def _move(gallery: Gallery, face_id: str, principal: Principal, subject_id: str
          ) -> MoveFaceResponse:
    namespace = principal.namespace
    record = gallery.get_face(face_id)
    if record is None or not namespace.owns(record.subject_id):
        raise FaceNotFound(f"face {face_id!r} does not exist")
    target = namespace.internal(subject_id)
    if record.subject_id == target:
        raise InvalidField(f"face {face_id!r} already belongs to {subject_id!r}")
    result = gallery.move_face(face_id, target)
    if result.record is None:  # deleted meanwhile
        raise FaceNotFound(f"face {face_id!r} does not exist")
    if result.conflict is not None:
        raise SameImageInSubject(
            f"{subject_id!r} already has a face of the same image ({result.conflict!r}); "
            "delete one of the two instead")
    old = result.from_subject or record.subject_id
    return MoveFaceResponse(face_id=face_id, from_subject_id=namespace.external(old) or old,
                            subject_id=subject_id, subject_created=result.subject_created,
                            from_subject_deleted=result.subject_deleted)


@router.post(
    "/{face_id}/move",
    response_model=MoveFaceResponse,
    summary="Move a face to another subject (split it out)",
    description="Gives one enrolled face to another subject, existing or new (created with no "
    "metadata): a face enrolled under the wrong person, or one person's subject split in two. "
    "Atomic: identify finds the face under its old subject or its new one, never both; on a "
    "shared PostgreSQL gallery every replica follows through the change log. The face keeps "
    "its id, embedding, chip and enrollment time; the old subject goes when this was its "
    "last face (`from_subject_deleted`), as with DELETE /faces/{id}. Refused (409 "
    "`duplicate_face`) when the target already has a face of the same image. Needs scope "
    "`enroll`, as PATCH and merge of subjects; audited as `move_face`.",
    responses={**error_responses(400, 401, 403, 404, 408, 409, 422, 429, 503), 409: {
        "model": ErrorResponse, "description": "`duplicate_face`: the target "
        "subject already has a face of the same image."}},
)
async def move_face(
    principal: EnrollKey, face_id: FacePath, services: ServicesDep, gallery: GalleryDep,
    body: MoveFaceRequest,
) -> MoveFaceResponse:
    result = await run_in_threadpool(_move, gallery, face_id, principal, body.subject_id)
    await audit_event(services, principal, "move_face", subject_id=result.subject_id,
                      face_id=face_id, detail={"from_subject_id": result.from_subject_id,
                                               "subject_created": result.subject_created,
                                               "from_subject_deleted":
                                                   result.from_subject_deleted})
    return result
