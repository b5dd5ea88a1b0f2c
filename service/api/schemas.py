"""Request and response models of every endpoint: the OpenAPI document is built from these.

Image endpoints take the same fields in two encodings on the same path, chosen by the
request's ``Content-Type``: ``multipart/form-data`` (images as file parts, ``metadata`` as a
JSON string) and ``application/json`` (images as base64 strings, ``metadata`` as an object).
Each has its own model here (``*Form`` and ``*JSON``); both are published in the OpenAPI
``requestBody`` of the operation, so the document stays the whole contract.

The response models are defined once, in the client package (``faceserve_client.models``,
which needs only pydantic), and re-exported here: the server answers with the very classes a
client parses, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from faceserve_client.models import (
    AuditEvent,
    AuditList,
    BBox,
    CallerInfo,
    Candidate,
    ClusterChip,
    ClusterFace,
    ClusterInfo,
    ClusterList,
    CreatedKey,
    DeleteClusterResponse,
    DeleteFaceResponse,
    DeleteGalleryResponse,
    DeleteNegativeResponse,
    DeleteSubjectResponse,
    DetectionConfidence,
    EmbeddedFace,
    EmbedResponse,
    EnrollBatchResponse,
    EnrollImageOutcome,
    EnrollResponse,
    ErrorBody,
    ErrorResponse,
    FaceInfo,
    FaceList,
    FaceSelection,
    GalleryInfo,
    GalleryList,
    HealthResponse,
    IdentifiedFace,
    IdentifyImageResponse,
    IdentifyResponse,
    KeyInfo,
    KeyList,
    Landmarks,
    MergeSubjectResponse,
    MoveFaceResponse,
    NameClusterResponse,
    NegativeInfo,
    NegativeList,
    NegativeMatch,
    OperatingPoint,
    Quality,
    ReadyResponse,
    ReplicationLag,
    Scope,
    SelfTestReport,
    SubjectDetail,
    SubjectList,
    SubjectSummary,
    UpdateSubjectResponse,
    VerifiedFace,
    VerifyResponse,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from service.api.identifiers import check_key_name, check_new_subject_id, check_subject_id
from service.security.keys import GALLERY_PATTERN, SCOPES

__all__ = [
    "REQUEST_MODELS",
    "AuditEvent",
    "AuditList",
    "BBox",
    "CallerInfo",
    "Candidate",
    "ClusterChip",
    "ClusterFace",
    "ClusterInfo",
    "ClusterList",
    "ClusterRequest",
    "CreateGalleryRequest",
    "CreateKeyRequest",
    "CreatedKey",
    "DeleteClusterResponse",
    "DeleteFaceResponse",
    "DeleteGalleryResponse",
    "DeleteNegativeResponse",
    "DeleteSubjectResponse",
    "DetectionConfidence",
    "EmbedForm",
    "EmbedJSON",
    "EmbedResponse",
    "EmbeddedFace",
    "EnrollBatchResponse",
    "EnrollForm",
    "EnrollImageOutcome",
    "EnrollJSON",
    "EnrollResponse",
    "ErrorBody",
    "ErrorResponse",
    "FaceChoice",
    "FaceInfo",
    "FaceList",
    "FaceSelection",
    "GalleryInfo",
    "GalleryList",
    "HealthResponse",
    "IdentifiedFace",
    "IdentifyForm",
    "IdentifyImageResponse",
    "IdentifyJSON",
    "IdentifyResponse",
    "IdentifySearchJSON",
    "KeyInfo",
    "KeyList",
    "Landmarks",
    "MergeClusterRequest",
    "MergeSubjectRequest",
    "MergeSubjectResponse",
    "MoveFaceRequest",
    "MoveFaceResponse",
    "NameClusterRequest",
    "NameClusterResponse",
    "NegativeInfo",
    "NegativeList",
    "NegativeMatch",
    "NegativeRequest",
    "OperatingPoint",
    "Quality",
    "ReadyResponse",
    "ReplicationLag",
    "SelfTestReport",
    "SplitClusterRequest",
    "SubjectDetail",
    "SubjectList",
    "SubjectSummary",
    "UpdateSubjectRequest",
    "UpdateSubjectResponse",
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
        "characters, line separators, bidi overrides or zero-width characters).",
        examples=["person-0042"],
    ),
    AfterValidator(check_subject_id),
]
# An id a request creates (a new subject, a rename's target): as SubjectId, without "/".
NewSubjectId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="A new id for the person (1-128 characters; no `/`, control characters, "
        "line separators, bidi overrides or zero-width characters).",
        examples=["person-0042"],
    ),
    AfterValidator(check_new_subject_id),
]
Threshold = Annotated[
    float,
    Field(ge=-1.0, le=1.0, description="Cosine-similarity threshold for this request only."),
]
K = Annotated[
    int, Field(ge=1, le=MAX_K, description="Number of candidate subjects to return (1-100).")
]
IdentifyFpir = Annotated[
    float,
    Field(
        gt=0.0,
        lt=1.0,
        description="Target false positive identification rate for this request: the share "
        "of strangers that may be matched to someone (default: the server's `identify_fpir`, "
        "0.01). Ignored when `threshold` is given.",
    ),
]
OnMultiple = Annotated[
    Literal["primary", "largest", "reject"],
    Field(
        description="What to do when the photo shows several faces: enroll the `primary` face "
        "(largest visible area, then detection confidence, then nearness to the centre; the "
        "response's `face_selection` says which and why), or `reject` the photo with 422 "
        "`multiple_faces`. `largest` is the older name of `primary` and means the same."
    ),
]
OnDuplicate = Annotated[
    Literal["warn", "reject"],
    Field(
        description="What to do with a face that already matches *another* subject of the "
        "gallery at the identify decision (a possible duplicate or mislabel): `warn` enrolls "
        "it and names that subject in `possible_duplicate`; `reject` refuses that image "
        "(`duplicate_face`; 409 when no image of the request is enrolled)."
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
MinFacePx = Annotated[
    int | None,
    Field(
        ge=20,
        le=4096,
        description="The smallest face (box side, in the photo's pixels) that must be found; "
        "smaller faces may be missed. Detection cost falls with its square: the photo is "
        "scanned from the scale where this size is the detector's 80 px window (and a large "
        "JPEG is decoded at reduced size). Below 80 the photo is upsampled. Default: the "
        "server's `min_face_px` setting.",
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


# ---------------------------------------------------------------- enroll


class FaceChoice(_Strict):
    """Which face of the photo to enroll, instead of the primary-face rule: exactly one of
    ``box`` and ``index``. For a photo where the person to enroll is not the largest face
    (the receptionist enrolling Rose from a photo where Kit is nearer the camera)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"box": [412, 80, 520, 188]}, {"index": 1}]},
    )

    box: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="[left, top, right, bottom] in the photo's pixels (right and bottom "
        "inclusive, as every `bbox` of the API): the detected face that overlaps it best is "
        "taken, if its intersection over union reaches 0.3 (else 422 `face_not_detected`). "
        "A `bbox` from POST /embed or POST /identify fits, and so does a box drawn by hand.",
    )
    index: int | None = Field(
        None,
        ge=0,
        le=10000,
        description="Position of the face in the `faces` list POST /embed or POST /identify "
        "returned for the same photo (most confident first; send the same `min_face_px` and "
        "`face_crop`). Out of range: 422 `face_not_detected`.",
    )

    @model_validator(mode="after")
    def _one(self) -> FaceChoice:
        if (self.box is None) == (self.index is None):
            raise ValueError("give exactly one of box or index")
        return self


ReplaceMetadata = Annotated[
    bool,
    Field(
        description="When the subject already exists, replace its metadata with `metadata` "
        "(the old value is erased). Default false: an existing subject keeps its metadata and "
        "the response's `metadata_status` says `kept` when the given metadata differed, so "
        "re-sending a photo never overwrites data silently. PATCH /subjects/{id} changes "
        "metadata without a photo."
    ),
]


class EnrollForm(_Strict):
    """``multipart/form-data`` fields of POST /enroll: ``image`` (one photo) or ``images``
    (one part per photo, the field repeated)."""

    image: ImageFile | None = Field(
        None, description="One photo; the response is an `EnrollResponse`."
    )
    images: list[ImageFile] | None = Field(
        None,
        min_length=1,
        description="Several photos of the subject (repeat the part); the response is an "
        "`EnrollBatchResponse` with each photo's outcome.",
    )
    subject_id: SubjectId
    metadata: str | None = Field(
        None,
        description="A JSON object (at most 4 KB serialised, 32 levels deep) stored with a "
        "new subject; an existing subject's is replaced only with `replace_metadata=true`.",
    )
    replace_metadata: ReplaceMetadata = False
    on_multiple: OnMultiple = "primary"
    on_duplicate: OnDuplicate = "warn"
    force: bool = Field(
        False,
        description="Enroll even when the face breaks the server's quality limits (422 "
        "`poor_quality` otherwise). The response still reports the face's `quality`.",
    )
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    face: str | None = Field(
        None,
        max_length=256,
        description="Which face to enroll, as the JSON text of a `FaceChoice`: "
        "`{\"box\": [left, top, right, bottom]}` or `{\"index\": n}` (`image` only).",
    )


class EnrollJSON(_Strict):
    """``application/json`` body of POST /enroll: ``image`` (one photo) or ``images``."""

    image: Base64Image | None = Field(
        None, description="One photo; the response is an `EnrollResponse`."
    )
    images: list[Base64Image] | None = Field(
        None,
        min_length=1,
        description="Several photos of the subject; the response is an `EnrollBatchResponse` "
        "with each photo's outcome.",
    )
    subject_id: SubjectId
    metadata: dict[str, Any] | None = Field(
        None,
        description="A JSON object (at most 4 KB serialised, 32 levels deep) stored with a "
        "new subject; an existing subject's is replaced only with `replace_metadata=true`.",
    )
    replace_metadata: ReplaceMetadata = False
    on_multiple: OnMultiple = "primary"
    on_duplicate: OnDuplicate = "warn"
    force: bool = Field(
        False,
        description="Enroll even when the face breaks the server's quality limits (422 "
        "`poor_quality` otherwise). The response still reports the face's `quality`.",
    )
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    face: FaceChoice | None = Field(
        None,
        description="Which face of the photo to enroll (`image` only), instead of the primary "
        "face; `face_selection.decided_by` is then `request`.",
    )


# ---------------------------------------------------------------- verify


VerifyOnMultiple = Annotated[
    Literal["primary", "reject", "any"],
    Field(
        description="Which face of a photo with several faces is compared. `primary` (the "
        "default): the primary face (largest visible, then most confident, then nearest the "
        "centre), as enrollment takes it. `reject`: refuse a photo with a second face (422 "
        "`multiple_faces`): for a kiosk, where nobody should stand behind the claimant. "
        "`any` (with `subject_id` only): every face of the photo is compared with the "
        "subject and the best-matching one answers: the claimed person anywhere in the frame."
    ),
]


class VerifyForm(_Strict):
    """``multipart/form-data`` fields of POST /verify: ``image_a`` + ``image_b``, or ``image`` +
    ``subject_id``."""

    image_a: ImageFile | None = Field(
        None, description="Pair mode: the first photo (its primary face is compared)."
    )
    image_b: ImageFile | None = Field(
        None, description="Pair mode: the second photo (its primary face is compared)."
    )
    image: ImageFile | None = Field(
        None, description="Subject mode: the photo whose primary face is compared with the "
        "subject's templates."
    )
    subject_id: SubjectId | None = Field(
        None, description="Subject mode: the enrolled subject the photo is claimed to show."
    )
    threshold: Threshold | None = None
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    on_multiple: VerifyOnMultiple = "primary"


class VerifyJSON(_Strict):
    """``application/json`` body of POST /verify: ``image_a`` + ``image_b``, or ``image`` +
    ``subject_id``."""

    image_a: Base64Image | None = Field(
        None, description="Pair mode: the first photo (its primary face is compared)."
    )
    image_b: Base64Image | None = Field(
        None, description="Pair mode: the second photo (its primary face is compared)."
    )
    image: Base64Image | None = Field(
        None, description="Subject mode: the photo whose primary face is compared with the "
        "subject's templates."
    )
    subject_id: SubjectId | None = Field(
        None, description="Subject mode: the enrolled subject the photo is claimed to show."
    )
    threshold: Threshold | None = None
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    on_multiple: VerifyOnMultiple = "primary"


# ---------------------------------------------------------------- identify


RememberUnknown = Annotated[bool, Field(
    description="Keep the faces that match nobody in the unknown-face pool, to be clustered "
    "and named later (POST /clusters); needs the server's FACESERVE_REMEMBER_UNKNOWN.")]
UnknownSource = Annotated[str | None, Field(
    max_length=512, description="Your own reference to the photo (an id, a path), stored with "
    "each remembered face and returned by GET /clusters.")]
ReturnEmbedding = Annotated[bool, Field(
    description="Return each face's embedding (`embedding_b64`): what POST "
    "/negatives takes to mark a face of this result \"not this person\".")]


IncludeMetadata = Annotated[bool, Field(
    description="Add each candidate's subject `metadata` (a display name, a badge number) to "
    "the results, sparing a GET /subjects/{id} per candidate. Needs scope `read` besides "
    "`recognize` (403 `insufficient_scope` otherwise).")]


class IdentifyForm(_Strict):
    """``multipart/form-data`` fields of POST /identify."""

    image: ImageFile
    k: K = 5
    threshold: Threshold | None = None
    identify_fpir: IdentifyFpir | None = None
    max_faces: int | None = Field(
        None, ge=1, description="Most faces to identify (at most the server's max_faces)."
    )
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    remember_unknown: RememberUnknown = False
    source: UnknownSource = None
    include_metadata: IncludeMetadata = False
    return_embedding: ReturnEmbedding = False


class IdentifyJSON(_Strict):
    """``application/json`` body of POST /identify."""

    image: Base64Image
    k: K = 5
    threshold: Threshold | None = None
    identify_fpir: IdentifyFpir | None = None
    max_faces: int | None = Field(
        None, ge=1, description="Most faces to identify (at most the server's max_faces)."
    )
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None
    remember_unknown: RememberUnknown = False
    source: UnknownSource = None
    include_metadata: IncludeMetadata = False
    return_embedding: ReturnEmbedding = False


class IdentifySearchJSON(_Strict):
    """Body of POST /identify/search: GET /identify's query, kept out of the URL (a face
    template in a query string ends up in proxies' and browsers' logs)."""

    face_id: str | None = Field(None, max_length=64, description="A stored face to search with.")
    embedding: str | None = Field(
        None,
        max_length=1024,
        description="URL-safe base64 of 128 little-endian float32 (as returned by POST /embed "
        "in `embedding_b64`); re-normalised before searching.",
    )
    k: K = 5
    threshold: Threshold | None = None
    identify_fpir: IdentifyFpir | None = None
    include_metadata: IncludeMetadata = False


# ---------------------------------------------------------------- embed


class EmbedForm(_Strict):
    """``multipart/form-data`` fields of POST /embed."""

    image: ImageFile
    max_faces: int | None = Field(None, ge=1, description="Most faces to embed.")
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None


class EmbedJSON(_Strict):
    """``application/json`` body of POST /embed."""

    image: Base64Image
    max_faces: int | None = Field(None, ge=1, description="Most faces to embed.")
    face_crop: FaceCrop = False
    min_face_px: MinFacePx = None


# ---------------------------------------------------------------- keys


class CreateKeyRequest(_Strict):
    """POST /keys: a new key in the calling admin key's gallery (or, from an admin of the
    default gallery, in the gallery named)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "photo-app", "scopes": ["recognize", "read"]},
        {"name": "acme-kiosk", "scopes": ["enroll", "recognize"], "gallery": "acme"},
    ]})

    name: Annotated[
        str,
        Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
              description="Not blank, no invisible or reordering characters, and not "
              "`(command line)` (the audit log's label for the command line)."),
        AfterValidator(check_key_name),
    ]
    scopes: list[Scope] = Field(
        min_length=1, max_length=len(SCOPES),
        description="What the key may do: `enroll`, `recognize`, `read`, `erase`, `metrics`, "
        "`audit`, `admin` (README: API keys and scopes). `admin` alone manages keys and "
        "galleries only.",
    )
    gallery: str | None = Field(
        None,
        pattern=GALLERY_PATTERN,
        description="Bind the new key to this gallery (see GET /galleries) instead of the "
        "caller's own. Only an admin key of the default gallery may choose; it must exist.",
        examples=["acme"],
    )


class CreateGalleryRequest(_Strict):
    """POST /galleries: a new, empty gallery (a tenant with its own subjects, keys and log)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "acme"}]})

    name: str = Field(
        pattern=GALLERY_PATTERN,
        description="1-64 characters of letters, digits, `_`, `.`, `-`, starting with a letter "
        "or digit; then bind keys to it with `POST /keys` from a key of the gallery, or "
        "`faceserve keys create --gallery <name>`.",
        examples=["acme"],
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


# ---------------------------------------------------------------- subjects


class UpdateSubjectRequest(_Strict):
    """``application/json`` body of PATCH /subjects/{id}: a new id, new metadata, or both
    (applied in one transaction)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"subject_id": "rose-tyler", "metadata": {"name": "Rose Tyler", "team": "desk"}},
        ]},
    )

    subject_id: NewSubjectId | None = Field(
        None,
        description="Rename: the subject's new id. Its faces move with it (same face ids) and "
        "identify answers with the new id at once. 409 `subject_exists` when the id is taken: "
        "to combine two subjects, POST /subjects/{id}/merge.",
    )
    metadata: dict[str, Any] | None = Field(
        None,
        description="Replaces the subject's metadata as a whole (at most 4 KB serialised, 32 "
        "levels deep); `{}` clears it. Absent: the metadata is kept.",
    )


class MergeSubjectRequest(_Strict):
    """``application/json`` body of POST /subjects/{id}/merge: the path's subject is merged
    *into* ``into``, and goes."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"into": "rose-tyler"}]},
    )

    into: SubjectId = Field(
        description="The subject that receives every face of the path's subject and keeps its "
        "own id and metadata; the path's subject is removed."
    )


# ---------------------------------------------------------------- clusters


class ClusterRequest(_Strict):
    """``application/json`` body of POST /clusters."""

    model_config = ConfigDict(extra="forbid", strict=True)  # `false` is not a threshold

    mode: Literal["incremental", "full"] = Field(
        "incremental",
        description="`incremental`: faces new to the pool join the existing clusters (or "
        "form new ones with faces still alone); `full`: recluster the whole pool.",
    )
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="Cosine similarity for one person (default: the clustering default).",
    )


class NameClusterRequest(_Strict):
    """``application/json`` body of POST /clusters/{id}/name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    subject_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                            description="Subject to enroll the cluster's faces as (new or "
                            "existing).")


class MergeClusterRequest(_Strict):
    """``application/json`` body of POST /clusters/{id}/merge."""

    model_config = ConfigDict(extra="forbid", strict=True)

    into: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$",
                      description="The cluster that receives the faces.")


# ---------------------------------------------------------------- corrections


class NegativeRequest(_Strict):
    """``application/json`` body of POST /negatives: a subject and exactly one face."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"subject_id": "person-0042", "unknown_face_id": "0b6f3c1e9a2d4f5e8c7b6a5d4e3f2a1b"},
        {"subject_id": "person-0042", "face_id": "9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"},
        {"subject_id": "person-0042", "embedding": "q0Z3vQ..."},
    ]})

    subject_id: SubjectId = Field(description="The subject the face is not (it must exist).")
    face_id: str | None = Field(
        None, min_length=1, max_length=64,
        description="An enrolled face of another subject of the key's gallery (a face of the "
        "subject itself is refused: move it out or delete it first).")
    unknown_face_id: str | None = Field(
        None, min_length=1, max_length=64,
        description="A face of the unknown-face pool or of a cluster (`unknown_face_id` of an "
        "identify result, `face_id` of GET /clusters); it stays in the pool.")
    embedding: str | None = Field(
        None, max_length=1024,
        description="URL-safe base64 of 128 little-endian float32: `embedding_b64` of a face "
        "of an identify result (`return_embedding`) or of POST /embed.")


class MoveFaceRequest(_Strict):
    """``application/json`` body of POST /faces/{face_id}/move."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"subject_id": "person-0043"}]})

    subject_id: SubjectId = Field(description="The subject to give the face to: an existing "
                                  "one, or a new one (created with no metadata).")


class SplitClusterRequest(_Strict):
    """``application/json`` body of POST /clusters/{id}/split."""

    model_config = ConfigDict(extra="forbid", strict=True)

    face_ids: list[str] = Field(min_length=1, max_length=1000,
                                description="Pool faces to take out of the cluster.")
