"""Service settings: one ``Settings`` class read from ``FACESERVE_*`` variables and ``.env``.

Every field carries a ``description``: the README's settings table is generated from this
class (``faceserve serve --print-settings-table``), so the documentation cannot drift from
the code. The match threshold is either a cosine similarity or an operating point named by
its false-accept rate (``far=1e-3``), looked up in the profile that ``faceserve eval lfw``
writes; ``resolve_operating_point`` turns either form into the number the service uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.fpir import CohortStats, FpirRule, ImpostorTail, load_reference
from service.api.schemas import OperatingPoint

__all__ = [
    "DEFAULT_THRESHOLD",
    "ProfileError",
    "Settings",
    "resolve_fpir_rule",
    "resolve_operating_point",
    "setting_default",
    "settings_table",
]

# Cosine similarity between L2-normalised dlib-resnet-v1 embeddings, chosen from data: on the
# full LFW View-2 protocol (3000 genuine + 3000 impostor pairs, our pipeline, no flip) 0.915
# accepts 0.17% of impostor pairs and 97.3% of genuine ones (the accuracy-best 0.911 accepts
# 0.6% of impostors). Identification compares a stranger with every subject, so its false
# matches grow with the gallery: the default leans to the strict side. Unrelated people
# score 0.75-0.88 on this model, the same person 0.92-0.98. `faceserve eval lfw` writes
# calibrated operating points (`threshold=far=1e-3`) for deployments that want a stated FAR.
DEFAULT_THRESHOLD = 0.915


class ProfileError(ValueError):
    """The operating-point profile is missing, unreadable, for another model, or lacks the FAR."""


class Settings(BaseSettings):
    """Configuration of ``faceserve serve``; environment variables are ``FACESERVE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="FACESERVE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(
        Path("./data"),
        description="Directory holding the gallery (SQLite database, FAISS snapshot, chips).",
    )
    model: str = Field(
        "dlib",
        description="Embedding model: `dlib` (the published dlib ResNet, converted), the path "
        "of a `.safetensors` file written by `faceserve export`, or an ONNX model added with "
        "`faceserve models add` (its name in `model_dir`, or its `.onnx` path). Its version "
        "string is stored with every embedding; a gallery built by another model is refused "
        "until `faceserve reembed` has re-computed it. An exported model brings its own "
        "threshold; an ONNX model has none until calibrated (see `threshold`).",
    )
    detector: str = Field(
        "dlib",
        description="Face detector: `dlib` (MMOD and dlib's 5-point predictor), or an SCRFD "
        "model added with `faceserve models add FILE --preset scrfd` (name or `.onnx` path), "
        "which gives the eye centres, nose tip and mouth corners that ArcFace-family models "
        "are aligned on (those models need it).",
    )
    model_dir: Path | None = Field(
        None,
        description="Where `faceserve models add` puts ONNX models and their manifests, and "
        "where the names in `model` and `detector` are looked up; default `<data_dir>/models`.",
    )
    device: str = Field(
        "auto",
        description="Torch device for the models: `auto` (GPU if present), `cpu`, `cuda`, "
        "`cuda:1`.",
    )
    host: str = Field("127.0.0.1", description="Address `faceserve serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port `faceserve serve` listens on.")
    workers: int = Field(
        1,
        ge=1,
        description="Server processes. Must be 1 with the SQLite gallery: every process would "
        "hold its own index cache and miss the others' enrollments and deletions.",
    )
    threshold: float | str = Field(
        DEFAULT_THRESHOLD,
        description="Match threshold: a cosine similarity in [-1, 1] (match when similarity "
        ">= threshold), or `far=1e-3` to use the calibrated operating point for that false "
        "accept rate from the profile. Unset with an exported `model`: the model's own "
        "operating point (TAR at its validation FAR, measured on identities held out of its "
        "training). An ONNX model (`faceserve models add`) has no operating point of its "
        "own: unset, the service refuses to start rather than apply dlib's number to it. "
        "Responses report which one was used.",
    )
    identify_fpir: float | None = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="Identification (1:n) decisions hold this false positive identification "
        "rate: the threshold is computed for the searched gallery as it is now (its size and "
        "how alike its subjects are) so that about this share of strangers is matched to "
        "anyone, whether 10 or 100,000 faces are enrolled. `off`: identify uses `threshold` "
        "like verify. A request's own `threshold` or `identify_fpir` wins.",
    )
    impostor_reference: Path | None = Field(
        None,
        description="Impostor reference JSON (`faceserve calibrate` writes one from photos of "
        "your own cameras); default `<data_dir>/impostor_reference.json` when present, else "
        "the one shipped for the model (dlib: LFW).",
    )
    profile: Path | None = Field(
        None,
        description="Operating-point profile JSON written by `faceserve eval lfw`; default "
        "`<data_dir>/operating_points.json`. Read only when `threshold` is `far=...`.",
    )
    docs: bool = Field(
        True,
        description="Serve the API docs pages `/docs` (Swagger UI) and `/redoc`: they load "
        "pinned scripts from cdn.jsdelivr.net under a strict Content-Security-Policy. `false` "
        "turns them off (no third-party script; offline); `/openapi.json` stays.",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Largest request body in bytes; larger uploads get 413 before they are "
        "read (checked from Content-Length and while streaming).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest decoded image (width x height), checked from the image header "
        "before decoding.",
    )
    decoded_pixels_in_flight: int = Field(
        60_000_000,
        ge=1,
        description="Most decoded pixels held by image requests at once, all requests "
        "together (a pixel costs the pipeline about 22 bytes at its peak); a request whose "
        "image would pass it gets 429 `overloaded` with Retry-After. One image alone is always "
        "decoded.",
    )
    max_faces: int = Field(
        10, ge=1, description="Most faces identified or embedded per image (most confident first)."
    )
    max_enroll_images: int = Field(
        10,
        ge=1,
        le=100,
        description="Most photos in one POST /enroll (`images`); more get 422 "
        "`too_many_images`. Their bytes together stay under `max_upload_bytes`.",
    )
    index_kind: Literal["flat", "pq", "hnsw", "auto"] = Field(
        "flat",
        description="FAISS index: `flat` (exact inner product), `pq` (PQ fast-scan candidates "
        "re-ranked exactly; for large galleries), `hnsw` (approximate graph), `auto` (`flat` "
        "below 100,000 faces, then `pq`).",
    )
    store_chips: bool = Field(
        True, description="Keep the aligned face chip (JPEG) of each enrolled face: 150x150 "
        "for dlib's model, 112x112 for the ArcFace family; `faceserve reembed` needs them."
    )
    remember_unknown: bool = Field(
        False,
        description="Allow `remember_unknown` on POST /identify: faces that match nobody are "
        "kept in the gallery's unknown-face pool (embedding, chip, the photo's hash and the "
        "client's `source`, time), never searched, to be clustered and named (README: "
        "Clustering). Off: such requests are refused.",
    )
    unknown_ttl_days: float = Field(
        30.0,
        gt=0,
        description="Unknown-face pool faces older than this many days are erased.",
    )
    upsample: int = Field(
        0,
        ge=0,
        le=2,
        description="Upsample photos N times before detection: finds faces smaller than about "
        "80 px, at 4x the detection cost per step. With an SCRFD detector each step doubles "
        "its 640 px letterbox.",
    )
    min_face_px: int | None = Field(
        None,
        ge=20,
        le=4096,
        description="The smallest face (box side, px of the original photo) detection must "
        "find; replaces `upsample` when set. Above the detector's 80 px window the photo is "
        "scanned from the scale where this size is the window, so cost falls with its "
        "square (120: about half, 200: a sixth); below it the photo is upsampled. Unset: "
        "the reach of `upsample` (80 px at 0), the detector as before; what each value finds "
        "is in the README (Speed). Requests may set their own. With an SCRFD detector the "
        "photo is scanned at 16 / this (its smallest anchor is 16 px; README, Using other "
        "models).",
    )
    small_image_retry_px: int = Field(
        300,
        ge=0,
        description="Images whose longer side is under this, with no face found, are detected "
        "again with one more upsampling step: finds the ~60 px faces of tightly cropped "
        "uploads (phone apps' crops) at little cost. 0 turns it off.",
    )
    max_side: int | None = Field(
        2048,
        ge=64,
        description="Shrink photos whose longer side exceeds this before detection (boxes are "
        "mapped back); bounds detection time for large photos.",
    )
    flip: bool = Field(
        False, description="Average each embedding with that of the mirrored face chip."
    )
    batching: bool = Field(
        True,
        description="Micro-batch the embedding of faces from concurrent requests into one "
        "forward pass; off runs one pass per request.",
    )
    batch_max_size: int = Field(
        32, ge=1, description="Most faces in one micro-batched forward pass."
    )
    batch_max_wait_ms: float = Field(
        5.0,
        ge=0,
        description="Longest time a face waits for others to join its micro-batch, in ms; "
        "it waits only while other photos are being detected (a lone request does not).",
    )
    inference_threads: int | None = Field(
        None,
        ge=1,
        description="Threads decoding, detecting and aligning faces (off the event loop). "
        "Unset: one per CPU core this process may use; more only queue for the cores and "
        "Python's GIL (on 2 cores, 4 threads answer 10% fewer requests than 2; README, Speed).",
    )
    detection_processes: int | None = Field(
        None,
        ge=0,
        description="Worker processes that decode, detect and align photos, on the CPU (each "
        "loads its own copy of the models). Unset: one per CPU core this process may use, if "
        "there are two or more, and none when the models run on a GPU (there workers trade "
        "the GPU's detection for the CPU's: README, GPU figures). 0: in the server process's "
        "inference threads, where Python's GIL keeps two photos from using two cores (README, "
        "Speed). A photo that arrives while nothing else runs stays in the server (no "
        "hand-over to pay).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Not used: API keys are created with `faceserve keys create` and stored "
        "hashed in the gallery database. `faceserve serve` refuses to start when this is set, "
        "so nobody mistakes plaintext keys in the environment for protection.",
    )
    request_timeout_s: float = Field(
        60.0,
        ge=0,
        description="Longest a request may take, body upload included; then 408 (body still "
        "arriving) or 503 `timeout`. 0 turns it off.",
    )
    header_timeout_s: float = Field(
        10.0,
        ge=0,
        description="Longest a connection may take to send a request line and headers (from "
        "when it opens, and after each response); then it is closed. 0 turns it off.",
    )
    keep_alive_s: int = Field(
        5, ge=1, description="Seconds an idle connection is kept open after a response."
    )
    max_connections: int = Field(
        500,
        ge=1,
        description="Most open client connections; one more is answered 503 with Retry-After "
        "and closed at once (each holds a file descriptor).",
    )
    inference_queue: int = Field(
        32,
        ge=1,
        description="Most image requests (enroll, verify, identify, embed) inside inference at "
        "once, running or waiting; more get 429 `overloaded` with Retry-After before their "
        "body is read, so memory stays bounded under overload.",
    )
    inference_slots_per_key: int = Field(
        8,
        ge=1,
        description="Most image requests one API key (without keys: one client address) may "
        "have inside inference at once; more get 429 `rate_limited`, so one caller's slow "
        "uploads cannot fill `inference_queue` for everyone.",
    )
    min_upload_bytes_per_s: float = Field(
        1024.0,
        ge=0,
        description="Slowest accepted request body, on average, after `upload_grace_s`; a "
        "slower one gets 408 `request_timeout` and its connection is closed (a trickled upload "
        "holds an inference slot). 0 turns it off.",
    )
    upload_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds a request body may take before `min_upload_bytes_per_s` applies.",
    )
    rate_limit_per_s: float = Field(
        20.0,
        ge=0,
        description="Requests per second each API key may make on average (token bucket); "
        "more get 429 `rate_limited` with Retry-After. 0 turns it off. Requests without keys "
        "(a server with no keys, on localhost) are not rate limited.",
    )
    rate_limit_burst: int = Field(
        40, ge=1, description="Requests an API key may make at once before its rate applies."
    )

    database_url: str | None = Field(
        None,
        description="Empty: the SQLite gallery in the data dir (one process). "
        "`postgresql://user:password@host:5432/db`: the PostgreSQL gallery, shared by several "
        "replicas (each keeps its index in memory and follows the others' changes); the "
        "schema is the first of the URL's search_path (`?options=-csearch_path%3Dname`).",
    )

    add_faces_scope: Literal["enroll", "admin"] = Field(
        "enroll",
        description="Scope a key needs to add faces to a subject that already exists (and "
        "replace its metadata): `admin` keeps enroll-only keys to creating new subjects, so "
        "one cannot add another person's face to an existing identity. Audited as `add_face`.",
    )

    # Enrollment quality limits (service/inference/quality.py): a face breaking one gets 422
    # `poor_quality` unless the request says force=true. The defaults are
    # models.quality.DEFAULT_LIMITS, where the evidence for each is written down (repeated here
    # so reading settings does not import torch; a test holds them equal).
    enroll_min_eye_distance: float | None = Field(
        26.3,
        ge=0,
        description="Refuse to enroll faces with fewer pixels between the eye centres. The "
        "default is half the 52.5 px of the aligned chip: below it the chip is upsampled "
        "more than the embedder's stride-2 first layer absorbs. `none` turns it off.",
    )
    enroll_min_sharpness: float | None = Field(
        0.2,
        ge=0,
        le=1,
        description="Refuse faces whose chip sharpness (1 - re-blur measure, independent of "
        "brightness, contrast and colour) is lower. The default is what a 2 px Gaussian blur "
        "leaves of a typical LFW face, where the TAR at FAR 1e-3 fell 4.5 points. `none` turns "
        "it off.",
    )
    enroll_max_abs_yaw: float | None = Field(
        51,
        ge=0,
        description="Refuse faces turned further than this (degrees, from the landmarks): the "
        "default is where the nose base lies under an eye centre, the far eye's inner corner "
        "is behind the nose and a frontal 5-point alignment no longer fits. `none` turns it "
        "off.",
    )
    enroll_max_abs_roll: float | None = Field(
        None,
        ge=0,
        description="Refuse faces tilted in-plane more than this (degrees). Off by default: "
        "alignment rotates roll away.",
    )
    enroll_min_detection_confidence: float | None = Field(
        0.5,
        description="Refuse faces the detector scored lower. The default is half the "
        "margin dlib's detector was trained to give faces (LFW faces score 1.0-1.1): below "
        "it the detector is barely sure it is a face. `none` turns it off.",
    )
    enroll_min_brightness: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Refuse faces whose mean grey level (0-1) is lower. Off by default: dark "
        "skin in dim light is dark without being unusable; `enroll_min_contrast` and "
        "`enroll_max_dark_share` catch faces whose detail is gone.",
    )
    enroll_max_brightness: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Refuse faces whose mean grey level (0-1) is higher. Off by default "
        "(`enroll_max_bright_share` catches blown-out faces).",
    )
    enroll_min_contrast: float | None = Field(
        0.0118,
        ge=0,
        le=1,
        description="Refuse faces whose grey-level standard deviation (0-1) is lower. The "
        "default, 3 of 255 levels, is where a badly underexposed or washed-out face is drawn "
        "with too few grey levels to recognise. `none` turns it off.",
    )
    enroll_max_dark_share: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="Refuse faces with a larger share of the face region crushed to black "
        "(grey <= 10/255; also the black fill of a face cut by the image border). `none` "
        "turns it off.",
    )
    enroll_max_bright_share: float | None = Field(
        0.25,
        ge=0,
        le=1,
        description="Refuse faces with a larger share of the face region blown to white "
        "(grey >= 245/255): a quarter of the face without detail already costs TAR. `none` "
        "turns it off.",
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _parse_threshold(cls, value: Any) -> float | str:
        if isinstance(value, bool):
            raise ValueError("threshold must be a number or far=<rate>")
        if isinstance(value, int | float):
            number = float(value)
        else:
            text = str(value).strip().lower()
            if text.startswith("far="):
                try:
                    far = float(text[4:])
                except ValueError:
                    raise ValueError(f"bad false-accept rate in {value!r}") from None
                if not 0.0 < far < 1.0:
                    raise ValueError(f"false-accept rate must be in (0, 1), got {far}")
                return f"far={far:g}"
            try:
                number = float(text)
            except ValueError:
                raise ValueError(
                    f"threshold must be a cosine similarity or far=<rate>, got {value!r}"
                ) from None
        if not math.isfinite(number) or not -1.0 <= number <= 1.0:
            raise ValueError(f"cosine threshold must be in [-1, 1], got {number}")
        return number

    @field_validator(
        "enroll_min_eye_distance", "enroll_min_sharpness", "enroll_max_abs_yaw",
        "enroll_max_abs_roll", "enroll_min_detection_confidence", "enroll_min_brightness",
        "enroll_max_brightness", "enroll_min_contrast", "enroll_max_dark_share",
        "enroll_max_bright_share", "identify_fpir", mode="before",
    )
    @classmethod
    def _limit_off(cls, value: Any) -> Any:
        """``none``, ``off`` or an empty value switch a quality limit (or ``identify_fpir``)
        off."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def impostor_reference_path(self) -> Path | None:
        if self.impostor_reference is not None:
            return self.impostor_reference
        local = self.data_dir / "impostor_reference.json"
        return local if local.is_file() else None

    @property
    def model_dir_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    @property
    def profile_path(self) -> Path:
        return self.profile if self.profile is not None else self.data_dir / "operating_points.json"


def resolve_operating_point(
    settings: Settings, model_version: str, manifest: dict[str, Any] | None = None
) -> OperatingPoint:
    """The threshold the service compares similarities with, and where it came from.

    ``far=...`` thresholds come from the evaluation profile, which must be for the model that
    is serving: a threshold calibrated on another model's similarities means nothing. For
    the same reason the default number (:data:`DEFAULT_THRESHOLD`, measured on dlib's model)
    is never applied to an exported model (``manifest``): unless ``threshold`` is set, such a
    model is served at the operating point its export recorded, and refused without one.
    """
    explicit = "threshold" in settings.model_fields_set
    if manifest and not explicit:
        return _manifest_operating_point(manifest, model_version)
    if isinstance(settings.threshold, float):
        return OperatingPoint(threshold=settings.threshold, source="setting")
    far = float(settings.threshold.split("=", 1)[1])
    path = settings.profile_path
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(
            f"threshold {settings.threshold} needs the operating-point profile {path}, which "
            "does not exist; run `faceserve eval lfw` or set FACESERVE_PROFILE"
        ) from None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read operating-point profile {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("operating_points"), list):
        raise ProfileError(f"{path} is not an operating-point profile (no operating_points)")
    if raw.get("model") != model_version:
        raise ProfileError(
            f"{path} was calibrated for model {raw.get('model')!r} but the service runs "
            f"{model_version!r}; re-run `faceserve eval lfw` for this model"
        )
    if raw.get("flip") is not None and bool(raw["flip"]) != settings.flip:
        raise ProfileError(
            f"{path} was calibrated with flip={bool(raw['flip'])} but the service runs with "
            f"flip={settings.flip}: thresholds differ between the two; re-run "
            "`faceserve eval lfw` with the same --flip setting"
        )
    if raw.get("metric", "cosine") != "cosine":
        raise ProfileError(f"{path} uses metric {raw.get('metric')!r}; the service needs cosine")
    for point in raw["operating_points"]:
        if isinstance(point, dict) and math.isclose(
            float(point.get("far", -1)), far, rel_tol=1e-6
        ):
            return OperatingPoint(
                threshold=float(point["threshold"]),
                source="profile",
                far=far,
                tar=point.get("tar"),
                profile=str(path),
                dataset=raw.get("dataset"),
            )
    available = sorted(float(p["far"]) for p in raw["operating_points"] if "far" in p)
    notes = raw.get("notes") or []
    hint = f"; notes: {' '.join(map(str, notes))}" if notes else ""
    raise ProfileError(
        f"{path} has no operating point for FAR {far:g} (available: "
        f"{', '.join(f'{a:g}' for a in available) or 'none'}){hint}"
    )


def _manifest_operating_point(manifest: dict[str, Any], model_version: str) -> OperatingPoint:
    if manifest.get("format", "").startswith("faceserve-onnx/"):
        raise ProfileError(
            f"model {model_version!r} (ONNX, {manifest.get('name')!r}) has no calibrated "
            "operating point, and the default threshold was measured on the dlib model, not "
            "this one. Calibrate it: `faceserve eval lfw --model "
            f"{manifest.get('name')} --detector ... --profile DATA_DIR/operating_points.json`"
            ", then set FACESERVE_THRESHOLD=far=1e-3; or set FACESERVE_THRESHOLD to a cosine "
            "similarity you measured for it"
        )
    validation = manifest.get("validation") or {}
    threshold, far = validation.get("tar_threshold"), validation.get("far")
    if not isinstance(threshold, int | float) or not isinstance(far, int | float) or not (
        math.isfinite(threshold) and -1.0 <= threshold <= 1.0
    ):
        raise ProfileError(
            f"model {model_version!r} records no validated operating point (exported from a "
            "checkpoint taken mid-epoch?), and the default threshold belongs to the dlib "
            "model; set FACESERVE_THRESHOLD to a cosine similarity, or to far=<rate> with a "
            "profile from `faceserve eval lfw --model ...`"
        )
    data = manifest.get("data") or {}
    held_out = data.get("val_identities")
    dataset = f"validation: {held_out} identities held out of training" if held_out else None
    return OperatingPoint(
        threshold=float(threshold),
        source="model",
        far=float(far),
        tar=validation.get("tar"),
        dataset=dataset,
    )


def setting_default(name: str) -> str:
    """A setting's default as the README and ``--help`` show it ("" when it has none)."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        default: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        default = field.default
    if default is None:
        return ""
    if isinstance(default, list):
        return ",".join(default)
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"  # str(Path("./data")) drops the "./"
    return str(default)


def settings_table() -> str:
    """The README's settings table, in Markdown, generated from the field descriptions."""
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        shown = setting_default(name)
        rows.append(
            f"| `FACESERVE_{name.upper()}` | `{shown}` | {field.description or ''} |"
            if shown
            else f"| `FACESERVE_{name.upper()}` | | {field.description or ''} |"
        )
    return "\n".join(rows)


def resolve_fpir_rule(settings: Settings, model_version: str) -> FpirRule:
    """The impostor reference identification thresholds build on (``models.fpir``).

    A user's calibration (``impostor_reference``) first, then the one shipped for the model;
    a model with neither gets a reference with no prior: its thresholds then come from the
    gallery alone (Gaussian tail), and from the model's per-comparison threshold while the
    gallery has fewer than two subjects.
    """
    path = settings.impostor_reference_path
    try:
        rule = load_reference(model_version, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"impostor reference {path}: {exc}") from None
    if rule is None:
        if path is not None:
            raise ProfileError(f"impostor reference {path} does not exist")
        rule = FpirRule(model_version, CohortStats(0, 0.0, 0.0), ImpostorTail.gaussian(),
                        prior_subjects=0)
    return rule
