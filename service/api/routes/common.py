"""Helpers shared by the routes: request bodies in two media types, base64, search, shapes.

Image endpoints accept ``multipart/form-data`` or ``application/json`` on the same path. The
body is parsed here by hand (FastAPI binds one media type per parameter set) and validated
with the endpoint's ``*Form`` or ``*JSON`` model, so errors are the same 422 ``invalid_field``
that FastAPI's own validation gives.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Collection, Iterable
from contextlib import aclosing
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from models.face_selection import Selection
from models.faces import Box
from models.imageio import InvalidBase64 as InvalidImageBase64
from models.imageio import b64decode_image
from models.negatives import nearest_negative, refused
from service.api.deps import Services
from service.api.errors import BadRequest, InvalidBase64, InvalidField, UnsupportedMediaType
from service.api.schemas import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    BBox,
    Candidate,
    FaceSelection,
    NegativeMatch,
    OperatingPoint,
)
from service.gallery.gallery import Gallery
from service.security.auth import Principal
from service.security.keys import Namespace

__all__ = [
    "audit_event",
    "candidates_for",
    "decode_base64_image",
    "decode_embedding",
    "encode_embedding",
    "face_selection_of",
    "identify_point",
    "image_bytes",
    "image_request_body",
    "landmarks_list",
    "match_of",
    "one_subject_per_photo",
    "operating_point_for",
    "parse_body",
    "parse_metadata",
    "run_in_threadpool",
    "suppress_by_negatives",
    "to_bbox",
    "too_many_images",
]

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=BaseModel)
J = TypeVar("J", bound=BaseModel)

EMBEDDING_DIM = 128
_MAX_FORM_FIELDS = 16
_MAX_FORM_FILES = 4


# ---------------------------------------------------------------- request bodies


def image_request_body(form_model: type[BaseModel], json_model: type[BaseModel]) -> dict:
    """``openapi_extra`` for an operation whose body comes as multipart or as JSON."""
    ref = "#/components/schemas/{}"
    return {
        "requestBody": {
            "required": True,
            "description": "Either `multipart/form-data` (image files as parts) or "
            "`application/json` (images as base64 strings).",
            "content": {
                "multipart/form-data": {"schema": {"$ref": ref.format(form_model.__name__)}},
                "application/json": {"schema": {"$ref": ref.format(json_model.__name__)}},
            },
        }
    }


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        for err in errors:
            err["loc"] = ("body", *err.get("loc", ()))
        raise RequestValidationError(errors) from None


async def parse_body(
    request: Request,
    form_model: type[F],
    json_model: type[J],
    *,
    lists: Collection[str] = (),
    max_files: int = _MAX_FORM_FILES,
) -> F | J:
    """The validated body: ``form_model`` for multipart, ``json_model`` for JSON.

    Multipart fields named in ``lists`` may repeat (one part per item) and arrive as a list;
    any other field given twice is refused. At most ``max_files`` file parts are read: more
    is 422 ``too_many_images`` (every image part is a temporary file while the form is open).
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        # Image parts sent without a filename count as fields: room for them beside the rest.
        max_fields = _MAX_FORM_FIELDS + max(0, max_files - _MAX_FORM_FILES)
        undecodable: list[str] = []
        try:
            if media == "multipart/form-data":
                form, undecodable = await _read_multipart(request, max_files, max_fields)
            else:
                form = await request.form(max_files=max_files, max_fields=max_fields)
        except StarletteHTTPException as exc:
            if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
                raise too_many_images(max_files) from None
            raise
        data: dict[str, Any] = {}
        try:
            if undecodable:
                raise InvalidField(
                    f"field {undecodable[0]!r} is not valid UTF-8 text (or the charset the "
                    "request declares)"
                )
            for key, value in form.multi_items():
                item = await value.read() if isinstance(value, UploadFile) else value
                if key in lists:
                    data.setdefault(key, []).append(item)
                elif key in data:
                    raise InvalidField(f"field {key!r} is given more than once")
                else:
                    data[key] = item
        finally:
            await form.close()
        return _validate(form_model, data)
    if media == "application/json" or media.endswith("+json"):
        raw = await request.body()
        try:
            # Megabytes of base64 take milliseconds to parse: not on the event loop.
            obj = await run_in_threadpool(json.loads, raw) if len(raw) > 65536 else json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
        except RecursionError:  # "[[[[..." deeper than the parser allows
            raise BadRequest("the JSON body is nested too deeply", code="invalid_json") from None
        if not isinstance(obj, dict):
            raise BadRequest("the JSON body must be an object", code="invalid_json")
        return _validate(json_model, obj)
    raise UnsupportedMediaType(
        f"send multipart/form-data or application/json, not {media or 'no content type'!r}"
    )


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, noting the text fields that are not valid in the body's charset.

    Starlette decodes such a field as Latin-1 instead, so a subject id sent in another
    encoding would be stored as a different id than the client meant (and Latin-1 turns any
    byte into some character, C1 controls included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undecodable: list[str] = []

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                self.undecodable.append(part.field_name)
        super().on_part_end()


async def _read_multipart(
    request: Request, max_files: int, max_fields: int
) -> tuple[FormData, list[str]]:
    """``request.form()`` for multipart bodies, and the names of fields that did not decode."""
    try:
        async with aclosing(request.stream()) as stream:
            parser = _StrictMultiPartParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            )
            form = await parser.parse()
    except MultiPartException as exc:
        raise StarletteHTTPException(status_code=400, detail=exc.message) from None
    return form, parser.undecodable


def too_many_images(limit: int) -> InvalidField:
    return InvalidField(
        f"at most {limit} images in one request; send the others in another request",
        code="too_many_images",
    )


def _b64decode(text: str, what: str) -> bytes:
    """Standard or URL-safe alphabet, padding optional, whitespace ignored."""
    cleaned = "".join(text.split()).replace("-", "+").replace("_", "/").rstrip("=")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"{what} is not valid base64") from None


def decode_base64_image(value: str | bytes, field: str) -> bytes:
    """Image bytes of a field: raw bytes (multipart) pass through, strings are base64
    (``models.imageio.b64decode_image``: either alphabet, ``data:`` URLs; 400 when bad)."""
    if isinstance(value, bytes):
        return value
    try:
        return b64decode_image(value)
    except InvalidImageBase64 as exc:
        raise InvalidBase64(f"field {field!r}: {exc}") from None


def _nesting(value: Any) -> int:
    """Depth of nested objects and arrays (1 for a flat object), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_METADATA_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


async def image_bytes(value: str | bytes, field: str) -> bytes:
    """``decode_base64_image`` off the event loop (a base64 field may be megabytes)."""
    if isinstance(value, bytes):
        return value
    return await run_in_threadpool(decode_base64_image, value, field)


def parse_metadata(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """``metadata`` as a dict: a JSON object (or its text, from multipart) of at most 4 KB
    serialised, nested at most ``MAX_METADATA_DEPTH`` levels, storable as UTF-8 JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        if len(value) > 8 * MAX_METADATA_BYTES:  # cannot fit even with "\u0041" escapes
            raise InvalidField(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest("metadata is not valid JSON", code="invalid_metadata") from None
        except RecursionError:
            raise InvalidField(
                f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
            ) from None
    if not isinstance(value, dict):
        raise InvalidField("metadata must be a JSON object")
    if _nesting(value) > MAX_METADATA_DEPTH:
        # Deep values are legal JSON but would fail to serialise when read back: refuse them
        # now rather than store something that breaks GET /subjects later.
        raise InvalidField(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON escapes can spell lone surrogates ("\ud800"), which no UTF-8 store can hold.
        raise InvalidField("metadata contains invalid Unicode (a lone surrogate)") from None
    except (ValueError, RecursionError):  # NaN/Infinity (json.loads takes them), too deep
        raise InvalidField("metadata must be plain JSON: no NaN or Infinity") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidField(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return value


# ---------------------------------------------------------------- embeddings


def encode_embedding(vector: np.ndarray) -> str:
    """URL-safe base64 (no padding) of the little-endian float32 vector."""
    raw = np.asarray(vector, dtype="<f4").tobytes()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_embedding(text: str) -> np.ndarray:
    """The inverse of ``encode_embedding``, checked and re-normalised: ``(128,)`` float32."""
    raw = _b64decode(text, "embedding")
    if len(raw) != EMBEDDING_DIM * 4:
        raise BadRequest(
            f"embedding must be {EMBEDDING_DIM} little-endian float32 ({EMBEDDING_DIM * 4} "
            f"bytes), got {len(raw)} bytes",
            code="invalid_embedding",
        )
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    # float64: huge but finite float32 components must not overflow the norm.
    norm = float(np.linalg.norm(vector.astype(np.float64))) if np.all(np.isfinite(vector)) else (
        math.nan
    )
    if not math.isfinite(norm) or norm == 0.0:
        raise BadRequest("embedding must be finite and non-zero", code="invalid_embedding")
    return (vector.astype(np.float64) / norm).astype(np.float32)


# ---------------------------------------------------------------- search


def operating_point_for(default: OperatingPoint, override: float | None) -> OperatingPoint:
    if override is None:
        return default
    return OperatingPoint(threshold=override, source="request")


def identify_point(
    services: Services,
    threshold: float | None = None,
    fpir: float | None = None,
    namespace: Namespace | None = None,
) -> OperatingPoint:
    """The operating point of a 1:n decision (identify, and enrollment's duplicate check).

    An explicit ``threshold`` wins. Otherwise the threshold that holds the target false
    positive identification rate (``fpir``, default the ``identify_fpir`` setting) for the
    caller's gallery as it is now: its face count and how alike its subjects are
    (``models.fpir``). With ``identify_fpir`` off and no ``fpir`` asked for, the configured
    per-comparison threshold, as for verify.
    """
    if threshold is not None:
        return operating_point_for(services.operating_point, threshold)
    target = fpir if fpir is not None else services.identify_fpir
    rule = services.fpir_rule
    if target is None or rule is None:
        return services.operating_point
    view = services.gallery.view(namespace.prefix if namespace is not None else "")
    if rule.reference.pairs == 0 and view.impostors.subjects < 2:
        return services.operating_point  # no reference and nothing to learn from yet
    point = rule.threshold(target, max(view.faces, 1), view.impostors)
    return OperatingPoint(
        threshold=round(point.threshold, 6),
        source="fpir",
        far=point.per_comparison_far,
        fpir=target,
        gallery_faces=view.faces,
        impostor_subjects=view.impostors.subjects,
        reference=rule.tail.source,
    )


def candidates_for(
    gallery: Gallery,
    queries: np.ndarray,
    k: int,
    exclude: Iterable[str] = (),
    visible: Callable[[str], str | None] | None = None,
) -> list[list[Candidate]]:
    """Top ``k`` *subjects* per query, each once with its best face (blocking: run in a thread).

    The index ranks faces; a subject with many templates would crowd others out, so more
    faces are fetched until ``k`` distinct subjects are found or the gallery is exhausted.
    ``visible`` maps a stored subject id to the id the caller sees, or None to hide it (another
    gallery's subject); hidden faces are skipped the same way, so a small gallery inside a
    large index costs more fetching (up to the whole index), never fewer or foreign results.
    """
    excluded = set(exclude)
    results: list[list[Candidate]] = [[] for _ in range(len(queries))]
    total = gallery.size
    if total == 0 or len(queries) == 0:
        return results
    fetch = min(total, max(4 * k, k + 16) + len(excluded))
    while True:
        hits = gallery.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        short = False
        for i, row in enumerate(hits):
            best: dict[str, Candidate] = {}
            for hit in row:
                subject = hit.subject_id if visible is None else visible(hit.subject_id)
                if subject is None or hit.face_id in excluded or subject in best:
                    continue
                similarity = max(-1.0, min(1.0, float(hit.similarity)))
                best[subject] = Candidate(
                    subject_id=subject, face_id=hit.face_id, similarity=similarity
                )
                if len(best) == k:
                    break
            results[i] = list(best.values())
            if len(best) < k and len(row) >= fetch:
                short = True
        if not short or fetch >= total:
            return results
        fetch = min(total, fetch * 4)


def suppress_by_negatives(
    gallery: Gallery,
    queries: np.ndarray,
    per_face: list[list[Candidate]],
    threshold: float,
    namespace: Namespace,
) -> None:
    """Mark (``suppressed_by``) each candidate at or above ``threshold`` whose subject one of
    its negative examples refuses for that query (``models.negatives``: the query is at least
    as similar to the negative as to the subject's best enrolled face). Blocking: one store
    read of the candidates' subjects' negatives, none when no candidate reaches the
    threshold; negatives of another model than the gallery's are not comparable and not used.
    """
    wanted = {c.subject_id for cands in per_face for c in cands if c.similarity >= threshold}
    if not wanted:
        return
    internal = {namespace.internal(s): s for s in wanted}
    grouped: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for n in gallery.store.negatives(list(internal)):  # type: ignore[attr-defined]
        if n.model == gallery.model_version and n.embedding is not None:
            ids, vectors = grouped.setdefault(internal[n.subject_id], ([], []))
            ids.append(n.negative_id)
            vectors.append(n.embedding)
    if not grouped:
        return
    matrices = {s: (ids, np.stack(v)) for s, (ids, v) in grouped.items()}
    for query, candidates in zip(queries, per_face, strict=True):
        for c in candidates:
            if c.similarity < threshold or c.subject_id not in matrices:
                continue
            ids, matrix = matrices[c.subject_id]
            hit = nearest_negative(query, matrix)
            if hit is not None and refused(c.similarity, hit.similarity, threshold):
                c.suppressed_by = NegativeMatch(negative_id=ids[hit.index],
                                                similarity=hit.similarity)


def match_of(candidates: list[Candidate], threshold: float) -> Candidate | None:
    """The best candidate that no negative suppresses, if it reaches ``threshold``."""
    best = next((c for c in candidates if c.suppressed_by is None), None)
    if best is not None and best.similarity >= threshold:
        return best
    return None


def one_subject_per_photo(
    per_face: list[list[Candidate]], threshold: float
) -> list[Candidate | None]:
    """Each face's match when one person appears at most once in a photo.

    ``per_face[i]`` are face ``i``'s candidates, most similar first; those a negative
    suppresses are never offered. Matches are handed out
    best similarity first across the whole photo: a face whose subject a better-scoring face
    already took falls to its next candidate at or above ``threshold``, else to unknown
    (None). Equal similarities go to the earlier face (the more confident detection).
    """
    offers = sorted(
        (
            (-c.similarity, face, rank, c)
            for face, candidates in enumerate(per_face)
            for rank, c in enumerate(candidates)
            if c.similarity >= threshold and c.suppressed_by is None
        ),
        key=lambda offer: offer[:3],
    )
    matches: list[Candidate | None] = [None] * len(per_face)
    taken: set[str] = set()
    for _, face, _, candidate in offers:
        if matches[face] is None and candidate.subject_id not in taken:
            matches[face] = candidate
            taken.add(candidate.subject_id)
    return matches


# ---------------------------------------------------------------- shapes


def face_selection_of(selection: Selection | None) -> FaceSelection | None:
    if selection is None:
        return None
    return FaceSelection(
        rule=selection.rule,
        decided_by=selection.decided_by,
        reason=selection.reason,
        faces_detected=selection.faces_detected,
    )


def to_bbox(box: Box | tuple[int, int, int, int] | list[int]) -> BBox:
    if isinstance(box, Box):
        box = box.as_tuple()
    left, top, right, bottom = (int(v) for v in box)
    return BBox(left=left, top=top, right=right, bottom=bottom)


def landmarks_list(points: Any) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2)]


# ---------------------------------------------------------------- audit


async def audit_event(
    services: Services, principal: Principal, action: str, **fields: Any
) -> None:
    """Record ``action`` by ``principal`` in its gallery (after the change has committed)."""
    if services.audit is not None:
        await run_in_threadpool(
            services.audit.record, principal, action, gallery=principal.gallery, **fields
        )
