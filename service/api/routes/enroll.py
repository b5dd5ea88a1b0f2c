"""POST /enroll: one photo is enough to enroll a subject; more calls (or ``images``) add templates.

Each face is searched for in the gallery before it is stored: one that already matches
*another* subject at the identify decision is the same person enrolled under two ids, or a
mislabelled photo. ``on_duplicate`` says whether that is reported (``warn``) or refused
(``reject``). The check is advisory: two concurrent enrollments of one face under two ids can
both pass it (it is not a uniqueness constraint of the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from models.face_selection import FaceNotDetected, Selection, requested_face
from models.faces import Face
from models.imageio import ImageError
from service.api.deps import GalleryDep, InferenceDep, Services, ServicesDep, SettingsDep
from service.api.errors import (
    IMAGE_ERROR_STATUS,
    DuplicateFace,
    Forbidden,
    InvalidBase64,
    InvalidField,
    MultipleFaces,
    NoFace,
    NotAFace,
    PoorQuality,
    ServiceError,
    error_responses,
)
from service.api.identifiers import check_new_subject_id
from service.api.routes.common import (
    audit_event,
    candidates_for,
    face_selection_of,
    identify_point,
    image_bytes,
    image_request_body,
    landmarks_list,
    parse_body,
    parse_metadata,
    run_in_threadpool,
    to_bbox,
    too_many_images,
)
from service.api.schemas import (
    Candidate,
    EnrollBatchResponse,
    EnrollForm,
    EnrollImageOutcome,
    EnrollJSON,
    EnrollResponse,
    ErrorBody,
    FaceChoice,
)
from service.config import Settings
from service.gallery.gallery import Gallery
from service.gallery.store.base import FaceRecord
from service.inference.inference import EmbeddedFaces, FacePicker, Inference, keep_all
from service.inference.quality import check_enroll_quality, quality_model
from service.security.auth import EnrollKey, Principal

router = APIRouter(tags=["enrollment"])

# What one bad photo can be refused for before detection is done (no face and a rejected
# duplicate are found after it); anything else (overload, not ready, a store failure) fails
# the whole request, so a retry (idempotent per photo) finishes the job.
_PHOTO_ERRORS = (ImageError, InvalidBase64, MultipleFaces, NotAFace)


def _reject_several(faces: list[Face]) -> list[Face]:
    if len(faces) > 1:
        raise MultipleFaces(
            f"{len(faces)} faces found and on_multiple=reject; send a photo with one face"
        )
    return faces


class FaceNotInPhoto(ServiceError):
    """The request's ``face`` (an index, a box) names no detected face of the photo."""

    status, code = 422, "face_not_detected"


def _picker(choice: FaceChoice) -> FacePicker:
    """The request's ``face`` as the inference's face picker (instead of the primary face)."""

    def pick(faces: list[Face], height: int, width: int) -> Selection | None:
        try:
            return requested_face(faces, box=choice.box, index=choice.index)
        except FaceNotDetected as exc:
            raise FaceNotInPhoto(str(exc)) from None

    return pick


def _face_choice(value: FaceChoice | str | None) -> FaceChoice | None:
    """``face`` as a ``FaceChoice``: multipart sends it as JSON text."""
    if value is None or isinstance(value, FaceChoice):
        return value
    if not value.strip():
        return None
    try:
        return FaceChoice.model_validate_json(value)
    except ValueError as exc:
        first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise InvalidField(
            f"face must be a JSON object {{\"box\": [left, top, right, bottom]}} or "
            f"{{\"index\": n}}: {first}"
        ) from None


class NothingEnrolled(ServiceError):
    """No photo of the request was enrolled; ``details`` has each one's outcome. Takes the
    photos' own status and code when they all failed alike (see ``_nothing_enrolled``)."""

    status, code = 422, "nothing_enrolled"


@dataclass
class _Photo:
    """What became of one photo: stored (``record``) or refused (``error``)."""

    index: int
    found: EmbeddedFaces | None = None
    record: FaceRecord | None = None
    created: bool = False
    duplicate: Candidate | None = None
    error: ServiceError | ImageError | None = None

    def error_status(self) -> tuple[int, str, str]:
        """(HTTP status, code, message) the photo alone would be refused with."""
        error = self.error
        if isinstance(error, ServiceError):
            return error.status, error.code, error.message
        assert error is not None
        code = getattr(error, "code", "not_an_image")
        return IMAGE_ERROR_STATUS.get(code, 415), code, str(error) or code

    def outcome(self) -> EnrollImageOutcome:
        fields: dict[str, Any] = {}
        if self.found is not None:
            fields["faces_detected"] = self.found.faces_detected
            if self.found.faces:
                fields["quality"] = quality_model(self.found.quality[0])
                fields["face_selection"] = face_selection_of(self.found.selection)
        if self.record is not None:
            fields.update(
                face_id=self.record.face_id,
                bbox=to_bbox(self.record.bbox),
                landmarks=landmarks_list(self.record.landmarks),
                detection_confidence=float(self.record.detection_confidence),
            )
        elif self.found is not None and self.found.faces:
            face = self.found.faces[0]  # refused (duplicate, quality): the face that was found
            fields.update(
                bbox=to_bbox(face.box),
                landmarks=landmarks_list(face.landmarks),
                detection_confidence=float(face.confidence),
            )
        if self.error is not None:
            _, code, message = self.error_status()
            fields["error"] = ErrorBody(code=code, message=message)
        if self.record is None:
            status = "rejected"
        else:
            status = "enrolled" if self.created else "already_enrolled"
        return EnrollImageOutcome(
            index=self.index, status=status, possible_duplicate=self.duplicate, **fields
        )


@dataclass
class _Enrollment:
    """The parts of one request that every photo of it shares."""

    principal: Principal
    subject_id: str
    metadata: dict[str, Any] | None
    replace_metadata: bool
    on_multiple: str
    on_duplicate: str
    threshold: float
    store_chips: bool
    settings: Settings
    force: bool
    face_crop: bool
    min_face_px: int | None
    services: Services
    gallery: Gallery
    inference: Inference
    # The subject's metadata when the request began, or None: it did not exist (then every
    # face is audited as ``enroll``, else as ``add_face``).
    existing_metadata: dict[str, Any] | None = None
    pick: FacePicker | None = None  # the request's ``face``, when it chose one

    @property
    def existing_keys(self) -> list[str] | None:
        return None if self.existing_metadata is None else sorted(self.existing_metadata)

    def metadata_status(self) -> str | None:
        """What became of the request's metadata (``EnrollResponse.metadata_status``)."""
        if self.metadata is None:
            return None
        if self.existing_metadata is None:
            return "set"
        if self.metadata == self.existing_metadata:
            return "unchanged"
        return "replaced" if self.replace_metadata else "kept"

    async def possible_duplicate(self, embedding: np.ndarray) -> Candidate | None:
        """The best *other* subject of the caller's gallery at or above the threshold.

        Two subjects suffice: at most one of them is the subject being enrolled (its own
        faces, including earlier photos of this very request, are never duplicates)."""
        [candidates] = await run_in_threadpool(
            candidates_for, self.gallery, embedding[None, :], 2, (),
            self.principal.namespace.external,
        )
        for candidate in candidates:
            if candidate.subject_id != self.subject_id:
                return candidate if candidate.similarity >= self.threshold else None
        return None

    async def photo(self, index: int, value: str | bytes, field: str) -> _Photo:
        """Enroll one photo. A photo refused before detection raises (one of
        ``_PHOTO_ERRORS``); after it (no face, a rejected duplicate) it is returned with its
        ``error``, so that its outcome can still say what was found."""
        data = await image_bytes(value, field)
        check = _reject_several if self.on_multiple == "reject" else keep_all
        found = await self.inference.primary_face(
            data, check, self.face_crop, self.min_face_px, pick=self.pick
        )
        result = _Photo(index, found=found)
        if not found.faces:
            result.error = NoFace("no face found in the image")
            return result
        try:
            check_enroll_quality(found.quality[0], self.settings, force=self.force)
        except PoorQuality as exc:
            result.error = exc
            return result
        result.duplicate = await self.possible_duplicate(found.embeddings[0])
        if result.duplicate is not None and self.on_duplicate == "reject":
            dup = result.duplicate
            result.error = DuplicateFace(
                f"the face already matches subject {dup.subject_id!r} (similarity "
                f"{dup.similarity:.3f}, threshold {self.threshold:.3f}) and "
                "on_duplicate=reject: the same person under another id, or a mislabelled photo"
            )
            return result
        face = found.faces[0]
        chip_jpeg = await self.inference.encode_chip(found.chips[0]) if self.store_chips else None
        record, created = await run_in_threadpool(
            lambda: self.gallery.enroll(
                self.principal.namespace.internal(self.subject_id),
                found.embeddings[0],
                bbox=face.box.as_tuple(),
                landmarks=landmarks_list(face.landmarks),
                detection_confidence=float(face.confidence),
                image_sha256=found.image_sha256,
                chip_jpeg=chip_jpeg,
                metadata=self.metadata,
                replace_metadata=self.replace_metadata,
            )
        )
        action, detail = self.audit_of(created)
        await audit_event(self.services, self.principal, action, subject_id=self.subject_id,
                          face_id=record.face_id, detail=detail)
        result.record, result.created = record, created
        return result

    def audit_of(self, created: bool) -> tuple[str, dict[str, Any]]:
        """The audit action and detail of one stored (or replayed) face: which keys of the
        metadata were replaced (names only: the audit log never holds personal data)."""
        if self.existing_keys is None:
            return "enroll", {"created": created}
        detail: dict[str, Any] = {"created": created, "metadata_replaced": False}
        if self.metadata is not None and self.replace_metadata:
            detail.update(metadata_replaced=True, metadata_keys_before=self.existing_keys,
                          metadata_keys_after=sorted(self.metadata))
        return "add_face", detail

    async def each(self, index: int, value: str | bytes) -> _Photo:
        """``photo``, with a refused photo's error kept in its result instead of raised."""
        try:
            return await self.photo(index, value, f"images[{index}]")
        except _PHOTO_ERRORS as exc:
            return _Photo(index, error=exc)


def _nothing_enrolled(photos: list[_Photo]) -> ServiceError:
    """The error of an ``images`` request that stored nothing: the photos' own status and
    code when they all failed alike (one photo: exactly its error), else 422
    ``nothing_enrolled``; ``details`` has every photo's outcome either way."""
    statuses = [photo.error_status() for photo in photos]
    details = [photo.outcome().model_dump(mode="json") for photo in photos]
    kinds = {(status, code) for status, code, _ in statuses}
    if len(statuses) == 1:
        status, code, message = statuses[0]
    elif len(kinds) == 1:
        status, code = kinds.pop()
        message = f"none of the {len(photos)} images was enrolled ({code}); see details"
    else:
        status, code = NothingEnrolled.status, NothingEnrolled.code
        codes = ", ".join(sorted({code for _, code, _ in statuses}))
        message = f"none of the {len(photos)} images was enrolled ({codes}); see details"
    error = NothingEnrolled(message, code=code, details=details)
    error.status = status
    return error


@router.post(
    "/enroll",
    status_code=201,
    response_model=EnrollResponse | EnrollBatchResponse,
    summary="Enroll one or several photos of a subject",
    description=(
        "Detects the faces of the photo, embeds the primary one (the largest visible face; "
        "about equal sizes: the most confident, then the one nearest the centre) and stores "
        "it as a template of `subject_id` (created if new); `face_selection` says which face "
        "was taken and why. `on_multiple=reject` refuses photos with several faces instead; "
        "`face` chooses the face to enroll (a box in the photo's pixels, or its index in POST "
        "/embed's list): 422 `face_not_detected` when no detection matches it. "
        "Re-sending identical image bytes for the same subject is idempotent: the existing "
        "face is returned with `created: false` and status 200. `metadata` is stored with a "
        "new subject; an existing subject keeps its metadata unless `replace_metadata=true` "
        "(`metadata_status` says which happened). A new subject id may not contain `/` "
        "(422). "
        "Before storing, the face is searched for in the gallery: if it already matches "
        "another subject at the identify decision, that subject and the similarity are "
        "reported in `possible_duplicate` (`on_duplicate=warn`, the default) or the photo is "
        "refused with 409 `duplicate_face` (`on_duplicate=reject`).\n\n"
        "Several photos of one subject: send `images` instead of `image` (at most the "
        "server's `max_enroll_images`, 10 by default; all within the body limit). Each is "
        "enrolled on its own and the `EnrollBatchResponse` lists each one's outcome in "
        "order; a bad photo does not stop the others. Status: 201 when any face was stored, "
        "200 when every enrolled photo was already enrolled, and when none was enrolled the "
        "error of the photos (its own status and code if they all failed alike, else 422 "
        "`nothing_enrolled`) with every outcome in `error.details`. Photos of one request "
        "are the same person and never flag each other as duplicates.\n\n"
        "A face that breaks the server's quality limits (`FACESERVE_ENROLL_*` settings) is "
        "refused with 422 `poor_quality` naming the measure, its value and the limit, unless "
        "`force=true`; every response reports each face's `quality`.\n\n"
        "The response is sent only after the enrollments are committed. Needs scope "
        "`enroll`; the subject belongs to the key's gallery."
    ),
    responses={
        200: {
            "model": EnrollResponse | EnrollBatchResponse,
            "description": "Already enrolled: the same image bytes (`image`), or every "
            "enrolled photo of `images`.",
        },
        201: {
            "description": "Stored: an `EnrollResponse` for `image`, an `EnrollBatchResponse` "
            "for `images`."
        },
        **error_responses(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
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
) -> EnrollResponse | EnrollBatchResponse:
    body = await parse_body(
        request, EnrollForm, EnrollJSON, lists=("images",), max_files=settings.max_enroll_images
    )
    if (body.image is None) == (body.images is None):
        raise InvalidField("give image (one photo) or images (several photos), not both")
    if body.images is not None and len(body.images) > settings.max_enroll_images:
        raise too_many_images(settings.max_enroll_images)
    choice = _face_choice(body.face)
    if choice is not None and body.images is not None:
        raise InvalidField("face chooses a face of one photo: send it with image, not images")
    if choice is not None and body.on_multiple == "reject":
        raise InvalidField("face chooses one of several faces; on_multiple=reject refuses "
                           "photos with several faces: send one or the other")
    existing = await run_in_threadpool(
        gallery.get_subject, principal.namespace.internal(body.subject_id)
    )
    if existing is None:
        try:
            check_new_subject_id(body.subject_id)
        except ValueError as exc:
            raise InvalidField(str(exc)) from None
    if existing is not None and settings.add_faces_scope not in principal.scopes:
        raise Forbidden(
            f"subject {body.subject_id!r} already exists; adding faces to an existing subject "
            f"needs a key with scope {settings.add_faces_scope!r} on this server"
        )
    point = identify_point(services, namespace=principal.namespace)
    job = _Enrollment(
        principal=principal,
        subject_id=body.subject_id,
        metadata=parse_metadata(body.metadata),
        replace_metadata=body.replace_metadata,
        on_multiple=body.on_multiple,
        on_duplicate=body.on_duplicate,
        threshold=point.threshold,
        store_chips=settings.store_chips,
        settings=settings,
        force=body.force,
        face_crop=body.face_crop,
        min_face_px=body.min_face_px,
        services=services,
        gallery=gallery,
        inference=inference,
        existing_metadata=None if existing is None else dict(existing.metadata),
        pick=None if choice is None else _picker(choice),
    )
    if body.images is not None:
        # One at a time: a batch holds one decoded photo at once, like a single request.
        photos = [await job.each(i, value) for i, value in enumerate(body.images)]
        if all(photo.record is None for photo in photos):
            raise _nothing_enrolled(photos)
        created = sum(photo.created for photo in photos)
        enrolled = sum(photo.record is not None for photo in photos)
        response.status_code = 201 if created else 200
        return EnrollBatchResponse(
            subject_id=body.subject_id,
            images=[photo.outcome() for photo in photos],
            enrolled=enrolled,
            created=created,
            rejected=len(photos) - enrolled,
            threshold=point.threshold,
            operating_point=point,
            model=services.pipeline.model_version,
            metadata_status=job.metadata_status(),
        )

    assert body.image is not None
    photo = await job.photo(0, body.image, "image")
    if isinstance(photo.error, DuplicateFace):
        raise _nothing_enrolled([photo])  # the outcome (who matched) in details
    if photo.error is not None:
        raise photo.error
    record, found = photo.record, photo.found
    assert record is not None and found is not None
    if not photo.created:
        response.status_code = 200
    return EnrollResponse(
        face_id=record.face_id,
        subject_id=body.subject_id,
        created=photo.created,
        bbox=to_bbox(record.bbox),
        landmarks=landmarks_list(record.landmarks),
        detection_confidence=float(record.detection_confidence),
        faces_detected=found.faces_detected,
        face_selection=face_selection_of(found.selection),
        model=record.model,
        possible_duplicate=photo.duplicate,
        quality=quality_model(found.quality[0]),
        metadata_status=job.metadata_status(),
    )
