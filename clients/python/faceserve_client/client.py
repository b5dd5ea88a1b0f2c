"""``Client``: the blocking client. ``AsyncClient`` (``async_client.py``) is its twin.

One ``httpx.Client`` per ``Client`` keeps connections open between calls; ``with Client(...)``
(or ``close()``) closes them. Every method sends one ``Call`` from ``_core`` (the listings send
one per page) and returns the service's response model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

import httpx

from faceserve_client import models as m
from faceserve_client._core import (
    DEFAULT_URL,
    Call,
    FaceChoice,
    RetryPolicy,
    calls,
    headers,
    transport_error,
)
from faceserve_client.errors import APIError, ServiceUnavailableError
from faceserve_client.errors import ConnectionError as ClientConnectionError
from faceserve_client.photos import Photo

__all__ = ["Client"]


class Client:
    """A faceserve server at ``base_url``.

    ``api_key``: sent as ``Authorization: Bearer`` (servers without keys need none).
    ``timeout``: seconds for each request (or an ``httpx.Timeout``); image calls on a busy CPU
    server can take seconds. ``max_retries``, ``backoff``, ``max_backoff``: see
    ``RetryPolicy``. ``http_client``: an ``httpx.Client`` of your own (proxies, TLS, a test
    transport); its ``base_url`` and headers are then yours to set. ``default_headers``: sent
    with every request.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(max_retries, backoff, max_backoff)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers(api_key, default_headers)
        )

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, call: Call) -> Any:
        """Send ``call``, retrying as ``self.retry`` allows; its parsed answer or an error."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
                return call.parse(response)
            except (APIError, httpx.TransportError) as exc:
                wait = self.retry.delay(attempt, exc)
                if wait is None:
                    if isinstance(exc, httpx.TransportError):
                        raise transport_error(exc, self.base_url) from exc
                    raise
            time.sleep(wait)
            attempt += 1

    # ------------------------------------------------------------ recognition

    @overload
    def enroll(
        self, photos: list[Photo] | tuple[Photo, ...], subject_id: str, *,
        metadata: dict[str, Any] | None = ..., on_multiple: str = ..., on_duplicate: str = ...,
        force: bool = ..., face_crop: bool = ..., replace_metadata: bool = ...,
    ) -> m.EnrollBatchResponse: ...

    @overload
    def enroll(
        self, photos: Photo, subject_id: str, *,
        metadata: dict[str, Any] | None = ..., on_multiple: str = ..., on_duplicate: str = ...,
        force: bool = ..., face_crop: bool = ..., replace_metadata: bool = ...,
        face: FaceChoice | None = ...,
    ) -> m.EnrollResponse: ...

    def enroll(
        self,
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
    ) -> m.EnrollResponse | m.EnrollBatchResponse:
        """Enroll one photo (an ``EnrollResponse``) or a list of photos of one subject (an
        ``EnrollBatchResponse`` with each photo's outcome). The same bytes again for the same
        subject return the existing face (``created`` false): safe to repeat. ``metadata`` is
        a new subject's; an existing one keeps its own unless ``replace_metadata``. ``face``
        (one photo): the face to enroll, its index in ``embed``'s list or a box
        ``[left, top, right, bottom]``, instead of the primary face."""
        return self.send(calls.enroll(
            photos, subject_id, metadata=metadata, on_multiple=on_multiple,
            on_duplicate=on_duplicate, force=force, face_crop=face_crop,
            replace_metadata=replace_metadata, face=face,
        ))

    def verify(
        self,
        photo: Photo,
        other: Photo | None = None,
        *,
        subject_id: str | None = None,
        threshold: float | None = None,
        face_crop: bool = False,
        on_multiple: str = "primary",
    ) -> m.VerifyResponse:
        """1:1: ``photo`` against ``other`` (another photo) or against ``subject_id``;
        ``on_multiple``: ``primary``, ``reject`` (nobody else in the frame) or ``any`` (the
        subject anywhere in the photo)."""
        return self.send(calls.verify(photo, other, subject_id=subject_id, threshold=threshold,
                                      face_crop=face_crop, on_multiple=on_multiple))

    @overload
    def identify(
        self, photo: None = None, *, face_id: str | None = ...,
        embedding: str | Sequence[float] | Any | None = ..., k: int = ...,
        threshold: float | None = ..., identify_fpir: float | None = ...,
        include_metadata: bool = ...,
    ) -> m.IdentifyResponse: ...

    @overload
    def identify(
        self, photo: Photo, *, k: int = ..., threshold: float | None = ...,
        identify_fpir: float | None = ..., max_faces: int | None = ..., face_crop: bool = ...,
        include_metadata: bool = ...,
        return_embedding: bool = ...,
    ) -> m.IdentifyImageResponse: ...

    def identify(
        self,
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
    ) -> m.IdentifyImageResponse | m.IdentifyResponse:
        """1:n. A photo: every face of it (``IdentifyImageResponse``). A stored ``face_id`` or
        an ``embedding`` (floats, a numpy vector or ``embedding_b64``): ``IdentifyResponse``.
        ``include_metadata``: each candidate's subject metadata too (the key needs ``read``)."""
        return self.send(calls.identify(
            photo, face_id=face_id, embedding=embedding, k=k, threshold=threshold,
            identify_fpir=identify_fpir, max_faces=max_faces, face_crop=face_crop,
            include_metadata=include_metadata,
            return_embedding=return_embedding,
        ))

    def embed(
        self, photo: Photo, *, max_faces: int | None = None, face_crop: bool = False
    ) -> m.EmbedResponse:
        """Faces and embeddings of a photo; nothing is stored."""
        return self.send(calls.embed(photo, max_faces=max_faces, face_crop=face_crop))

    # ------------------------------------------------------------ gallery

    def subjects(self, *, page_size: int = 100) -> Iterator[m.SubjectSummary]:
        """Every subject of the key's gallery, in id order; pages are fetched as you go."""
        cursor: str | None = None
        while True:
            page: m.SubjectList = self.send(calls.subject_page(cursor, page_size))
            yield from page.subjects
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def subject(self, subject_id: str) -> m.SubjectDetail:
        return self.send(calls.subject(subject_id))

    def delete_subject(self, subject_id: str) -> m.DeleteSubjectResponse:
        """Erase the subject and every template of it."""
        return self.send(calls.delete_subject(subject_id))

    def faces(
        self, subject_id: str | None = None, *, page_size: int = 100
    ) -> Iterator[m.FaceInfo]:
        """The faces of one subject, or of every subject of the gallery (subject by subject)."""
        if subject_id is not None:
            cursor: str | None = None
            while True:
                page: m.FaceList = self.send(
                    calls.subject_faces_page(subject_id, cursor, page_size))
                yield from page.faces
                if page.next_cursor is None:
                    return
                cursor = page.next_cursor
        for summary in self.subjects(page_size=page_size):
            if summary.face_count:
                yield from self.faces(summary.subject_id, page_size=page_size)

    def update_subject(
        self, subject_id: str, *, new_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> m.UpdateSubjectResponse:
        """Rename a subject (``new_id``: its faces move with it, in one transaction) and/or
        replace its metadata. A taken ``new_id`` raises a 409 ``subject_exists``: see
        ``merge_subject``."""
        return self.send(calls.update_subject(subject_id, new_id=new_id, metadata=metadata))

    def rename_subject(self, subject_id: str, new_id: str) -> m.UpdateSubjectResponse:
        return self.update_subject(subject_id, new_id=new_id)

    def merge_subject(self, subject_id: str, into: str) -> m.MergeSubjectResponse:
        """Move every face of ``subject_id`` to ``into`` and remove ``subject_id``."""
        return self.send(calls.merge_subject(subject_id, into))

    def face(self, face_id: str) -> m.FaceInfo:
        return self.send(calls.face(face_id))

    def delete_face(self, face_id: str) -> m.DeleteFaceResponse:
        return self.send(calls.delete_face(face_id))

    # ------------------------------------------------------------ corrections and clusters

    def move_face(self, face_id: str, subject_id: str) -> m.MoveFaceResponse:
        """Give an enrolled face to another subject (created when new): split it out."""
        return self.send(calls.move_face(face_id, subject_id))

    def add_negative(
        self, subject_id: str, *, face_id: str | None = None,
        unknown_face_id: str | None = None, embedding: str | Sequence[float] | Any | None = None,
    ) -> m.NegativeInfo:
        """Mark a face "not this person" for ``subject_id``: exactly one of an enrolled face of
        another subject, a pool/cluster face, or an embedding (``embedding_b64`` of an identify
        result made with ``return_embedding=True``, floats or a numpy vector)."""
        return self.send(calls.add_negative(subject_id, face_id=face_id,
                                         unknown_face_id=unknown_face_id, embedding=embedding))

    def negatives(self, subject_id: str) -> list[m.NegativeInfo]:
        """The subject's negative examples, oldest first."""
        return (self.send(calls.negatives(subject_id))).negatives

    def delete_negative(self, negative_id: str) -> m.DeleteNegativeResponse:
        return self.send(calls.delete_negative(negative_id))

    def clusters(self, *, chips: bool = False, chips_per_cluster: int = 3) -> m.ClusterList:
        """The unknown-face pool's clusters; ``chips``: with representative chips inline."""
        return self.send(calls.clusters(chips=chips, chips_per_cluster=chips_per_cluster))

    def run_clustering(
        self, mode: str = "incremental", threshold: float | None = None
    ) -> m.ClusterList:
        """Cluster the pool (``ConflictError``, code ``clustering_running``, while another
        run of the same gallery is under way)."""
        return self.send(calls.run_clustering(mode, threshold))

    def name_cluster(self, cluster_id: str, subject_id: str) -> m.NameClusterResponse:
        """Enroll the cluster's faces as ``subject_id`` (new or existing)."""
        return self.send(calls.name_cluster(cluster_id, subject_id))

    def delete_cluster(self, cluster_id: str) -> m.DeleteClusterResponse:
        return self.send(calls.delete_cluster(cluster_id))

    # ------------------------------------------------------------ keys and audit

    def keys(self, gallery: str | None = None) -> list[m.KeyInfo]:
        """The API keys of the caller's gallery, or of ``gallery`` (for an admin of the default
        gallery); never their tokens."""
        return self.send(calls.keys(gallery)).keys

    def create_key(
        self, name: str, scopes: Sequence[str], gallery: str | None = None
    ) -> m.CreatedKey:
        """A new key (in ``gallery``, for an admin of the default gallery); its ``token`` is in
        this answer only."""
        return self.send(calls.create_key(name, scopes, gallery))

    def revoke_key(self, key_id: str) -> m.KeyInfo:
        return self.send(calls.revoke_key(key_id))

    def audit(
        self, *, action: str | None = None, after: int = 0, page_size: int = 100
    ) -> Iterator[m.AuditEvent]:
        """The audit log of the key's gallery, oldest first; pages are fetched as you go."""
        cursor: str | None = None
        while True:
            page: m.AuditList = self.send(
                calls.audit_page(after, page_size, action, cursor))
            yield from page.events
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # ------------------------------------------------------------ galleries (admin)

    def galleries(self) -> list[m.GalleryInfo]:
        """Every gallery with its counts, the default one first."""
        return self.send(calls.galleries()).galleries

    def create_gallery(self, name: str) -> m.GalleryInfo:
        return self.send(calls.create_gallery(name))

    def delete_gallery(self, name: str, *, force: bool = False) -> m.DeleteGalleryResponse:
        """Delete a gallery and revoke its keys; ``force`` erases its subjects and pool too."""
        return self.send(calls.delete_gallery(name, force))

    # ------------------------------------------------------------ operations

    def health(self) -> m.HealthResponse:
        return self.send(calls.health())

    def ready(self) -> m.ReadyResponse:
        return self.send(calls.ready())

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> m.ReadyResponse:
        """Poll /readyz until the server has loaded its models and gallery."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ready()
            except (ServiceUnavailableError, ClientConnectionError) as exc:
                if getattr(exc, "code", "") == "startup_failed" or time.monotonic() > deadline:
                    raise
            time.sleep(interval)
