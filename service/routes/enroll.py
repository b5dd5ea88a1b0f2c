"""POST /enroll: one photo is enough to enroll a subject; more calls add templates."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from models.faces import Face
from service.auth import EnrollKey
from service.deps import GalleryDep, InferenceDep, ServicesDep, SettingsDep
from service.errors import MultipleFaces, NoFace, error_responses
from service.inference import largest_face
from service.routes.common import (
    audit_event,
    image_bytes,
    image_request_body,
    landmarks_list,
    parse_body,
    parse_metadata,
    run_in_threadpool,
    to_bbox,
)
from service.schemas import EnrollForm, EnrollJSON, EnrollResponse

router = APIRouter(tags=["enrollment"])


def _reject_several(faces: list[Face]) -> list[Face]:
    if len(faces) > 1:
        raise MultipleFaces(
            f"{len(faces)} faces found and on_multiple=reject; send a photo with one face"
        )
    return faces


@router.post(
    "/enroll",
    status_code=201,
    response_model=EnrollResponse,
    summary="Enroll a face for a subject",
    description=(
        "Detects the faces of the photo, embeds the largest (by box area) and stores it as a "
        "template of `subject_id` (created if new). `on_multiple=reject` refuses photos "
        "with several faces instead. Re-sending identical image bytes for the same subject "
        "is idempotent: the existing face is returned with `created: false` and status 200. "
        "The response is sent only after the enrollment is committed. Needs scope `enroll`; "
        "the subject belongs to the key's gallery."
    ),
    responses={
        200: {"model": EnrollResponse, "description": "Already enrolled (same image bytes)."},
        **error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503),
    },
    openapi_extra=image_request_body(EnrollForm, EnrollJSON),
)
async def enroll(
    principal: EnrollKey,
    request: Request,
    response: Response,
    settings: SettingsDep,
    services: ServicesDep,
    gallery: GalleryDep,
    inference: InferenceDep,
) -> EnrollResponse:
    body = await parse_body(request, EnrollForm, EnrollJSON)
    data = await image_bytes(body.image, "image")
    metadata = parse_metadata(body.metadata)
    select = _reject_several if body.on_multiple == "reject" else largest_face
    found = await inference.faces(
        data, lambda faces: largest_face(select(faces)), body.face_crop
    )
    if not found.faces:
        raise NoFace("no face found in the image")
    face = found.faces[0]
    chip_jpeg = await inference.encode_chip(found.chips[0]) if settings.store_chips else None
    record, created = await run_in_threadpool(
        lambda: gallery.enroll(
            principal.namespace.internal(body.subject_id),
            found.embeddings[0],
            bbox=face.box.as_tuple(),
            landmarks=landmarks_list(face.landmarks),
            detection_confidence=float(face.confidence),
            image_sha256=found.image_sha256,
            chip_jpeg=chip_jpeg,
            metadata=metadata,
        )
    )
    await audit_event(services, principal, "enroll", subject_id=body.subject_id,
                      face_id=record.face_id, detail={"created": created})
    if not created:
        response.status_code = 200
    return EnrollResponse(
        face_id=record.face_id,
        subject_id=body.subject_id,
        created=created,
        bbox=to_bbox(record.bbox),
        landmarks=landmarks_list(record.landmarks),
        detection_confidence=float(record.detection_confidence),
        faces_detected=found.faces_detected,
        model=record.model,
    )
