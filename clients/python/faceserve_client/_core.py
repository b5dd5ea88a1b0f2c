"""What ``Client`` and ``AsyncClient`` share: each operation as a ``Call`` (method, path, form,
response model), the retry policy and response parsing. The two clients only send calls, so
an operation is written once and cannot differ between them.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from faceserve_client import models as m
from faceserve_client.errors import (
    APIError,
    ConnectionError,
    TimeoutError,
    error_from_response,
)
from faceserve_client.photos import Photo, photo_file

__all__ = ["API", "DEFAULT_URL", "Call", "FaceChoice", "RetryPolicy", "calls", "face_choice"]

DEFAULT_URL = "http://127.0.0.1:8000"
# Every operation is under the API version's prefix (the server also answers the older
# unversioned paths, deprecated).
API = "/v1"
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "faceserve-client/0.1.0"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of answers that mean "not now": 429 (rate limit, full queue) and 503
    (loading, server timeout), and of connections that could not be opened.

    The wait is the server's ``Retry-After`` when it sends one (a wait longer than
    ``max_backoff`` is not retried: the error is raised at once), else ``backoff * 2**attempt``
    seconds with jitter, at most ``max_backoff``. Retrying is safe for every operation:
    enrollment of the same bytes is idempotent, and the other image calls store nothing.
    """

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, error: Exception) -> float | None:
        """Seconds to wait before retry ``attempt + 1`` after ``error``, or None: give up."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, APIError):
            if error.status not in RETRY_STATUSES:
                return None
            if error.retry_after is not None:
                return error.retry_after if error.retry_after <= self.max_backoff else None
        elif not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return None
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * (0.5 + random.random() / 2)


@dataclass
class Call:
    """One HTTP request of the API and the model its answer is parsed into."""

    method: str
    path: str
    model: type[BaseModel] | None
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    json: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.params:
            kwargs["params"] = {k: v for k, v in self.params.items() if v is not None}
        if self.files is not None:
            kwargs["files"] = self.files
            kwargs["data"] = self.data or {}
        elif self.json is not None:
            kwargs["json"] = self.json
        return kwargs

    def parse(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_from_response(response)
        if self.model is None:
            return response
        return self.model.model_validate_json(response.content)


def transport_error(exc: httpx.TransportError, base_url: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"no answer from {base_url} in time ({type(exc).__name__})")
    return ConnectionError(f"cannot reach {base_url}: {exc}")


def headers(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT, **(extra or {})}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def _form(**fields: Any) -> dict[str, str]:
    """Multipart form fields as strings: booleans as ``true``/``false``, objects as JSON."""
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, dict | list):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def _segment(value: str) -> str:
    return quote(value, safe="")


# Which face of a photo to enroll: its index in POST /embed's list, a box [left, top, right,
# bottom] in the photo's pixels, or the server's own form ({"index": n} or {"box": [...]}).
FaceChoice = int | Sequence[float] | dict[str, Any]


def face_choice(face: FaceChoice | None) -> dict[str, Any] | None:
    if face is None or isinstance(face, dict):
        return face
    if isinstance(face, int) and not isinstance(face, bool):
        return {"index": face}
    box = [float(v) for v in face]  # type: ignore[union-attr]
    if len(box) != 4:
        raise ValueError("a face box is [left, top, right, bottom]")
    return {"box": box}


def encode_embedding(embedding: str | Sequence[float] | Any) -> str:
    """URL-safe base64 of little-endian float32 (what GET /identify takes); a string is taken
    as already encoded (``EmbeddedFace.embedding_b64``)."""
    if isinstance(embedding, str):
        return embedding
    values = embedding.tolist() if hasattr(embedding, "tolist") else list(embedding)
    packed = struct.pack(f"<{len(values)}f", *(float(v) for v in values))
    return base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


class calls:
    """The API's operations as ``Call``s; the clients' methods take the same arguments."""

    @staticmethod
    def enroll(
        photos: Photo | Sequence[Photo],
        subject_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        on_multiple: str = "primary",
        on_duplicate: str = "warn",
        force: bool = False,
        face_crop: bool = False,
        replace_metadata: bool = False,
        face: FaceChoice | None = None,
    ) -> Call:
        several = isinstance(photos, list | tuple)
        if face is not None and several:
            raise ValueError("face chooses a face of one photo: give one photo")
        form = _form(subject_id=subject_id, metadata=metadata, on_multiple=on_multiple,
                     on_duplicate=on_duplicate, force=force, face_crop=face_crop,
                     replace_metadata=replace_metadata or None, face=face_choice(face))
        if several:
            if not photos:
                raise ValueError("give at least one photo")
            files = [("images", photo_file(p, f"photo{i}")) for i, p in enumerate(photos)]
            return Call("POST", f"{API}/enroll", m.EnrollBatchResponse, data=form, files=files)
        return Call("POST", f"{API}/enroll", m.EnrollResponse, data=form,
                    files=[("image", photo_file(photos))])

    @staticmethod
    def verify(
        photo: Photo,
        other: Photo | None = None,
        *,
        subject_id: str | None = None,
        threshold: float | None = None,
        face_crop: bool = False,
        on_multiple: str = "primary",
    ) -> Call:
        if (other is None) == (subject_id is None):
            raise ValueError("give a second photo or a subject_id, not both")
        form = _form(subject_id=subject_id, threshold=threshold, face_crop=face_crop,
                     on_multiple=None if on_multiple == "primary" else on_multiple)
        if other is not None:
            files = [("image_a", photo_file(photo, "a")), ("image_b", photo_file(other, "b"))]
        else:
            files = [("image", photo_file(photo))]
        return Call("POST", f"{API}/verify", m.VerifyResponse, data=form, files=files)

    @staticmethod
    def identify(
        photo: Photo | None = None,
        *,
        face_id: str | None = None,
        embedding: str | Sequence[float] | Any | None = None,
        k: int = 5,
        threshold: float | None = None,
        identify_fpir: float | None = None,
        max_faces: int | None = None,
        face_crop: bool = False,
        include_metadata: bool = False,
        return_embedding: bool = False,
    ) -> Call:
        given = sum(x is not None for x in (photo, face_id, embedding))
        if given != 1:
            raise ValueError("give exactly one of a photo, face_id or embedding")
        if photo is not None:
            form = _form(k=k, threshold=threshold, identify_fpir=identify_fpir,
                         max_faces=max_faces, face_crop=face_crop,
                         include_metadata=include_metadata or None,
                         return_embedding=return_embedding or None)
            return Call("POST", f"{API}/identify", m.IdentifyImageResponse, data=form,
                        files=[("image", photo_file(photo))])
        params = {"face_id": face_id, "k": k, "threshold": threshold,
                  "identify_fpir": identify_fpir,
                  "embedding": None if embedding is None else encode_embedding(embedding),
                  "include_metadata": "true" if include_metadata else None}
        return Call("GET", f"{API}/identify", m.IdentifyResponse, params=params)

    @staticmethod
    def embed(photo: Photo, *, max_faces: int | None = None, face_crop: bool = False) -> Call:
        return Call("POST", f"{API}/embed", m.EmbedResponse,
                    data=_form(max_faces=max_faces, face_crop=face_crop),
                    files=[("image", photo_file(photo))])

    @staticmethod
    def subject_page(cursor: str | None = None, limit: int = 100) -> Call:
        return Call("GET", f"{API}/subjects", m.SubjectList,
                    params={"cursor": cursor, "limit": limit})

    @staticmethod
    def subject(subject_id: str) -> Call:
        return Call("GET", f"{API}/subjects/{_segment(subject_id)}", m.SubjectDetail)

    @staticmethod
    def delete_subject(subject_id: str) -> Call:
        return Call("DELETE", f"{API}/subjects/{_segment(subject_id)}", m.DeleteSubjectResponse)

    @staticmethod
    def subject_faces_page(subject_id: str, cursor: str | None = None, limit: int = 100) -> Call:
        return Call("GET", f"{API}/subjects/{_segment(subject_id)}/faces", m.FaceList,
                    params={"cursor": cursor, "limit": limit})

    @staticmethod
    def update_subject(
        subject_id: str, *, new_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Call:
        if new_id is None and metadata is None:
            raise ValueError("give new_id, metadata, or both")
        body: dict[str, Any] = {}
        if new_id is not None:
            body["subject_id"] = new_id
        if metadata is not None:
            body["metadata"] = metadata
        return Call("PATCH", f"{API}/subjects/{_segment(subject_id)}", m.UpdateSubjectResponse,
                    json=body)

    @staticmethod
    def merge_subject(subject_id: str, into: str) -> Call:
        return Call("POST", f"{API}/subjects/{_segment(subject_id)}/merge", m.MergeSubjectResponse,
                    json={"into": into})

    @staticmethod
    def face(face_id: str) -> Call:
        return Call("GET", f"{API}/faces/{_segment(face_id)}", m.FaceInfo)

    @staticmethod
    def delete_face(face_id: str) -> Call:
        return Call("DELETE", f"{API}/faces/{_segment(face_id)}", m.DeleteFaceResponse)

    @staticmethod
    def move_face(face_id: str, subject_id: str) -> Call:
        return Call("POST", f"{API}/faces/{_segment(face_id)}/move", m.MoveFaceResponse,
                    json={"subject_id": subject_id})

    @staticmethod
    def add_negative(
        subject_id: str, *, face_id: str | None = None, unknown_face_id: str | None = None,
        embedding: str | Sequence[float] | Any | None = None,
    ) -> Call:
        if sum(x is not None for x in (face_id, unknown_face_id, embedding)) != 1:
            raise ValueError("give exactly one of face_id, unknown_face_id or embedding")
        body = {"subject_id": subject_id, "face_id": face_id, "unknown_face_id": unknown_face_id,
                "embedding": None if embedding is None else encode_embedding(embedding)}
        return Call("POST", f"{API}/negatives", m.NegativeInfo,
                    json={k: v for k, v in body.items() if v is not None})

    @staticmethod
    def negatives(subject_id: str) -> Call:
        return Call("GET", f"{API}/negatives", m.NegativeList, params={"subject_id": subject_id})

    @staticmethod
    def delete_negative(negative_id: str) -> Call:
        return Call("DELETE", f"{API}/negatives/{_segment(negative_id)}", m.DeleteNegativeResponse)

    @staticmethod
    def clusters(*, chips: bool = False, chips_per_cluster: int = 3) -> Call:
        params = {"include": "chips", "chips_per_cluster": chips_per_cluster} if chips else None
        return Call("GET", f"{API}/clusters", m.ClusterList, params=params)

    @staticmethod
    def run_clustering(mode: str = "incremental", threshold: float | None = None) -> Call:
        body: dict[str, Any] = {"mode": mode}
        if threshold is not None:
            body["threshold"] = threshold
        return Call("POST", f"{API}/clusters", m.ClusterList, json=body)

    @staticmethod
    def name_cluster(cluster_id: str, subject_id: str) -> Call:
        return Call("POST", f"{API}/clusters/{_segment(cluster_id)}/name", m.NameClusterResponse,
                    json={"subject_id": subject_id})

    @staticmethod
    def delete_cluster(cluster_id: str) -> Call:
        return Call("DELETE", f"{API}/clusters/{_segment(cluster_id)}", m.DeleteClusterResponse)

    @staticmethod
    def keys(gallery: str | None = None) -> Call:
        return Call("GET", f"{API}/keys", m.KeyList, params={"gallery": gallery})

    @staticmethod
    def create_key(name: str, scopes: Sequence[str], gallery: str | None = None) -> Call:
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if gallery is not None:
            body["gallery"] = gallery
        return Call("POST", f"{API}/keys", m.CreatedKey, json=body)

    @staticmethod
    def galleries() -> Call:
        return Call("GET", f"{API}/galleries", m.GalleryList)

    @staticmethod
    def create_gallery(name: str) -> Call:
        return Call("POST", f"{API}/galleries", m.GalleryInfo, json={"name": name})

    @staticmethod
    def delete_gallery(name: str, force: bool = False) -> Call:
        return Call("DELETE", f"{API}/galleries/{_segment(name)}", m.DeleteGalleryResponse,
                    params={"force": "true" if force else None})

    @staticmethod
    def revoke_key(key_id: str) -> Call:
        return Call("DELETE", f"{API}/keys/{_segment(key_id)}", m.KeyInfo)

    @staticmethod
    def audit_page(
        after: int = 0, limit: int = 100, action: str | None = None, cursor: str | None = None
    ) -> Call:
        """A page of the audit log: the first one after event id ``after``, or the one a
        previous page's ``next_cursor`` points to."""
        params = {"limit": limit, "action": action}
        if cursor is not None:
            params["cursor"] = cursor
        elif after:
            params["after"] = after
        return Call("GET", f"{API}/audit", m.AuditList, params=params)

    @staticmethod
    def health() -> Call:
        return Call("GET", f"{API}/healthz", m.HealthResponse)

    @staticmethod
    def ready() -> Call:
        return Call("GET", f"{API}/readyz", m.ReadyResponse)
