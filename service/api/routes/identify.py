"""GET /identify (a stored face or a vector) and POST /identify (every face of a photo): 1:n."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request

from service.api.deps import GalleryDep, InferenceDep, ServicesDep, SettingsDep
from service.api.errors import FaceNotFound, InvalidField, error_responses
from service.api.routes.clusters import expire, pool_faces_for, remember
from service.api.routes.common import (
    candidates_for,
    decode_embedding,
    encode_embedding,
    identify_point,
    image_bytes,
    image_request_body,
    landmarks_list,
    match_of,
    one_subject_per_photo,
    parse_body,
    run_in_threadpool,
    suppress_by_negatives,
    to_bbox,
)
from service.api.schemas import (
    MAX_K,
    IdentifiedFace,
    IdentifyForm,
    IdentifyImageResponse,
    IdentifyJSON,
    IdentifyResponse,
    IdentifySearchJSON,
)
from service.gallery.gallery import Gallery
from service.inference.inference import most_confident
from service.inference.quality import quality_model
from service.security.auth import Principal, RecognizeImageKey, RecognizeKey

router = APIRouter(tags=["recognition"])


@router.get(
    "/identify",
    response_model=IdentifyResponse,
    summary="Identify a stored face or an embedding (1:n)",
    description=(
        "For clients that already hold a face: give exactly one of `face_id` (a stored "
        "template; that template itself is left out of the candidates, other templates of "
        "its subject are not) or `embedding`. Candidates are subjects, each once with its "
        "best-scoring face, most similar first; `match` is the first candidate that no "
        "negative example of its subject suppresses (`suppressed_by`) if its similarity "
        "reaches the threshold, else null (unknown person). Needs scope "
        "`recognize`; only the key's gallery is searched. `include_metadata=true` adds each "
        "candidate's subject metadata and needs scope `read` as well."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 422, 429, 503),
)
async def identify_stored(
    principal: RecognizeKey,
    services: ServicesDep,
    gallery: GalleryDep,
    face_id: Annotated[
        str | None, Query(max_length=64, description="A stored face to search with.")
    ] = None,
    embedding: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="URL-safe base64 of 128 little-endian float32 (as returned by "
            "POST /embed in `embedding_b64`); re-normalised before searching.",
        ),
    ] = None,
    k: Annotated[
        int, Query(ge=1, le=MAX_K, description="Candidate subjects to return.")
    ] = 5,
    threshold: Annotated[
        float | None,
        Query(ge=-1.0, le=1.0, description="Cosine threshold for this request only."),
    ] = None,
    identify_fpir: Annotated[
        float | None,
        Query(gt=0.0, lt=1.0, description="Target false positive identification rate for "
              "this request (default: the server's `identify_fpir`); ignored with `threshold`."),
    ] = None,
    include_metadata: Annotated[
        bool,
        Query(description="Add each candidate's subject metadata; needs scope `read` too."),
    ] = False,
) -> IdentifyResponse:
    return await _search(principal, services, gallery, face_id, embedding, k, threshold,
                         identify_fpir, include_metadata)


@router.post(
    "/identify/search",
    response_model=IdentifyResponse,
    summary="Identify a stored face or an embedding (1:n), the query in the body",
    description=(
        "GET /identify with its parameters in a JSON body instead of the URL, so that a face "
        "template never appears in a query string (proxies and browsers log those). Same "
        "answers, scope and errors."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 422, 429, 503),
)
async def identify_search(
    principal: RecognizeKey,
    services: ServicesDep,
    gallery: GalleryDep,
    body: IdentifySearchJSON,
) -> IdentifyResponse:
    return await _search(principal, services, gallery, body.face_id, body.embedding, body.k,
                         body.threshold, body.identify_fpir, body.include_metadata)


async def _search(
    principal: Principal,
    services: Any,
    gallery: Gallery,
    face_id: str | None,
    embedding: str | None,
    k: int,
    threshold: float | None,
    identify_fpir: float | None,
    include_metadata: bool = False,
) -> IdentifyResponse:
    if include_metadata:
        principal.require("read", "include_metadata")
    if (face_id is None) == (embedding is None):
        raise InvalidField("give exactly one of face_id or embedding")
    point = identify_point(services, threshold, identify_fpir, principal.namespace)
    exclude: tuple[str, ...] = ()
    if face_id is not None:
        query = await run_in_threadpool(_stored_embedding, gallery, face_id, principal)
        exclude = (face_id,)
    else:
        assert embedding is not None
        query = decode_embedding(embedding)
    [candidates] = await run_in_threadpool(
        candidates_for, gallery, query[None, :], k, exclude, principal.namespace.external
    )
    await run_in_threadpool(suppress_by_negatives, gallery, query[None, :], [candidates],
                            point.threshold, principal.namespace)
    if include_metadata:
        await run_in_threadpool(with_metadata, gallery, [candidates], principal)
    match = match_of(candidates, point.threshold)
    return IdentifyResponse(
        candidates=candidates,
        match=match,
        matched=match is not None,
        threshold=point.threshold,
        operating_point=point,
        model=services.pipeline.model_version,
    )


def with_metadata(gallery: Gallery, per_face: list[list[Any]], principal: Principal) -> None:
    """Set each candidate's ``metadata`` (blocking): one store read per distinct subject."""
    cache: dict[str, dict[str, Any]] = {}
    for candidates in per_face:
        for candidate in candidates:
            subject = candidate.subject_id
            if subject not in cache:
                record = gallery.store.get_subject(
                    principal.namespace.internal(subject), with_faces=False)
                # Erased since the search: no metadata left to show.
                cache[subject] = record.metadata if record is not None else {}
            candidate.metadata = cache[subject]


def _stored_embedding(gallery: Gallery, face_id: str, principal: Principal) -> np.ndarray:
    record = gallery.get_face(face_id)
    if record is None or not principal.namespace.owns(record.subject_id):
        raise FaceNotFound(f"face {face_id!r} does not exist")
    if record.embedding is None:  # a listing without vectors: fetch the subject's templates
        for face in gallery.subject_faces(record.subject_id):
            if face.face_id == face_id and face.embedding is not None:
                return np.asarray(face.embedding, dtype=np.float32)
        raise FaceNotFound(f"face {face_id!r} does not exist")
    return np.asarray(record.embedding, dtype=np.float32)


@router.post(
    "/identify",
    response_model=IdentifyImageResponse,
    summary="Identify every face of a photo (1:n)",
    description=(
        "Detects the faces of the photo (most confident first, at most `max_faces`, itself "
        "capped by the server's setting) and searches the gallery with each. One person "
        "appears at most once in a photo: when two faces would match the same subject, the "
        "better-scoring face keeps it and the other takes its next candidate at or above "
        "the threshold, or none (unknown). A candidate whose subject has a negative example "
        "(\"not this person\") at least as similar to the face as the subject's best enrolled "
        "face is never the match (`suppressed_by` says which negative). A photo without faces "
        "gives an empty `faces` list; one with more faces than `max_faces` says so "
        "(`truncated: true`, `faces_detected` counts them all). Needs scope `recognize`; only "
        "the key's gallery is searched. `include_metadata` adds each candidate's subject "
        "metadata and needs scope `read` as well."
    ),
    responses=error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503),
    openapi_extra=image_request_body(IdentifyForm, IdentifyJSON),
)
async def identify_image(
    principal: RecognizeImageKey,
    request: Request,
    settings: SettingsDep,
    services: ServicesDep,
    gallery: GalleryDep,
    inference: InferenceDep,
) -> IdentifyImageResponse:
    body = await parse_body(request, IdentifyForm, IdentifyJSON)
    if body.include_metadata:  # before the photo is decoded and searched
        principal.require("read", "include_metadata")
    data = await image_bytes(body.image, "image")
    point = identify_point(services, body.threshold, body.identify_fpir, principal.namespace)
    limit = min(body.max_faces or settings.max_faces, settings.max_faces)
    found = await inference.faces(
        data, most_confident(limit), body.face_crop, body.min_face_px
    )

    def search() -> list[list[Any]]:  # one thread-pool hop for the two reads
        per_face = candidates_for(gallery, found.embeddings, body.k, (),
                                  principal.namespace.external)
        suppress_by_negatives(gallery, found.embeddings, per_face, point.threshold,
                              principal.namespace)
        return per_face

    per_face = await run_in_threadpool(search)
    matches = one_subject_per_photo(per_face, point.threshold)
    if body.include_metadata:
        await run_in_threadpool(with_metadata, gallery, per_face, principal)
    pool_ids: list[str | None] = [None] * len(matches)
    if body.remember_unknown:
        pool_ids = await _remember_unknown(
            principal, settings, services, gallery, inference, found, matches, body.source)
    faces = [
        IdentifiedFace(
            bbox=to_bbox(face.box),
            landmarks=landmarks_list(face.landmarks),
            detection_confidence=float(face.confidence),
            candidates=candidates,
            match=match,
            matched=match is not None,
            quality=quality_model(quality),
            unknown_face_id=pool_id,
            embedding_b64=encode_embedding(vector) if body.return_embedding else None,
        )
        for face, candidates, match, quality, pool_id, vector in zip(
            found.faces, per_face, matches, found.quality, pool_ids, found.embeddings,
            strict=True,
        )
    ]
    return IdentifyImageResponse(
        faces=faces,
        faces_detected=found.faces_detected,
        truncated=found.faces_detected > len(found.faces),
        max_faces=limit,
        threshold=point.threshold,
        operating_point=point,
        model=services.pipeline.model_version,
    )


async def _remember_unknown(
    principal: Principal, settings: Any, services: Any, gallery: Gallery, inference: Any,
    found: Any, matches: list[Any], source: str | None,
) -> list[str | None]:
    """Keep the unmatched faces in the unknown-face pool (README: Clustering)."""
    if not settings.remember_unknown:
        raise InvalidField("remember_unknown is off on this server "
                           "(FACESERVE_REMEMBER_UNKNOWN)", code="remember_unknown_off")
    chips = [await inference.encode_chip(chip) if settings.store_chips and m is None else None
             for chip, m in zip(found.chips, matches, strict=True)]
    faces, ids = pool_faces_for(principal, found, chips, matches, source,
                                services.pipeline.model_version)

    def store() -> None:
        expire(gallery, settings)
        remember(gallery, faces)

    await run_in_threadpool(store)
    return ids
