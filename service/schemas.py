"""Request and response models of every endpoint: the OpenAPI document is built from these.

Image endpoints take the same fields in two encodings on the same path, chosen by the
request's ``Content-Type``: ``multipart/form-data`` (images as file parts, ``metadata`` as a
JSON string) and ``application/json`` (images as base64 strings, ``metadata`` as an object).
Each has its own model here (``*Form`` and ``*JSON``); both are published in the OpenAPI
``requestBody`` of the operation, so the document stays the whole contract.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "REQUEST_MODELS",
    "AuditEvent",
    "AuditList",
    "BBox",
    "Candidate",
    "CreateKeyRequest",
    "CreatedKey",
    "DeleteFaceResponse",
    "DeleteSubjectResponse",
    "EmbedForm",
    "EmbedJSON",
    "EmbedResponse",
    "EmbeddedFace",
    "EnrollForm",
    "EnrollJSON",
    "EnrollResponse",
    "ErrorBody",
    "ErrorResponse",
    "FaceInfo",
    "HealthResponse",
    "IdentifiedFace",
    "IdentifyForm",
    "IdentifyImageResponse",
    "IdentifyJSON",
    "IdentifyResponse",
    "KeyInfo",
    "KeyList",
    "OperatingPoint",
    "ReadyResponse",
    "ReplicationLag",
    "SubjectDetail",
    "SubjectList",
    "SubjectSummary",
    "VerifiedFace",
    "VerifyForm",
    "VerifyJSON",
    "VerifyResponse",
]

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32
MAX_K = 100

# A subject id is the client's own key: any 1-128 characters except control characters.
SubjectId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The client's identifier of the person (1-128 characters, no control "
        "characters).",
        examples=["person-0042"],
    ),
]
Threshold = Annotated[
    float,
    Field(ge=-1.0, le=1.0, description="Cosine-similarity threshold for this request only."),
]
K = Annotated[
    int, Field(ge=1, le=MAX_K, description="Number of candidate subjects to return (1-100).")
]
OnMultiple = Annotated[
    Literal["largest", "reject"],
    Field(
        description="What to do when the photo shows several faces: enroll the `largest` "
        "(by box area), or `reject` the photo with 422 `multiple_faces`."
    ),
]
Base64Image = Annotated[
    str,
    Field(
        description="The image file (JPEG, PNG, ...) as base64; standard or URL-safe alphabet, "
        "padding optional, a `data:image/...;base64,` prefix is allowed.",
        json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"},
    ),
]
FaceCrop = Annotated[
    bool,
    Field(
        description="The image is one face, already cropped (by the phone's own detector) or "
        "aligned: no search for faces, the face is taken as filling the image (its cost does "
        "not grow with the image, and faces too small for detection are found); an image the "
        "detector does not confirm as a face is 422 `not_a_face`. Applies to every image of "
        "the request."
    ),
]
ImageFile = Annotated[
    bytes, Field(description="The image file (JPEG, PNG, WebP, BMP, ...).")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.", examples=["no_face"])
    message: str = Field(description="Human-readable explanation.")
    details: list[dict[str, Any]] | None = Field(
        None, description="Per-field problems, for validation errors."
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


# ---------------------------------------------------------------- shared parts


class BBox(BaseModel):
    """A face box in image pixels; ``right`` and ``bottom`` are inclusive (dlib convention).

    Detector boxes may extend past the image border.
    """

    left: int
    top: int
    right: int
    bottom: int


Landmarks = Annotated[
    list[list[float]],
    Field(description="Five landmarks [x, y] in image pixels (eye corners and nose base)."),
]


class OperatingPoint(BaseModel):
    """Which threshold decided ``match``, and where it came from."""

    threshold: float = Field(description="Cosine similarity at or above which faces match.")
    source: Literal["setting", "profile", "model", "request"] = Field(
        description="`setting`: the configured number; `profile`: the calibrated operating "
        "point for `far` from the evaluation profile; `model`: the operating point recorded "
        "in the exported model's manifest (validation on held-out identities); `request`: "
        "given with this request."
    )
    far: float | None = Field(
        None, description="Target false-accept rate (profile and model only)."
    )
    tar: float | None = Field(
        None, description="True-accept rate measured at this point (profile and model only)."
    )
    profile: str | None = Field(None, description="Path of the profile the point came from.")
    dataset: str | None = Field(None, description="Dataset the profile was calibrated on.")


class Candidate(BaseModel):
    subject_id: str
    face_id: str = Field(description="The subject's template that scored best.")
    similarity: float = Field(description="Cosine similarity with the query, in [-1, 1].")


# ---------------------------------------------------------------- enroll


class EnrollForm(_Strict):
    """``multipart/form-data`` fields of POST /enroll."""

    image: ImageFile
    subject_id: SubjectId
    metadata: str | None = Field(
        None,
        description="A JSON object (at most 4 KB serialised, 32 levels deep) stored with the "
        "subject; replaces the subject's metadata when given.",
    )
    on_multiple: OnMultiple = "largest"
    face_crop: FaceCrop = False


class EnrollJSON(_Strict):
    """``application/json`` body of POST /enroll."""

    image: Base64Image
    subject_id: SubjectId
    metadata: dict[str, Any] | None = Field(
        None,
        description="A JSON object (at most 4 KB serialised, 32 levels deep) stored with the "
        "subject; replaces the subject's metadata when given.",
    )
    on_multiple: OnMultiple = "largest"
    face_crop: FaceCrop = False


class EnrollResponse(BaseModel):
    face_id: str = Field(description="Id of the stored template (new, or the existing one).")
    subject_id: str
    created: bool = Field(
        description="False when these exact image bytes were already enrolled for the subject "
        "(the existing face is returned)."
    )
    bbox: BBox
    landmarks: Landmarks
    detection_confidence: float
    faces_detected: int = Field(description="Faces found in the photo (the largest was used).")
    model: str = Field(description="Embedding model version.")


# ---------------------------------------------------------------- verify


class VerifyForm(_Strict):
    """``multipart/form-data`` fields of POST /verify: ``image_a`` + ``image_b``, or ``image`` +
    ``subject_id``."""

    image_a: ImageFile | None = None
    image_b: ImageFile | None = None
    image: ImageFile | None = None
    subject_id: SubjectId | None = None
    threshold: Threshold | None = None
    face_crop: FaceCrop = False


class VerifyJSON(_Strict):
    """``application/json`` body of POST /verify: ``image_a`` + ``image_b``, or ``image`` +
    ``subject_id``."""

    image_a: Base64Image | None = None
    image_b: Base64Image | None = None
    image: Base64Image | None = None
    subject_id: SubjectId | None = None
    threshold: Threshold | None = None
    face_crop: FaceCrop = False


class VerifiedFace(BaseModel):
    """One side of a comparison: the face found in an uploaded image, or a stored template."""

    source: Literal["image_a", "image_b", "image", "template"]
    bbox: BBox | None = Field(None, description="Box of the face used (uploaded images).")
    detection_confidence: float | None = None
    faces_detected: int | None = Field(
        None, description="Faces found in that image; the largest was used."
    )
    face_id: str | None = Field(None, description="The stored template used (subject mode).")
    subject_id: str | None = None


class VerifyResponse(BaseModel):
    match: bool = Field(description="similarity >= threshold.")
    similarity: float = Field(description="Cosine similarity of the two faces (best template).")
    distance: float = Field(description="Squared L2 distance of the unit embeddings: 2 - 2 cos.")
    threshold: float
    operating_point: OperatingPoint
    faces: list[VerifiedFace] = Field(description="The two faces compared: probe first.")
    templates_compared: int | None = Field(
        None, description="Templates of the subject compared (subject mode)."
    )
    model: str


# ---------------------------------------------------------------- identify


class IdentifyResponse(BaseModel):
    """GET /identify: candidates for one stored face or one embedding."""

    candidates: list[Candidate] = Field(
        description="Best subjects, most similar first; each subject once, with its best face."
    )
    match: Candidate | None = Field(
        description="The best candidate if at or above the threshold, else null (unknown)."
    )
    threshold: float
    operating_point: OperatingPoint
    model: str


class IdentifyForm(_Strict):
    """``multipart/form-data`` fields of POST /identify."""

    image: ImageFile
    k: K = 5
    threshold: Threshold | None = None
    max_faces: int | None = Field(
        None, ge=1, description="Most faces to identify (at most the server's max_faces)."
    )
    face_crop: FaceCrop = False


class IdentifyJSON(_Strict):
    """``application/json`` body of POST /identify."""

    image: Base64Image
    k: K = 5
    threshold: Threshold | None = None
    max_faces: int | None = Field(
        None, ge=1, description="Most faces to identify (at most the server's max_faces)."
    )
    face_crop: FaceCrop = False


class IdentifiedFace(BaseModel):
    bbox: BBox
    landmarks: Landmarks
    detection_confidence: float
    candidates: list[Candidate]
    match: Candidate | None


class IdentifyImageResponse(BaseModel):
    """POST /identify: every face of the photo (most confident first), each with candidates."""

    faces: list[IdentifiedFace]
    faces_detected: int = Field(description="Faces found; at most max_faces are identified.")
    threshold: float
    operating_point: OperatingPoint
    model: str


# ---------------------------------------------------------------- embed


class EmbedForm(_Strict):
    """``multipart/form-data`` fields of POST /embed."""

    image: ImageFile
    max_faces: int | None = Field(None, ge=1, description="Most faces to embed.")
    face_crop: FaceCrop = False


class EmbedJSON(_Strict):
    """``application/json`` body of POST /embed."""

    image: Base64Image
    max_faces: int | None = Field(None, ge=1, description="Most faces to embed.")
    face_crop: FaceCrop = False


class EmbeddedFace(BaseModel):
    bbox: BBox
    landmarks: Landmarks
    detection_confidence: float
    embedding: list[float] = Field(description="128 floats, L2-normalised.")
    embedding_b64: str = Field(
        description="The same vector as URL-safe base64 of 128 little-endian float32 (the "
        "`embedding=` input of GET /identify)."
    )


class EmbedResponse(BaseModel):
    faces: list[EmbeddedFace]
    faces_detected: int
    model: str


# ---------------------------------------------------------------- subjects and faces


class FaceInfo(BaseModel):
    face_id: str
    subject_id: str
    bbox: BBox
    landmarks: Landmarks
    detection_confidence: float
    model: str
    image_sha256: str = Field(description="SHA-256 of the enrolled image file's bytes.")
    created_at: str = Field(description="ISO 8601, UTC.")


class SubjectSummary(BaseModel):
    subject_id: str
    metadata: dict[str, Any]
    created_at: str
    face_count: int


class SubjectDetail(SubjectSummary):
    faces: list[FaceInfo]


class SubjectList(BaseModel):
    subjects: list[SubjectSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class DeleteSubjectResponse(BaseModel):
    subject_id: str
    faces_deleted: int = Field(description="Templates removed from storage and index.")


class DeleteFaceResponse(BaseModel):
    face_id: str
    subject_id: str
    deleted: bool


# ---------------------------------------------------------------- health


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReplicationLag(BaseModel):
    applied_change_id: int = Field(description="The index reflects every change up to this id.")
    head_change_id: int | None = Field(
        None, description="The last change committed to the database (absent, like the two "
        "below, when the database cannot be reached: see `error`)."
    )
    changes_behind: int | None = None
    seconds_behind: float | None = Field(
        None, description="Age of the oldest change not applied yet; 0 when caught up."
    )
    listening: bool = Field(description="LISTEN/NOTIFY connection up (else polling only).")
    error: str | None = Field(None, description="Last replication error, until it recovers.")


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model: str
    device: str
    index_kind: str
    index_source: Literal["snapshot", "store"] = Field(
        description="Where the index came from at start-up: the validated snapshot, or a "
        "rebuild from the database (no snapshot, or a stale or damaged one)."
    )
    gallery_faces: int
    gallery_subjects: int
    batching: bool
    replication: ReplicationLag | None = Field(
        None,
        description="Replicas sharing a PostgreSQL gallery only: how far this replica's index "
        "is behind the database's change log.",
    )


# ---------------------------------------------------------------- keys and audit

Scope = Literal["enroll", "recognize", "admin"]


class KeyInfo(BaseModel):
    """An API key as listed: never its token (only its hash is stored)."""

    key_id: str = Field(description="Public id, for revoking.")
    name: str
    scopes: list[Scope]
    gallery: str | None = Field(description="The key's gallery; null for the default one.")
    created_at: str
    revoked_at: str | None


class KeyList(BaseModel):
    keys: list[KeyInfo]


class CreateKeyRequest(_Strict):
    """POST /keys: a new key in the calling admin key's gallery."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[Scope] = Field(min_length=1, max_length=3)


class CreatedKey(KeyInfo):
    token: str = Field(description="The key itself. Shown this once: store it now.")


class AuditEvent(BaseModel):
    id: int
    at: str = Field(description="ISO 8601, UTC.")
    key_id: str | None = Field(description="The key that acted; null without keys (operator).")
    key_name: str
    action: Literal["enroll", "delete_subject", "delete_face", "create_key", "revoke_key"]
    subject_id: str | None
    face_id: str | None
    detail: dict[str, Any] = Field(
        description="Small facts (`created`, `faces_deleted`, `scopes`); never images, "
        "embeddings or metadata."
    )


class AuditList(BaseModel):
    events: list[AuditEvent]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


# Request models that are not parameters of any FastAPI signature (the bodies are parsed by
# hand so one path can accept two media types); the app adds them to the OpenAPI components.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    EnrollForm,
    EnrollJSON,
    VerifyForm,
    VerifyJSON,
    IdentifyForm,
    IdentifyJSON,
    EmbedForm,
    EmbedJSON,
)
