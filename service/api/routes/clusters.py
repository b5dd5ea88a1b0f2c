"""The unknown-face pool and its clusters: POST/GET /clusters, name or discard a cluster.

Faces reach the pool through POST /identify with ``remember_unknown`` (when the server allows
it). Clustering is ``models.clustering`` (average linkage at its measured threshold; faces of
one photo never share a cluster). Cluster ids are stable: a recluster gives a group the id most
of its faces had. In the store, a face's ``cluster_id`` is None until it has been clustered
and ``""`` when it was clustered and is alone.

Scopes (README: API keys and scopes): looking at the pool (the listing, a face's chip) is
``read``; organising it (clustering, merging, splitting) and naming a cluster, which enrolls
its faces, is ``enroll``, the role that builds the gallery (naming into a subject that exists
also needs ``add_faces_scope``, as POST /enroll does); discarding a cluster erases biometric
data: ``erase``.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Path, Query, Response

from models.clustering import CLUSTER_THRESHOLD, Clustering
from service.api.deps import GalleryDep, ServicesDep, SettingsDep
from service.api.errors import (
    Forbidden,
    InvalidField,
    ModelMismatch,
    ServiceError,
    error_responses,
)
from service.api.identifiers import check_new_subject_id
from service.api.routes.common import audit_event, run_in_threadpool, to_bbox
from service.api.schemas import (
    ClusterChip,
    ClusterFace,
    ClusterInfo,
    ClusterList,
    ClusterRequest,
    DeleteClusterResponse,
    ErrorResponse,
    MergeClusterRequest,
    NameClusterRequest,
    NameClusterResponse,
    SplitClusterRequest,
)
from service.config import Settings
from service.gallery.gallery import Gallery
from service.gallery.store.unknown import UnknownFace
from service.security.auth import EnrollKey, EraseKey, Principal, ReadKey

router = APIRouter(prefix="/clusters", tags=["clusters"])

ALONE = ""  # cluster_id of a face clustered and found alone
ClusterPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$",
                                   description="A cluster id (from GET /clusters).")]


class ClusterNotFound(ServiceError):
    status, code = 404, "cluster_not_found"


class ClusteringRunning(ServiceError):
    status, code = 409, "clustering_running"


MAX_CHIPS_PER_CLUSTER = 8
MAX_CHIPS = 200  # per response: 150x150 JPEG chips are a few kB each, so at most ~1-2 MB


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expire(gallery: Gallery, settings: Settings) -> int:
    """Erase pool faces older than the retention limit (every gallery's)."""
    before = datetime.now(UTC) - timedelta(days=settings.unknown_ttl_days)
    return gallery.store.expire_unknown(  # type: ignore[attr-defined, no-any-return]
        before.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def remember(gallery: Gallery, faces: list[UnknownFace]) -> None:
    gallery.store.add_unknown(faces)  # type: ignore[attr-defined]


def _listing(
    faces: list[UnknownFace], threshold: float | None,
    chips: tuple[Gallery, str, int] | None = None,
) -> ClusterList:
    """The listing; ``chips`` (gallery, pool, per cluster): with that many representative
    chips inline per cluster, largest clusters first, until ``MAX_CHIPS`` are given."""
    groups: dict[str, list[UnknownFace]] = {}
    for f in faces:
        if f.cluster_id:
            groups.setdefault(f.cluster_id, []).append(f)
    clusters = []
    budget = MAX_CHIPS
    for cid, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        v = np.stack([np.asarray(m.embedding) for m in members])
        order = np.argsort(-(v @ v.sum(axis=0)), kind="stable")  # most representative first
        rep = members[int(order[0])]
        inline = None
        if chips is not None and budget > 0:
            gallery, pool, per_cluster = chips
            inline = []
            for i in order.tolist():
                if len(inline) >= min(per_cluster, budget):
                    break
                jpeg = gallery.store.unknown_chip(pool, members[i].face_id)  # type: ignore[attr-defined]
                if jpeg is not None:
                    inline.append(ClusterChip(face_id=members[i].face_id,
                                              jpeg_b64=base64.b64encode(jpeg).decode("ascii")))
            budget -= len(inline)
        clusters.append(ClusterInfo(
            cluster_id=cid, size=len(members), representative_face_id=rep.face_id,
            faces=[ClusterFace(face_id=m.face_id, source=m.source, bbox=to_bbox(m.bbox),
                               created_at=m.created_at) for m in members],
            chips=inline))
    return ClusterList(
        clusters=clusters,
        unclustered=sum(1 for f in faces if f.cluster_id == ALONE),
        pending=sum(1 for f in faces if f.cluster_id is None),
        threshold=threshold,
    )


def recluster(faces: list[UnknownFace], mode: str, threshold: float) -> dict[str, str]:
    """New cluster id of every face (ALONE for faces alone).

    Faces a user placed (``pinned``: merged, split out) keep their cluster in both modes;
    a pinned face alone stays alone and out of the clustering.
    """
    faces = [f for f in faces if not (f.pinned and f.cluster_id == ALONE)]
    if not faces:
        return {}
    if mode == "incremental":
        done = [f for f in faces if f.cluster_id is not None]
        new = [f for f in faces if f.cluster_id is None]
    else:
        done = [f for f in faces if f.pinned]
        new = [f for f in faces if not f.pinned]
    model = Clustering(threshold=threshold)
    if done:
        ids = sorted({f.cluster_id for f in done if f.cluster_id})
        index = {cid: i for i, cid in enumerate(ids)}
        model.vectors = np.stack([np.asarray(f.embedding, np.float32) for f in done])
        model.photos = [f.photo for f in done]
        model.labels = np.array([index[f.cluster_id] if f.cluster_id else -1 for f in done])
    ordered = done + new
    if new:
        vectors = np.stack([np.asarray(f.embedding, np.float32) for f in new])
        labels = model.add(vectors, [f.photo for f in new])
    else:
        labels = model.labels
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in sorted(set(labels.tolist()) - {-1}):
        members = [ordered[i] for i in np.flatnonzero(labels == label)]
        old = Counter(m.cluster_id for m in members if m.cluster_id and m.cluster_id not in used)
        cid = old.most_common(1)[0][0] if old else uuid.uuid4().hex[:16]
        used.add(cid)
        out.update({m.face_id: cid for m in members})
    out.update({ordered[i].face_id: ALONE for i in np.flatnonzero(labels == -1)})
    return out


@router.post(
    "",
    response_model=ClusterList,
    summary="Cluster the unknown-face pool",
    description=(
        "Groups the faces of the key's unknown-face pool into people (average linkage; two "
        "faces of one photo never in one group). `incremental` (default) places the faces "
        "new since the last run without moving the others; `full` reclusters everything. "
        "Faces past the retention limit are erased first. One run at a time per gallery, "
        "across replicas: a POST while another runs is refused with 409 `clustering_running` "
        "(try again when it has finished; its result is then in GET /clusters). Needs scope "
        "`enroll`."
    ),
    responses={**error_responses(400, 401, 403, 408, 409, 422, 429, 503), 409: {
        "model": ErrorResponse, "description": "`clustering_running`: another "
        "POST /clusters of this gallery is running (any replica); retry when it is done."}},
)
async def run_clustering(
    principal: EnrollKey, gallery: GalleryDep, settings: SettingsDep,
    body: Annotated[ClusterRequest | None, Body()] = None,
) -> ClusterList:
    request = body or ClusterRequest()
    threshold = request.threshold if request.threshold is not None else CLUSTER_THRESHOLD
    pool = principal.namespace.gallery

    def run() -> ClusterList:
        with gallery.store.clustering_lock(pool) as taken:  # type: ignore[attr-defined]
            if not taken:
                raise ClusteringRunning("the pool of this gallery is being clustered by "
                                        "another request; try again when it has finished")
            expire(gallery, settings)
            faces = gallery.store.unknown_faces(pool)  # type: ignore[attr-defined]
            assignment = recluster(faces, request.mode, threshold)
            changed = {f.face_id: assignment[f.face_id] for f in faces
                       if assignment.get(f.face_id, f.cluster_id) != f.cluster_id}
            gallery.store.set_unknown_clusters(pool, changed)  # type: ignore[attr-defined]
            faces = [replace(f, cluster_id=assignment.get(f.face_id, f.cluster_id))
                     for f in faces]
            return _listing(faces, threshold)

    return await run_in_threadpool(run)


@router.get(
    "",
    response_model=ClusterList,
    summary="The clusters of the unknown-face pool",
    description="Groups as the last POST /clusters left them, largest first, with their "
    "faces and a representative face. With `include=chips`, each cluster also carries the "
    "JPEG chips of its most representative faces inline (base64, at most `chips_per_cluster` "
    f"each and {MAX_CHIPS} in all, largest clusters first), so a page of groups needs one "
    "request. Needs scope `read`.",
    responses=error_responses(401, 403, 408, 422, 429, 503),
)
async def list_clusters(
    principal: ReadKey, gallery: GalleryDep, settings: SettingsDep,
    include: Annotated[Literal["chips"] | None, Query(
        description="`chips`: the representative faces' chips inline (`chips` of each "
        "cluster).")] = None,
    chips_per_cluster: Annotated[int, Query(
        ge=1, le=MAX_CHIPS_PER_CLUSTER,
        description="With `include=chips`: chips per cluster, most representative first.")] = 3,
) -> ClusterList:
    pool = principal.namespace.gallery

    def read() -> ClusterList:
        expire(gallery, settings)
        faces = gallery.store.unknown_faces(pool)  # type: ignore[attr-defined]
        return _listing(faces, None, (gallery, pool, chips_per_cluster)
                        if include == "chips" else None)

    return await run_in_threadpool(read)


@router.get(
    "/faces/{face_id}/chip",
    response_class=Response,
    summary="The aligned face chip of a pool face (JPEG)",
    description="Needs scope `read`.",
    responses={200: {"content": {"image/jpeg": {}}, "description": "The chip, JPEG."},
               **error_responses(401, 403, 404, 422, 429)},
)
async def pool_chip(
    principal: ReadKey, gallery: GalleryDep,
    face_id: Annotated[str, Path(min_length=1, max_length=64,
                                 description="A face of the unknown-face pool.")],
) -> Response:
    chip = await run_in_threadpool(
        gallery.store.unknown_chip,  # type: ignore[attr-defined]
        principal.namespace.gallery, face_id)
    if chip is None:
        raise ClusterNotFound(f"no chip for pool face {face_id!r}", code="face_not_found")
    return Response(chip, media_type="image/jpeg")


def _members(gallery: Gallery, principal: Principal, cluster_id: str) -> list[UnknownFace]:
    faces = gallery.store.unknown_faces(  # type: ignore[attr-defined]
        principal.namespace.gallery, cluster_id=cluster_id)
    if not faces:
        raise ClusterNotFound(f"cluster {cluster_id!r} does not exist")
    return list(faces)


@router.post(
    "/{cluster_id}/name",
    response_model=NameClusterResponse,
    summary="Name a cluster: enroll its faces as a subject",
    description=(
        "Enrolls every face of the cluster as a template of `subject_id` (created, or added "
        "to an existing subject), then removes them from the pool. Needs scope `enroll` "
        "(and, for a subject that exists, the server's `add_faces_scope`, as POST /enroll)."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 409, 422, 429, 503),
)
async def name_cluster(
    principal: EnrollKey, services: ServicesDep, settings: SettingsDep, gallery: GalleryDep,
    cluster_id: ClusterPath, body: NameClusterRequest,
) -> NameClusterResponse:
    pool = principal.namespace.gallery

    def enroll() -> list[str]:
        faces = _members(gallery, principal, cluster_id)
        others = {f.model for f in faces} - {gallery.model_version}
        if others:  # remembered before a `faceserve reembed`: not comparable any more
            raise ModelMismatch(
                f"cluster {cluster_id!r} holds embeddings of {sorted(others)}, the gallery "
                f"is {gallery.model_version}; discard it")
        stored = principal.namespace.internal(body.subject_id)
        if gallery.get_subject(stored) is None:
            try:
                check_new_subject_id(body.subject_id)  # no "/" in a new id (issue 20)
            except ValueError as exc:
                raise InvalidField(str(exc)) from None
        elif settings.add_faces_scope not in principal.scopes:
            raise Forbidden(
                f"subject {body.subject_id!r} already exists; adding faces to an existing "
                f"subject needs a key with scope {settings.add_faces_scope!r} on this server")
        enrolled = []
        for f in faces:
            record, _ = gallery.enroll(
                stored, np.asarray(f.embedding), bbox=f.bbox, landmarks=f.landmarks,
                detection_confidence=f.detection_confidence, image_sha256=f.photo,
                chip_jpeg=gallery.store.unknown_chip(pool, f.face_id),  # type: ignore[attr-defined]
            )
            enrolled.append(record.face_id)
        gallery.store.delete_unknown(pool, [f.face_id for f in faces])  # type: ignore[attr-defined]
        return enrolled

    face_ids = await run_in_threadpool(enroll)
    await audit_event(services, principal, "name_cluster", subject_id=body.subject_id,
                      detail={"cluster_id": cluster_id, "faces": len(face_ids)})
    return NameClusterResponse(cluster_id=cluster_id, subject_id=body.subject_id,
                               face_ids=face_ids)


@router.delete(
    "/{cluster_id}",
    response_model=DeleteClusterResponse,
    summary="Discard a cluster",
    description="Erases the cluster's faces from the pool (and, with SQLite, from the "
    "database files). Needs scope `erase`.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def delete_cluster(
    principal: EraseKey, services: ServicesDep, gallery: GalleryDep, cluster_id: ClusterPath
) -> DeleteClusterResponse:
    def delete() -> int:
        faces = _members(gallery, principal, cluster_id)
        return gallery.store.delete_unknown(  # type: ignore[attr-defined, no-any-return]
            principal.namespace.gallery, [f.face_id for f in faces])

    removed = await run_in_threadpool(delete)
    await audit_event(services, principal, "delete_cluster",
                      detail={"cluster_id": cluster_id, "faces": removed})
    return DeleteClusterResponse(cluster_id=cluster_id, faces_deleted=removed)


class CannotLink(ServiceError):
    status, code = 409, "cannot_link"


@router.post(
    "/{cluster_id}/merge",
    response_model=ClusterList,
    summary="Merge a cluster into another (a correction that sticks)",
    description=(
        "Moves every face of the cluster into `into`. The faces of both are then pinned: "
        "no later POST /clusters, incremental or full, separates them. Refused (409 "
        "`cannot_link`) when the two share a photo: one photo shows different people. Needs "
        "scope `enroll`."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 409, 422, 429, 503),
)
async def merge_clusters(
    principal: EnrollKey, gallery: GalleryDep, cluster_id: ClusterPath, body: MergeClusterRequest,
) -> ClusterList:
    pool = principal.namespace.gallery

    def merge() -> ClusterList:
        a = _members(gallery, principal, cluster_id)
        b = _members(gallery, principal, body.into)
        if cluster_id == body.into:
            raise InvalidField("a cluster cannot be merged into itself")
        if {f.photo for f in a} & {f.photo for f in b}:
            raise CannotLink(f"clusters {cluster_id!r} and {body.into!r} share a photo")
        gallery.store.set_unknown_clusters(  # type: ignore[attr-defined]
            pool, {f.face_id: body.into for f in a + b}, pin=True)
        return _listing(gallery.store.unknown_faces(pool), None)  # type: ignore[attr-defined]

    return await run_in_threadpool(merge)


@router.post(
    "/{cluster_id}/split",
    response_model=ClusterList,
    summary="Split faces out of a cluster (a correction that sticks)",
    description=(
        "The given faces leave the cluster: together as a new cluster when two or more, "
        "else alone. Both parts are pinned: no later POST /clusters puts them back together. "
        "Needs scope `enroll`."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 422, 429, 503),
)
async def split_cluster(
    principal: EnrollKey, gallery: GalleryDep, cluster_id: ClusterPath, body: SplitClusterRequest,
) -> ClusterList:
    pool = principal.namespace.gallery

    def split() -> ClusterList:
        members = _members(gallery, principal, cluster_id)
        ids = {f.face_id for f in members}
        out = set(body.face_ids)
        if not out <= ids or out == ids:
            raise InvalidField("face_ids must be some, not all, of the cluster's faces")
        new_id = uuid.uuid4().hex[:16] if len(out) > 1 else ALONE
        moves = {f: (new_id if f in out else cluster_id) for f in ids}
        gallery.store.set_unknown_clusters(pool, moves, pin=True)  # type: ignore[attr-defined]
        return _listing(gallery.store.unknown_faces(pool), None)  # type: ignore[attr-defined]

    return await run_in_threadpool(split)


def pool_faces_for(
    principal: Principal, found: Any, chips: list[bytes | None], matches: list[Any],
    source: str | None, model: str,
) -> tuple[list[UnknownFace], list[str | None]]:
    """The unmatched faces of one identify request as pool faces, and each face's pool id."""
    faces, ids = [], []
    now = _now()
    for i, (face, match) in enumerate(zip(found.faces, matches, strict=True)):
        if match is not None:
            ids.append(None)
            continue
        face_id = uuid.uuid4().hex
        faces.append(UnknownFace(
            face_id=face_id, gallery=principal.namespace.gallery, photo=found.image_sha256,
            source=source, bbox=face.box.as_tuple(),
            landmarks=np.asarray(face.landmarks, np.float64).reshape(-1, 2).tolist(),
            detection_confidence=float(face.confidence), model=model, created_at=now,
            embedding=np.asarray(found.embeddings[i], np.float32), chip_jpeg=chips[i]))
        ids.append(face_id)
    return faces, ids
