"""The response models of the faceserve API: one definition, shared by server and client.

The server (``service.api.schemas`` re-exports these) builds its responses and its OpenAPI
document from them; ``faceserve_client`` parses the responses into them. Only ``pydantic`` is
needed here, so a client app gets typed results without the server's dependencies. Fields the
server adds later are ignored by older clients (pydantic's default), not an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AuditEvent",
    "AuditList",
    "BBox",
    "CallerInfo",
    "Candidate",
    "ClusterChip",
    "ClusterFace",
    "ClusterInfo",
    "ClusterList",
    "CreatedKey",
    "DeleteClusterResponse",
    "DeleteFaceResponse",
    "DeleteGalleryResponse",
    "DeleteNegativeResponse",
    "DeleteSubjectResponse",
    "DetectionConfidence",
    "EmbedResponse",
    "EmbeddedFace",
    "EnrollBatchResponse",
    "EnrollImageOutcome",
    "EnrollResponse",
    "ErrorBody",
    "ErrorResponse",
    "FaceInfo",
    "FaceList",
    "FaceSelection",
    "GalleryInfo",
    "GalleryList",
    "HealthResponse",
    "IdentifiedFace",
    "IdentifyImageResponse",
    "IdentifyResponse",
    "KeyInfo",
    "KeyList",
    "Landmarks",
    "MergeSubjectResponse",
    "MoveFaceResponse",
    "NameClusterResponse",
    "NegativeInfo",
    "NegativeList",
    "NegativeMatch",
    "OperatingPoint",
    "Quality",
    "ReadyResponse",
    "ReplicationLag",
    "Scope",
    "SelfTestReport",
    "SubjectDetail",
    "SubjectList",
    "SubjectSummary",
    "UpdateSubjectResponse",
    "VerifiedFace",
    "VerifyResponse",
]


def _fill_decision(data: Any, boolean_match: bool = False) -> Any:
    """An answer of a server older than ``matched`` gets it from ``match`` (and the reverse
    for verify, whose deprecated ``match`` is the same boolean)."""
    if isinstance(data, dict):
        if "matched" not in data and "match" in data:
            data = {**data, "matched": bool(data["match"])}
        if boolean_match and "match" not in data and "matched" in data:
            data = {**data, "match": data["matched"]}
    return data


# ---------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.", examples=["no_face"])
    message: str = Field(description="Human-readable explanation.")
    details: list[dict[str, Any]] | None = Field(
        None,
        description="Per-field problems, for validation errors; each image's outcome "
        "(`EnrollImageOutcome`), when POST /enroll enrolled none of its images; the broken "
        "limits (`measure`, `value`, `limit`, `bound`) for `poor_quality`.",
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody = Field(description="What went wrong.")


# ---------------------------------------------------------------- shared parts


class BBox(BaseModel):
    """A face box in image pixels; ``right`` and ``bottom`` are inclusive (dlib convention).

    Detector boxes may extend past the image border.
    """

    left: int = Field(description="Left edge, pixels from the photo's left (may be negative).")
    top: int = Field(description="Top edge, pixels from the photo's top (may be negative).")
    right: int = Field(description="Right edge, inclusive (may pass the photo's width).")
    bottom: int = Field(description="Bottom edge, inclusive (may pass the photo's height).")


Landmarks = Annotated[
    list[list[float]],
    Field(description="Five landmarks [x, y] in image pixels: with dlib's detector (the "
          "default) eye corners and nose base; with an SCRFD detector eye centres, nose tip and "
          "mouth corners."),
]


DetectionConfidence = Annotated[
    float,
    Field(
        description="The face detector's raw score (dlib's MMOD linear detector, not a "
        "probability): always > 0, since windows scoring 0 or less are not faces, and with no "
        "upper bound. Faces found in ordinary photos score about 0.95-1.15 (67 faces of the "
        "test photos: 0.97-1.11; the training margin is 1), so values above 1 are normal; "
        "blurred, dark or turned faces score lower (the default enrollment limit is 0.5). "
        "With an SCRFD detector (`detector` in GET /readyz) it is that model's face "
        "probability instead, from its score threshold (0.5 by default) to 1. Comparable "
        "between faces and photos of one detector, not across detectors.",
        examples=[1.04],
    ),
]


class OperatingPoint(BaseModel):
    """Which threshold decided ``match``, and where it came from."""

    threshold: float = Field(description="Cosine similarity at or above which faces match.")
    source: Literal["setting", "profile", "model", "request", "fpir"] = Field(
        description="`setting`: the configured number; `profile`: the calibrated operating "
        "point for `far` from the evaluation profile; `model`: the operating point recorded "
        "in the exported model's manifest (validation on held-out identities); `request`: "
        "given with this request; `fpir` (identification): computed for this gallery as it "
        "is now so that at most about `fpir` of strangers are matched to anyone."
    )
    far: float | None = Field(
        None,
        description="Target false-accept rate per comparison (profile and model); with "
        "`fpir`, the rate each of the gallery's comparisons may have.",
    )
    fpir: float | None = Field(
        None,
        description="Target false positive identification rate: the share of strangers "
        "(never enrolled) that a 1:n search may match to someone. Identification only.",
    )
    gallery_faces: int | None = Field(
        None, description="Faces in the searched gallery the `fpir` threshold was computed for."
    )
    impostor_subjects: int | None = Field(
        None,
        description="Subjects of this gallery whose similarity to each other located the "
        "impostor distribution (the rest comes from the model's reference).",
    )
    reference: str | None = Field(
        None, description="The model's impostor reference the `fpir` threshold builds on."
    )
    tar: float | None = Field(
        None, description="True-accept rate measured at this point (profile and model only)."
    )
    profile: str | None = Field(None, description="Path of the profile the point came from.")
    dataset: str | None = Field(None, description="Dataset the profile was calibrated on.")


class Quality(BaseModel):
    """How much this face can be trusted, measured on the photo and on its aligned chip.

    ``verdict`` is the coarse grade (like Azure's ``qualityForRecognition``); the measures
    behind it are given so a client can apply its own limits. Definitions and the evidence
    for the limits: README "Face quality" and ``faceserve eval quality``.
    """

    verdict: Literal["low", "medium", "high"] = Field(
        description="`low`: breaks one of the default enrollment limits, where recognition "
        "measurably suffers (a template of it would be refused unless forced); `high`: "
        "inside the stricter bounds where no effect was measured; `medium`: in between. "
        "Fixed rules, independent of this server's enrollment settings."
    )
    eye_distance: float = Field(
        description="Pixels between the eye centres in the photo. The aligned chip puts them "
        "52.5 px apart; faces with fewer pixels are upsampled into it."
    )
    sharpness: float = Field(
        description="1 - the re-blur measure of Crete et al. on the grey face region of the "
        "aligned chip: 0 flat; LFW photos 0.34-0.53 (5th-95th percentile). Unchanged by "
        "brightness, contrast or colour; falls with blur and with upsampling of small faces."
    )
    yaw: float = Field(
        description="Head turn in degrees from the 5 landmarks (nose base offset from the eye "
        "midpoint, weak perspective): positive when the nose points to the image's right; 0 "
        "frontal. About +-50 is where the far eye's inner corner goes behind the nose."
    )
    roll: float = Field(
        description="In-plane tilt in degrees of the line between the eye centres (positive: "
        "the eye on the image's right is lower). Alignment rotates it away."
    )
    detection_confidence: DetectionConfidence
    brightness: float = Field(description="Mean grey level of the face region, 0-1.")
    contrast: float = Field(
        description="Standard deviation of the face region's grey levels, 0-1."
    )
    dark_share: float = Field(
        description="Share of the face region at grey level 10/255 or below (crushed to black)."
    )
    bright_share: float = Field(
        description="Share of the face region at grey level 245/255 or above (blown to white)."
    )


class FaceSelection(BaseModel):
    """Which face of an uploaded photo was used, and why: a photo with several faces never
    has one chosen silently."""

    rule: str = Field(
        description="The selection rule: the largest visible face (box clipped to the photo; "
        "areas within a factor 1.5, one detector box size, tie), then the most confident "
        "detection (scores within 0.1 tie), then the face nearest the photo's centre.",
        examples=["visible-area>confidence>centre"],
    )
    decided_by: Literal[
        "only_face", "visible_area", "confidence", "centre", "request", "best_match"
    ] = Field(
        description="The step that settled it. `confidence` or `centre`: several faces of "
        "about the same size competed; check `bbox` is the intended person. `request`: the "
        "request's `face` chose it (POST /enroll). `best_match`: verify with "
        "`on_multiple=any` took the face most similar to the subject."
    )
    reason: str = Field(description="The choice in words.")
    faces_detected: int = Field(description="Faces found in the photo.")


class NegativeMatch(BaseModel):
    """Why a candidate cannot be the match: a face marked "not this person" for its subject."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"negative_id": "5f0c2a9d41b84e6c9e3d7a1b2c4d6e8f", "similarity": 0.962}]})

    negative_id: str = Field(
        description="The subject's negative example (POST /negatives) nearest "
        "to the face.")
    similarity: float = Field(
        description="Cosine similarity of the face with that negative: at or above the "
        "candidate's own `similarity` (its best enrolled face), so the nearest example of this "
        "subject says \"not this person\" (README, Clustering: the negatives rule).")


class Candidate(BaseModel):
    subject_id: str = Field(description="A subject of the gallery.")
    face_id: str = Field(description="The subject's template that scored best.")
    similarity: float = Field(description="Cosine similarity with the query, in [-1, 1].")
    metadata: dict[str, Any] | None = Field(
        None, description="The subject's metadata, when the request asked for it with "
        "`include_metadata` (needs scope `read`); absent otherwise.",
        exclude_if=lambda value: value is None,  # identify answers keep their other nulls
    )
    suppressed_by: NegativeMatch | None = Field(
        None,
        description="Present when the subject is refused for this face by one of its negative "
        "examples: the face is at least as similar to that negative as to the subject's best "
        "enrolled face. A suppressed candidate is never the `match`; it stays in the list so "
        "the decision can be explained. Only candidates at or above the threshold are checked.")


# ---------------------------------------------------------------- enroll

MetadataStatus = Annotated[
    Literal["set", "replaced", "unchanged", "kept"],
    Field(
        description="What became of the request's `metadata` (absent when none was sent): "
        "`set` on the new subject; `replaced` the existing subject's (`replace_metadata=true`); "
        "`unchanged`: equal to what the subject had; `kept`: the subject already existed with "
        "other metadata, which was kept (send `replace_metadata=true`, or PATCH "
        "/subjects/{id}, to change it)."
    ),
]



class EnrollResponse(BaseModel):
    face_id: str = Field(description="Id of the stored template (new, or the existing one).")
    subject_id: str = Field(description="The subject the face was enrolled for.")
    created: bool = Field(
        description="False when these exact image bytes were already enrolled for the subject "
        "(the existing face is returned)."
    )
    bbox: BBox = Field(description="Box of the face in the photo's pixels.")
    landmarks: Landmarks
    detection_confidence: DetectionConfidence
    faces_detected: int = Field(
        description="Faces found in the photo (the primary one was used, see face_selection)."
    )
    face_selection: FaceSelection | None = Field(
        None, description="Which face of the photo was enrolled, and why."
    )
    model: str = Field(description="Embedding model version.")
    quality: Quality = Field(description="Quality of the face in this photo.")
    possible_duplicate: Candidate | None = Field(
        None,
        description="Another subject this face already matches at the identify decision (its "
        "best face and similarity): the same person enrolled twice, or a mislabelled photo.",
    )
    metadata_status: MetadataStatus | None = None


class EnrollImageOutcome(BaseModel):
    """What became of one photo of a POST /enroll with ``images``."""

    index: int = Field(description="Position of the photo in `images` (0-based).")
    status: Literal["enrolled", "already_enrolled", "rejected"] = Field(
        description="`enrolled`: stored now; `already_enrolled`: these exact bytes were "
        "enrolled for the subject before (the existing face); `rejected`: not stored, "
        "`error` says why."
    )
    face_id: str | None = Field(None, description="The stored face (not when rejected).")
    bbox: BBox | None = Field(
        None, description="Box of the face in the photo's pixels. Absent without a face."
    )
    landmarks: Landmarks | None = Field(
        None, description="Five landmarks [x, y] in image pixels (absent without a face)."
    )
    detection_confidence: DetectionConfidence | None = None
    faces_detected: int | None = Field(
        None, description="Faces found in the photo (absent when it could not be decoded)."
    )
    quality: Quality | None = Field(
        None, description="Quality of the face taken from the photo (absent without a face)."
    )
    face_selection: FaceSelection | None = Field(
        None, description="Which face of the photo was taken, and why (absent without a face)."
    )
    possible_duplicate: Candidate | None = Field(
        None,
        description="Another subject this face already matches at the identify decision: "
        "reported with `on_duplicate=warn` (the face is enrolled), the reason for the "
        "rejection with `reject`. Photos of one request never flag each other.",
    )
    error: ErrorBody | None = Field(
        None,
        description="Why the photo was rejected: the code and message the same photo alone "
        "would get (`no_face`, `multiple_faces`, `duplicate_face`, `not_an_image`, "
        "`truncated_image`, `image_too_large`, `invalid_base64`, ...).",
    )


class EnrollBatchResponse(BaseModel):
    """POST /enroll with ``images``: one outcome per photo, in request order."""

    subject_id: str = Field(description="The subject the photos were enrolled for.")
    images: list[EnrollImageOutcome] = Field(description="One outcome per photo, in request order.")
    enrolled: int = Field(description="Photos stored now or before (`enrolled` and "
                          "`already_enrolled`).")
    created: int = Field(description="Faces stored by this request.")
    rejected: int = Field(description="Photos not stored (`status: rejected`).")
    threshold: float = Field(description="The similarity at which a face of another subject "
                             "counts as a possible duplicate (the identify decision).")
    operating_point: OperatingPoint = Field(
        description="Which threshold decided, and where it came from."
    )
    model: str = Field(description="Embedding model version.")
    metadata_status: MetadataStatus | None = None


# ---------------------------------------------------------------- verify


class VerifiedFace(BaseModel):
    """One side of a comparison: the face found in an uploaded image, or a stored template."""

    source: Literal["image_a", "image_b", "image", "template"] = Field(
        description="`image_a`/`image_b`/`image`: a face of that uploaded image; `template`: a "
        "stored face of the subject."
    )
    bbox: BBox | None = Field(None, description="Box of the face used (uploaded images).")
    landmarks: Landmarks | None = Field(
        None, description="Five landmarks [x, y] in image pixels: of the uploaded image, or of "
        "the photo the template was enrolled from."
    )
    detection_confidence: DetectionConfidence | None = None
    faces_detected: int | None = Field(
        None, description="Faces found in that image; the primary one was used."
    )
    face_selection: FaceSelection | None = Field(
        None, description="Which face of the uploaded image was used, and why."
    )
    face_id: str | None = Field(None, description="The stored template used (subject mode).")
    subject_id: str | None = Field(
        None, description="The subject the template belongs to (subject mode)."
    )
    quality: Quality | None = Field(
        None, description="Quality of the face found (uploaded images; null for templates)."
    )


class VerifyResponse(BaseModel):
    matched: bool = Field(description="The decision: `similarity >= threshold`, and (against "
                          "a subject) no negative example of the subject refuses the face "
                          "(`suppressed_by`). Named as in identify, where `matched` is the "
                          "same decision and `match` the matched candidate.")
    match: bool = Field(
        description="Deprecated: the same as `matched` (removed in a later release; `match` "
        "elsewhere is the matched candidate, not a boolean).",
        deprecated=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _decision(cls, data: Any) -> Any:
        return _fill_decision(data, boolean_match=True)
    similarity: float = Field(description="Cosine similarity of the two faces (best template).")
    distance: float = Field(description="Squared L2 distance of the unit embeddings: 2 - 2 cos.")
    threshold: float = Field(
        description="The similarity threshold of the decision (`operating_point.threshold`)."
    )
    operating_point: OperatingPoint = Field(
        description="Which threshold decided, and where it came from."
    )
    faces: list[VerifiedFace] = Field(description="The two faces compared: probe first.")
    templates_compared: int | None = Field(
        None, description="Templates of the subject compared (subject mode)."
    )
    model: str = Field(description="Embedding model version.")
    suppressed_by: NegativeMatch | None = Field(
        None, description="Subject mode: the subject's negative example (\"not this person\") "
        "at least as similar to the face as its best template; `matched` is then false.")


# ---------------------------------------------------------------- identify


class IdentifyResponse(BaseModel):
    """GET /identify: candidates for one stored face or one embedding."""

    candidates: list[Candidate] = Field(
        description="Best subjects, most similar first; each subject once, with its best face."
    )
    match: Candidate | None = Field(
        description="The best candidate at or above the threshold that no negative example "
        "suppresses (`suppressed_by`), else null (unknown)."
    )
    matched: bool = Field(description="The decision: whether `match` is a candidate (someone "
                          "at or above the threshold) rather than null (unknown).")

    @model_validator(mode="before")
    @classmethod
    def _decision(cls, data: Any) -> Any:
        return _fill_decision(data)

    threshold: float = Field(
        description="The similarity threshold of the decision (`operating_point.threshold`)."
    )
    operating_point: OperatingPoint = Field(
        description="Which threshold decided, and where it came from."
    )
    model: str = Field(description="Embedding model version.")


class IdentifiedFace(BaseModel):
    bbox: BBox = Field(description="Box of the face in the photo's pixels.")
    landmarks: Landmarks
    detection_confidence: DetectionConfidence
    candidates: list[Candidate] = Field(
        description="Best subjects for this face, most similar first (at most `k`)."
    )
    match: Candidate | None = Field(
        description="The best candidate at or above the threshold that no negative example "
        "suppresses (`suppressed_by`) and whose subject no better-scoring face of the same "
        "photo has taken (one person appears at most once in a photo), else null (unknown)."
    )
    matched: bool = Field(description="The decision: whether `match` is a candidate rather "
                          "than null (unknown).")

    @model_validator(mode="before")
    @classmethod
    def _decision(cls, data: Any) -> Any:
        return _fill_decision(data)

    quality: Quality = Field(description="Quality of this face.")
    unknown_face_id: str | None = Field(
        None, description="With `remember_unknown`: the id this unmatched face has in the "
        "unknown-face pool.")
    embedding_b64: str | None = Field(
        None, description="With `return_embedding`: the face's embedding as URL-safe base64 of "
        "128 little-endian float32 (what POST /negatives takes as `embedding` to "
        "mark this face \"not this person\", and GET /identify as `embedding`).")


class IdentifyImageResponse(BaseModel):
    """POST /identify: every face of the photo (most confident first), each with candidates."""

    faces: list[IdentifiedFace] = Field(
        description="The identified faces, most confident detection first."
    )
    faces_detected: int = Field(description="Faces found; at most max_faces are identified.")
    truncated: bool = Field(
        False,
        description="True when the photo has more faces (`faces_detected`) than were "
        "identified (`max_faces`): the most confident ones are in `faces`, the rest were left out.",
    )
    max_faces: int | None = Field(
        None, description="The cap that applied: the request's `max_faces`, at most the "
        "server's setting."
    )
    threshold: float = Field(
        description="The similarity threshold of the decision (`operating_point.threshold`)."
    )
    operating_point: OperatingPoint = Field(
        description="Which threshold decided, and where it came from."
    )
    model: str = Field(description="Embedding model version.")


# ---------------------------------------------------------------- embed


class EmbeddedFace(BaseModel):
    bbox: BBox = Field(description="Box of the face in the photo's pixels.")
    landmarks: Landmarks
    detection_confidence: DetectionConfidence
    embedding: list[float] = Field(description="128 floats, L2-normalised.")
    embedding_b64: str = Field(
        description="The same vector as URL-safe base64 of 128 little-endian float32 (the "
        "`embedding=` input of GET /identify)."
    )
    quality: Quality = Field(description="Quality of this face.")


class EmbedResponse(BaseModel):
    faces: list[EmbeddedFace] = Field(
        description="The faces found, most confident first (at most `max_faces`)."
    )
    faces_detected: int = Field(description="Faces found; at most max_faces are embedded.")
    truncated: bool = Field(
        False,
        description="True when the photo has more faces (`faces_detected`) than were "
        "embedded (`max_faces`): the most confident ones are in `faces`, the rest were left out.",
    )
    max_faces: int | None = Field(
        None, description="The cap that applied: the request's `max_faces`, at most the "
        "server's setting."
    )
    model: str = Field(description="Embedding model version.")


# ---------------------------------------------------------------- subjects and faces


class FaceInfo(BaseModel):
    face_id: str = Field(description="Id of a stored face template.")
    subject_id: str = Field(description="The subject the face belongs to.")
    bbox: BBox = Field(description="Box of the face in the photo it was enrolled from.")
    landmarks: Landmarks
    detection_confidence: DetectionConfidence
    model: str = Field(description="Embedding model version of the stored template.")
    image_sha256: str = Field(description="SHA-256 of the enrolled image file's bytes.")
    created_at: str = Field(description="ISO 8601, UTC.")


class SubjectSummary(BaseModel):
    subject_id: str = Field(description="The client's identifier of the person.")
    metadata: dict[str, Any] = Field(
        description="The JSON object stored with the subject (empty when none was given)."
    )
    created_at: str = Field(description="When the subject was first enrolled: ISO 8601, UTC.")
    face_count: int = Field(description="Stored face templates of the subject.")


class SubjectDetail(SubjectSummary):
    faces: list[FaceInfo] = Field(description="Every stored face of the subject, oldest first.")


class SubjectList(BaseModel):
    subjects: list[SubjectSummary] = Field(description="This page's subjects, in id order.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (opaque); null on the last page."
    )


class FaceList(BaseModel):
    """GET /subjects/{id}/faces: one page of a subject's faces, oldest first."""

    faces: list[FaceInfo] = Field(description="The faces of this page, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class UpdateSubjectResponse(SubjectSummary):
    """PATCH /subjects/{id}: the subject as it is now (under its new id after a rename)."""

    renamed_from: str | None = Field(
        None, description="The id the subject had before this request, when it was renamed."
    )
    faces_moved: int = Field(
        0, description="Faces that moved to the new id with the rename (all of them)."
    )
    metadata_replaced: bool = Field(
        description="Whether this request replaced the subject's metadata."
    )


class MergeSubjectResponse(BaseModel):
    """POST /subjects/{id}/merge: the subject that received the faces, as it is now."""

    subject_id: str = Field(description="The subject that received the faces (`into`).")
    merged_subject_id: str = Field(
        description="The subject merged away: it no longer exists, its metadata is erased."
    )
    faces_moved: int = Field(description="Faces moved to `subject_id`, with their face ids.")
    faces_dropped: int = Field(
        description="Faces of the merged subject erased instead of moved, because "
        "`subject_id` already had a face from the same image (one face per image)."
    )
    face_count: int = Field(description="Faces `subject_id` has now.")


class DeleteSubjectResponse(BaseModel):
    subject_id: str = Field(description="The erased subject.")
    faces_deleted: int = Field(description="Templates removed from storage and index.")


class DeleteFaceResponse(BaseModel):
    face_id: str = Field(description="The deleted face.")
    subject_id: str = Field(description="The subject it belonged to.")
    deleted: bool = Field(description="Always true: an unknown face is 404.")
    subject_deleted: bool = Field(
        False,
        description="The face was its subject's last, so the subject (and its metadata) was "
        "erased with it: a subject never stays without faces.",
    )


# ---------------------------------------------------------------- health


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="Always `ok` while the process answers.")


class ReplicationLag(BaseModel):
    applied_change_id: int = Field(description="The index reflects every change up to this id.")
    head_change_id: int | None = Field(
        None, description="The last change committed to the database (absent, like the two "
        "below, when the database cannot be reached: see `error`)."
    )
    changes_behind: int | None = Field(
        None, description="Changes committed to the database and not in this replica's index "
        "yet."
    )
    seconds_behind: float | None = Field(
        None, description="Age of the oldest change not applied yet; 0 when caught up."
    )
    listening: bool = Field(description="LISTEN/NOTIFY connection up (else polling only).")
    error: str | None = Field(None, description="Last replication error, until it recovers.")


class SelfTestReport(BaseModel):
    """The start-up self-test (models/self_test.py): what really runs, and how fast."""

    device: str = Field(description="The torch device the models run on.")
    device_name: str = Field(description="The GPU's or CPU's name.")
    torch: str = Field(description="PyTorch version.")
    cuda: str | None = Field(None, description="CUDA version torch was built with, if any.")
    detect_ms: float = Field(description="Detection of one 640x480 photo, milliseconds.")
    embed_ms_per_face: float = Field(description="Embedding, per face in a batch of 8.")
    score_deviation: float | None = Field(
        None, description="On a GPU: largest difference of detector scores from the CPU's."
    )
    embedding_cosine: float | None = Field(
        None, description="On a GPU: least cosine between its embeddings and the CPU's."
    )


class CallerInfo(BaseModel):
    """Who a request to /readyz was made as: the key's own rights, so a client (the web
    console, an app checking its configuration) learns what it may do without trying."""

    key_id: str | None = Field(
        None, description="The key's public id; absent on a server without keys (the caller "
        "then acts as the operator, with every scope)."
    )
    name: str = Field(description="The key's name (`(no key)` on a server without keys).")
    scopes: list[Scope] = Field(description="The scopes the key holds.")
    gallery: str | None = Field(
        None, description="The gallery the key is bound to; absent for the default gallery."
    )


class ReadyResponse(BaseModel):
    status: Literal["ready"] = Field(
        description="`ready` once models and gallery are loaded (503 before)."
    )
    model: str = Field(description="Embedding model version.")
    embedding_size: int | None = Field(
        None, description="Length of the model's embeddings (128 for dlib's ResNet, 512 for "
        "most ArcFace-family models)."
    )
    model_licence: str | None = Field(
        None, description="The model's licence: CC0-1.0 for dlib's; for an ONNX model the "
        "text its user gave to `faceserve models add --licence` (not checked by faceserve)."
    )
    detector: str | None = Field(
        None, description="The face detector: `dlib-mmod`, or the version of an SCRFD model."
    )
    device: str = Field(description="The torch device the models run on (`cpu`, `cuda:0`).")
    index_kind: str = Field(description="The FAISS index kind (`flat`, `hnsw`, ...).")
    index_source: Literal["snapshot", "store"] = Field(
        description="Where the index came from at start-up: the validated snapshot, or a "
        "rebuild from the database (no snapshot, or a stale or damaged one)."
    )
    gallery_faces: int | None = Field(
        None, description="Faces of the whole server: only for an admin key of the default "
        "gallery (or without keys); anyone else learns readiness only."
    )
    gallery_subjects: int | None = Field(None, description="Subjects, as `gallery_faces`.")
    batching: bool = Field(
        description="Whether concurrent requests are embedded in shared batches."
    )
    detection_processes: int = Field(
        0,
        description="Worker processes decoding, detecting and aligning photos on the CPU "
        "(`FACESERVE_DETECTION_PROCESSES`); 0: the server's own inference threads do it.",
    )
    replication: ReplicationLag | None = Field(
        None,
        description="Replicas sharing a PostgreSQL gallery only: how far this replica's index "
        "is behind the database's change log.",
    )
    self_test: SelfTestReport | None = Field(
        None, description="The start-up self-test: device, versions, measured latency; for "
        "the callers who see the totals."
    )
    operating_point: OperatingPoint | None = Field(
        None, description="The verify decision's operating point (configuration, not data): "
        "for any caller with a valid key (or without keys)."
    )
    identify_operating_point: OperatingPoint | None = Field(
        None, description="The operating point a POST /identify of the caller's gallery would "
        "use now (it follows the gallery's size under a target FPIR): only for a key with "
        "scope `recognize` (or without keys)."
    )
    caller: CallerInfo | None = Field(
        None, description="The key the request was made with (name, id, scopes, gallery): for "
        "a valid, unrevoked key (or anyone on a server without keys); absent otherwise."
    )


# ---------------------------------------------------------------- keys and audit


Scope = Literal["enroll", "recognize", "read", "erase", "metrics", "audit", "admin"]


class KeyInfo(BaseModel):
    """An API key as listed: never its token (only its hash is stored)."""

    key_id: str = Field(description="Public id, for revoking.")
    name: str = Field(description="The key's name (who holds it).")
    scopes: list[Scope] = Field(description="What the key may do.")
    gallery: str | None = Field(description="The key's gallery; null for the default one.")
    created_at: str = Field(description="When it was created: ISO 8601, UTC.")
    revoked_at: str | None = Field(
        description="When it was revoked (ISO 8601, UTC); null while valid."
    )


class KeyList(BaseModel):
    keys: list[KeyInfo] = Field(description="The keys, oldest first.")


class CreatedKey(KeyInfo):
    token: str = Field(description="The key itself. Shown this once: store it now.")


class AuditEvent(BaseModel):
    id: int = Field(description="The event's number: increasing, for ordering.")
    at: str = Field(description="ISO 8601, UTC.")
    key_id: str | None = Field(description="The key that acted; null without keys (operator).")
    key_name: str = Field(
        description="The acting key's name at the time (`(no key)` for the operator)."
    )
    action: Literal[
        "enroll", "add_face", "delete_subject", "delete_face", "create_key", "revoke_key",
        "name_cluster", "delete_cluster", "update_subject", "rename_subject", "merge_subject",
        "restore",
        "create_gallery", "delete_gallery",
        "move_face", "add_negative", "delete_negative",
    ] = Field(description="What was done.")
    subject_id: str | None = Field(description="The subject concerned, if any.")
    face_id: str | None = Field(description="The face concerned, if any.")
    detail: dict[str, Any] = Field(
        description="Small facts (`created`, `faces_deleted`, `scopes`); never images, "
        "embeddings or metadata."
    )


class AuditList(BaseModel):
    events: list[AuditEvent] = Field(description="This page's events, oldest first.")
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )
    next_after: int | None = Field(
        None,
        description="Deprecated (use `next_cursor`): pass as `after` for the next page.",
        deprecated=True,
    )


# ---------------------------------------------------------------- galleries


class GalleryInfo(BaseModel):
    """A gallery (a tenant: its own subjects, pool, keys and audit log) and what it holds."""

    model_config = {"json_schema_extra": {"examples": [
        {"default": True, "subjects": 1250, "faces": 3710, "unknown_faces": 12,
         "active_keys": 3},
        {"name": "acme", "default": False, "subjects": 40, "faces": 96, "unknown_faces": 0,
         "active_keys": 2, "created_at": "2026-03-01T09:30:00.000Z"},
    ]}}

    name: str | None = Field(
        None, description="The gallery's name, as keys are bound to it (`keys create "
        "--gallery`); absent for the default gallery."
    )
    default: bool = Field(
        description="True for the default gallery (keys bound to no gallery); it cannot be "
        "deleted."
    )
    subjects: int = Field(description="Enrolled subjects.")
    faces: int = Field(description="Enrolled faces (templates) of those subjects.")
    unknown_faces: int = Field(description="Faces in the gallery's unknown-face pool.")
    active_keys: int = Field(description="Unrevoked API keys bound to the gallery.")
    created_at: str | None = Field(
        None, description="When it was created (ISO 8601, UTC): over HTTP or with its first "
        "key; absent where not recorded (made by an import, or before this was recorded)."
    )


class GalleryList(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"galleries": [
        {"default": True, "subjects": 1250, "faces": 3710, "unknown_faces": 12,
         "active_keys": 3},
        {"name": "acme", "default": False, "subjects": 40, "faces": 96, "unknown_faces": 0,
         "active_keys": 2, "created_at": "2026-03-01T09:30:00.000Z"},
    ]}]}}

    galleries: list[GalleryInfo] = Field(
        description="The default gallery first, then the named ones by name."
    )


class DeleteGalleryResponse(BaseModel):
    model_config = {"json_schema_extra": {"examples": [
        {"name": "acme", "subjects_deleted": 40, "faces_deleted": 96,
         "unknown_faces_deleted": 0, "keys_revoked": ["k_3f9a1c2b7d10", "k_8e21aa04c9f3"]},
    ]}}

    name: str = Field(description="The deleted gallery.")
    subjects_deleted: int = Field(
        description="Subjects erased (each audited as `delete_subject` in the gallery's log)."
    )
    faces_deleted: int = Field(description="Their faces, erased from storage and the index.")
    unknown_faces_deleted: int = Field(description="Faces erased from the gallery's pool.")
    keys_revoked: list[str] = Field(
        description="Ids of the gallery's keys revoked by the deletion (each audited as "
        "`revoke_key`)."
    )


# ---------------------------------------------------------------- clusters


class ClusterFace(BaseModel):
    face_id: str = Field(description="A face of the unknown-face pool.")
    source: str | None = Field(
        None, description="The caller's reference to the photo (`source` of POST /identify)."
    )
    bbox: BBox = Field(description="Box of the face in the photo's pixels.")
    created_at: str = Field(description="When the face was seen: ISO 8601, UTC.")


class ClusterChip(BaseModel):
    """A representative face of a cluster with its chip inline (GET /clusters?include=chips)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"face_id": "0b6f3c1e9a2d4f5e8c7b6a5d4e3f2a1b", "jpeg_b64": "/9j/4AAQSkZJRgABAQAAAQ..."}]})

    face_id: str = Field(description="The pool face.")
    jpeg_b64: str = Field(
        description="Its aligned 150x150 face chip, JPEG, standard base64 (a few kB; "
        "`data:image/jpeg;base64,` + this is an image URL).")


class ClusterInfo(BaseModel):
    """One group of the unknown-face pool: probably one person."""

    cluster_id: str = Field(description="The cluster's id (changes when the pool is reclustered).")
    size: int = Field(description="Faces in the cluster.")
    representative_face_id: str = Field(
        description="The face most similar to the rest; its chip is at "
        "GET /clusters/faces/{face_id}/chip.")
    faces: list[ClusterFace] = Field(description="The cluster's faces.")
    chips: list[ClusterChip] | None = Field(
        None,
        description="With `include=chips`: the chips of the cluster's most representative "
        "faces (most similar to the rest first, at most `chips_per_cluster`); faces without a "
        "stored chip are left out. Absent for clusters past the response's chip budget.")


class ClusterList(BaseModel):
    """GET and POST /clusters: the pool's groups, largest first."""

    clusters: list[ClusterInfo] = Field(description="The groups, largest first.")
    unclustered: int = Field(description="Pool faces in no group (seen once so far).")
    pending: int = Field(description="Pool faces not clustered yet (POST /clusters does).")
    threshold: float | None = Field(
        None, description="The similarity used for one person (POST /clusters)."
    )


# ---------------------------------------------------------------- corrections


class NegativeInfo(BaseModel):
    """A face marked "not this person" for a subject: a negative example of it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "negative_id": "5f0c2a9d41b84e6c9e3d7a1b2c4d6e8f", "subject_id": "person-0042",
        "source": "unknown_face", "source_id": "0b6f3c1e9a2d4f5e8c7b6a5d4e3f2a1b",
        "model": "dlib-resnet-v1", "created_at": "2026-12-04T10:15:30.123Z"}]})

    negative_id: str = Field(description="Id of the negative (DELETE it to undo).")
    subject_id: str = Field(description="The subject the face is not.")
    source: Literal["face", "unknown_face", "embedding"] = Field(
        description="What was marked: an enrolled face (`face_id`), a pool or cluster face "
        "(`unknown_face_id`), or an embedding the client sent (e.g. `embedding_b64` of an "
        "identify result).")
    source_id: str | None = Field(
        None, description="The face or pool face it was taken from (absent for an embedding). "
        "Its embedding was copied: erasing that face later keeps the negative.")
    model: str = Field(description="Embedding model of the stored vector; negatives of another "
                       "model than the server's are not used.")
    created_at: str = Field(description="ISO 8601, UTC.")


class NegativeList(BaseModel):
    """GET /negatives?subject_id=..."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "subject_id": "person-0042", "negatives": [NegativeInfo.model_config[
            "json_schema_extra"]["examples"][0]]}]})  # type: ignore[index]

    subject_id: str = Field(description="The subject.")
    negatives: list[NegativeInfo] = Field(description="Its negative examples, oldest first.")


class DeleteNegativeResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "negative_id": "5f0c2a9d41b84e6c9e3d7a1b2c4d6e8f", "subject_id": "person-0042",
        "deleted": True}]})

    negative_id: str = Field(description="The negative erased.")
    subject_id: str = Field(description="Its subject.")
    deleted: bool = Field(description="Always true (an unknown negative is 404).")


class MoveFaceResponse(BaseModel):
    """POST /faces/{face_id}/move: the face now belongs to another subject."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "face_id": "9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f", "from_subject_id": "person-0042",
        "subject_id": "person-0043", "subject_created": True, "from_subject_deleted": False}]})

    face_id: str = Field(description="The face moved; its id, embedding, chip and enrollment "
                         "time are kept.")
    from_subject_id: str = Field(description="The subject it was taken from.")
    subject_id: str = Field(description="The subject it now belongs to.")
    subject_created: bool = Field(description="True when that subject was created by the "
                                  "move (with no metadata).")
    from_subject_deleted: bool = Field(
        False, description="True when the face was its old subject's last: that subject is "
        "gone with it (with its metadata and negatives), as after DELETE /faces/{id}.")


class NameClusterResponse(BaseModel):
    cluster_id: str = Field(description="The named cluster (now gone from the pool).")
    subject_id: str = Field(description="The subject its faces were enrolled as.")
    face_ids: list[str] = Field(description="The faces enrolled (new gallery face ids).")


class DeleteClusterResponse(BaseModel):
    cluster_id: str = Field(description="The deleted cluster.")
    faces_deleted: int = Field(description="Pool faces erased.")
