"""POST /verify: 1:1 — are these two faces the same person?"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from models.face_selection import RULE, Selection
from models.faces import Face
from models.negatives import nearest_negative, refused
from service.api.deps import GalleryDep, InferenceDep, ServicesDep, SettingsDep
from service.api.errors import (
    InvalidField,
    MultipleFaces,
    NoFace,
    SubjectNotFound,
    error_responses,
)
from service.api.routes.common import (
    face_selection_of,
    image_bytes,
    image_request_body,
    landmarks_list,
    operating_point_for,
    parse_body,
    run_in_threadpool,
    to_bbox,
)
from service.api.schemas import (
    NegativeMatch,
    VerifiedFace,
    VerifyForm,
    VerifyJSON,
    VerifyResponse,
)
from service.inference.inference import EmbeddedFaces, Inference, keep_all, most_confident
from service.inference.quality import quality_model
from service.security.auth import RecognizeImageKey

router = APIRouter(tags=["recognition"])


def _single(field: str) -> Callable[[list[Face]], list[Face]]:
    """``on_multiple=reject``: a second face in the photo refuses it."""

    def check(faces: list[Face]) -> list[Face]:
        if len(faces) > 1:
            raise MultipleFaces(f"{len(faces)} faces found in {field} and on_multiple=reject: "
                                "only the person being verified may be in the photo")
        return faces

    return check


async def _probe(
    inference: Inference,
    data: bytes,
    field: str,
    face_crop: bool = False,
    min_face_px: int | None = None,
    on_multiple: str = "primary",
) -> EmbeddedFaces:
    check = _single(field) if on_multiple == "reject" else keep_all
    found = await inference.primary_face(data, check, face_crop=face_crop,
                                         min_face_px=min_face_px)
    if not found.faces:
        raise NoFace(f"no face found in {field}")
    return found


def _best_of(found: EmbeddedFaces, scores: np.ndarray) -> EmbeddedFaces:
    """``on_multiple=any``: the face of ``found`` whose row of ``scores`` (faces x templates)
    holds the best similarity, as a one-face result whose selection says so."""
    best = scores.max(axis=1)
    i = int(np.argmax(best))
    n = len(found.faces)
    reason = ("the only face detected" if n == 1 else
              f"the face most similar to the subject of the {n} compared "
              f"({best[i]:.3f}; next best {np.sort(best)[-2]:.3f})")
    selection = Selection(i, found.faces[i], RULE if n == 1 else "best-match",
                          "only_face" if n == 1 else "best_match", reason,
                          found.faces_detected)
    return EmbeddedFaces([found.faces[i]], found.embeddings[i:i + 1], found.chips[i:i + 1],
                         found.faces_detected, found.image_sha256, selection,
                         found.quality[i:i + 1])


def _uploaded(found: EmbeddedFaces, source: str) -> VerifiedFace:
    face = found.faces[0]
    return VerifiedFace(
        source=source,  # type: ignore[arg-type]
        bbox=to_bbox(face.box),
        landmarks=landmarks_list(face.landmarks),
        detection_confidence=float(face.confidence),
        faces_detected=found.faces_detected,
        quality=quality_model(found.quality[0]),
        face_selection=face_selection_of(found.selection),
    )


def _negative_against(
    gallery: Any, stored: str, probe: np.ndarray, similarity: float, threshold: float
) -> NegativeMatch | None:
    """The subject's negative that refuses ``probe`` (``models.negatives``), or None."""
    records = [n for n in gallery.store.negatives([stored])
               if n.model == gallery.model_version and n.embedding is not None]
    if not records:
        return None
    hit = nearest_negative(probe, np.stack([n.embedding for n in records]))
    if hit is None or not refused(similarity, hit.similarity, threshold):
        return None
    return NegativeMatch(negative_id=records[hit.index].negative_id, similarity=hit.similarity)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    summary="Verify two faces (1:1)",
    description=(
        "Two modes. `image_a` + `image_b`: compares the primary face of each photo. "
        "`image` + `subject_id`: compares the primary face of the photo with every template "
        "of the subject; the best score counts. The primary face is the largest visible one "
        "(box clipped to the photo); faces of about the same size go to the most confident "
        "detection, then to the one nearest the centre; each uploaded face's "
        "`face_selection` says which rule step chose it. `matched` is "
        "`similarity >= threshold` (`match`, the same boolean, is deprecated); "
        "`distance` is the squared L2 distance of the unit embeddings (2 - 2 cos). A photo "
        "without a face is 422 `no_face`. Against a subject, `match` is also false when the "
        "face is at least as similar to one of the subject's negative examples (\"not this "
        "person\", POST /negatives) as to its best template (`suppressed_by`). Needs scope "
        "`recognize`; `subject_id` is looked up in the key's gallery.\n\n"
        "`on_multiple` says which face of a photo with several is compared: `primary` (the "
        "default, the rule above), `reject` (422 `multiple_faces` if anyone else is in the "
        "frame: kiosks), or `any` (subject mode only: every face, at most the server's "
        "`max_faces`, is compared and the best-matching one answers; its `face_selection` "
        "says `best_match`)."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 503),
    openapi_extra=image_request_body(VerifyForm, VerifyJSON),
)
async def verify(
    principal: RecognizeImageKey,
    request: Request,
    settings: SettingsDep,
    services: ServicesDep,
    gallery: GalleryDep,
    inference: InferenceDep,
) -> VerifyResponse:
    body = await parse_body(request, VerifyForm, VerifyJSON)
    on_multiple = body.on_multiple
    pair = body.image_a is not None or body.image_b is not None
    single = body.image is not None or body.subject_id is not None
    if pair == single:
        raise InvalidField("send either image_a and image_b, or image and subject_id")
    if pair and on_multiple == "any":
        raise InvalidField("on_multiple=any looks for a subject anywhere in a photo: send "
                           "image and subject_id (two photos compare their primary faces)")
    point = operating_point_for(services.operating_point, body.threshold)
    templates_compared = None
    suppressed: NegativeMatch | None = None
    if pair:
        if body.image_a is None or body.image_b is None:
            raise InvalidField("image_a and image_b must both be given")
        data_a = await image_bytes(body.image_a, "image_a")
        data_b = await image_bytes(body.image_b, "image_b")
        a, b = await asyncio.gather(
            _probe(inference, data_a, "image_a", body.face_crop, body.min_face_px, on_multiple),
            _probe(inference, data_b, "image_b", body.face_crop, body.min_face_px, on_multiple),
        )
        similarity = float(a.embeddings[0] @ b.embeddings[0])
        faces = [_uploaded(a, "image_a"), _uploaded(b, "image_b")]
    else:
        if body.image is None or body.subject_id is None:
            raise InvalidField("image and subject_id must both be given")
        data = await image_bytes(body.image, "image")
        subject_id = body.subject_id
        templates = await run_in_threadpool(
            gallery.subject_faces, principal.namespace.internal(subject_id)
        )
        templates = [t for t in templates if t.embedding is not None]
        if not templates:
            raise SubjectNotFound(f"subject {subject_id!r} is not enrolled")
        matrix = np.stack([np.asarray(t.embedding, dtype=np.float32) for t in templates])
        if on_multiple == "any":
            found = await inference.faces(data, most_confident(settings.max_faces),
                                          body.face_crop, body.min_face_px)
            if not found.faces:
                raise NoFace("no face found in image")
            probe = _best_of(found, found.embeddings @ matrix.T)
        else:
            probe = await _probe(inference, data, "image", body.face_crop, body.min_face_px,
                                 on_multiple)
        scores = matrix @ probe.embeddings[0]
        best = int(np.argmax(scores))
        similarity = float(scores[best])
        faces = [
            _uploaded(probe, "image"),
            VerifiedFace(
                source="template",
                face_id=templates[best].face_id,
                subject_id=subject_id,
                bbox=to_bbox(templates[best].bbox),
                landmarks=landmarks_list(templates[best].landmarks),
                detection_confidence=float(templates[best].detection_confidence),
            ),
        ]
        templates_compared = len(templates)
        if similarity >= point.threshold:
            suppressed = await run_in_threadpool(
                _negative_against, gallery, principal.namespace.internal(subject_id),
                probe.embeddings[0], similarity, point.threshold)
    similarity = max(-1.0, min(1.0, similarity))
    decision = similarity >= point.threshold and suppressed is None
    return VerifyResponse(
        matched=decision,
        match=decision,
        suppressed_by=suppressed,
        similarity=similarity,
        distance=max(0.0, 2.0 - 2.0 * similarity),
        threshold=point.threshold,
        operating_point=point,
        faces=faces,
        templates_compared=templates_compared,
        model=services.pipeline.model_version,
    )
