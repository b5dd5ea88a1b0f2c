"""POST /embed: faces and embeddings of a photo, for clients that keep their own store."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import InferenceDep, ServicesDep, SettingsDep
from service.api.errors import error_responses
from service.api.routes.common import (
    encode_embedding,
    image_bytes,
    image_request_body,
    landmarks_list,
    parse_body,
    to_bbox,
)
from service.api.schemas import EmbeddedFace, EmbedForm, EmbedJSON, EmbedResponse
from service.inference.inference import most_confident
from service.inference.quality import quality_model
from service.security.auth import RecognizeImageKey

router = APIRouter(tags=["recognition"])


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Detect and embed the faces of a photo",
    description=(
        "Every face (most confident first, at most `max_faces`, itself capped by the server's "
        "setting) with its box, landmarks and L2-normalised 128-d embedding, as floats and "
        "as URL-safe base64 of little-endian float32 (`embedding_b64`, accepted by GET "
        "/identify). Nothing is stored. A photo without faces gives an empty list. A photo "
        "with more faces than `max_faces` says so: `truncated: true`, and `faces_detected` "
        "counts them all. Needs "
        "scope `recognize`."
    ),
    responses=error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503),
    openapi_extra=image_request_body(EmbedForm, EmbedJSON),
)
async def embed(
    principal: RecognizeImageKey,
    request: Request,
    settings: SettingsDep,
    services: ServicesDep,
    inference: InferenceDep,
) -> EmbedResponse:
    body = await parse_body(request, EmbedForm, EmbedJSON)
    data = await image_bytes(body.image, "image")
    limit = min(body.max_faces or settings.max_faces, settings.max_faces)
    found = await inference.faces(
        data, most_confident(limit), body.face_crop, body.min_face_px
    )
    return EmbedResponse(
        faces=[
            EmbeddedFace(
                bbox=to_bbox(face.box),
                landmarks=landmarks_list(face.landmarks),
                detection_confidence=float(face.confidence),
                embedding=[float(v) for v in vector],
                embedding_b64=encode_embedding(vector),
                quality=quality_model(quality),
            )
            for face, vector, quality in zip(
                found.faces, found.embeddings, found.quality, strict=True
            )
        ],
        faces_detected=found.faces_detected,
        truncated=found.faces_detected > len(found.faces),
        max_faces=limit,
        model=services.pipeline.model_version,
    )
