"""GET /faces/{face_id} and DELETE /faces/{face_id}: single templates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.deps import GalleryDep
from service.errors import FaceNotFound, error_responses
from service.gallery import Gallery
from service.routes.common import run_in_threadpool
from service.routes.subjects import face_info
from service.schemas import DeleteFaceResponse, FaceInfo

router = APIRouter(prefix="/faces", tags=["gallery"])

FacePath = Annotated[str, Path(min_length=1, max_length=64, description="A face id.")]


def _get(gallery: Gallery, face_id: str) -> FaceInfo:
    record = gallery.get_face(face_id)
    if record is None:
        raise FaceNotFound(f"face {face_id!r} does not exist")
    return face_info(record)


@router.get(
    "/{face_id}",
    response_model=FaceInfo,
    summary="A stored face",
    responses=error_responses(404, 422, 503),
)
async def get_face(face_id: FacePath, gallery: GalleryDep) -> FaceInfo:
    return await run_in_threadpool(_get, gallery, face_id)


def _delete(gallery: Gallery, face_id: str) -> DeleteFaceResponse:
    record = gallery.get_face(face_id)
    if record is None or not gallery.delete_face(face_id):
        raise FaceNotFound(f"face {face_id!r} does not exist")
    return DeleteFaceResponse(face_id=face_id, subject_id=record.subject_id, deleted=True)


@router.delete(
    "/{face_id}",
    response_model=DeleteFaceResponse,
    summary="Delete one template",
    description="Removes the face from storage and from the search index before answering.",
    responses=error_responses(404, 422, 503),
)
async def delete_face(face_id: FacePath, gallery: GalleryDep) -> DeleteFaceResponse:
    return await run_in_threadpool(_delete, gallery, face_id)
