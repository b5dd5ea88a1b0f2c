"""GET/POST /galleries, DELETE /galleries/{name}: the galleries (tenants) of the server.

A gallery is a namespace of subject ids with its own keys, unknown-face pool and audit log
(``service.security.keys``); until now one came to exist only through ``faceserve keys create
--gallery``. These routes list, create and delete them. They act on every tenant, so they need
scope ``admin`` *of the default gallery*: an admin key bound to gallery X manages X's keys
(``/keys``) but no gallery, not even X (403 ``insufficient_scope``).

Deleting a gallery is refused while it holds anything (409 ``gallery_not_empty``) unless
``force=true``, which first revokes the gallery's keys (so nothing is enrolled while it is
emptied, and a key cannot outlive its gallery), then erases every subject exactly as
DELETE /subjects/{id} does (storage, index, files; one ``delete_subject`` event each in the
gallery's own audit log, which is kept), then its pool faces. One ``delete_gallery`` event
goes to the default gallery's log. The default gallery cannot be deleted (it has no name to
address).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from service.api.deps import GalleryDep, ServicesDep
from service.api.errors import Forbidden, ServiceError, error_responses
from service.api.routes.common import audit_event, run_in_threadpool
from service.api.schemas import (
    CreateGalleryRequest,
    DeleteGalleryResponse,
    GalleryInfo,
    GalleryList,
)
from service.gallery.gallery import Gallery, _encode_cursor
from service.gallery.store.base import SecurityStore
from service.security.auth import AdminKey, Principal
from service.security.keys import GALLERY_PATTERN, Namespace

router = APIRouter(prefix="/galleries", tags=["security"])

_ACME = {"name": "acme", "default": False, "subjects": 40, "faces": 96, "unknown_faces": 0,
         "active_keys": 2, "created_at": "2026-03-01T09:30:00.000Z"}
_LIST_EXAMPLE = {"galleries": [
    {"default": True, "subjects": 1250, "faces": 3710, "unknown_faces": 12, "active_keys": 3},
    _ACME,
]}
_DELETE_EXAMPLE = {"name": "acme", "subjects_deleted": 40, "faces_deleted": 96,
                   "unknown_faces_deleted": 0,
                   "keys_revoked": ["k_3f9a1c2b7d10", "k_8e21aa04c9f3"]}


def _example(status: int, example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {status: {"content": {"application/json": {"example": example}}}}


GalleryPath = Annotated[str, Path(pattern=GALLERY_PATTERN, description="The gallery's name.")]
ERASE_PAGE = 200


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GalleryNotFound(ServiceError):
    status, code = 404, "gallery_not_found"


class GalleryConflict(ServiceError):
    status, code = 409, "gallery_exists"


def _operator_admin(principal: Principal) -> None:
    if principal.gallery:
        raise Forbidden(
            "galleries are managed by an admin key of the default gallery; key "
            f"{principal.name!r} is bound to gallery {principal.gallery!r}"
        )


def _registry(services: ServicesDep, gallery: Gallery) -> SecurityStore:
    return services.keys.store if services.keys is not None else gallery.store  # type: ignore[return-value]


def _info(registry: SecurityStore, name: str, created_at: str | None) -> GalleryInfo:
    counts = registry.gallery_counts(name)
    return GalleryInfo(
        name=name or None, default=not name, subjects=counts.subjects, faces=counts.faces,
        unknown_faces=counts.unknown_faces, active_keys=counts.active_keys,
        created_at=created_at,
    )


@router.get(
    "",
    response_model=GalleryList,
    response_model_exclude_none=True,
    summary="List galleries",
    description=(
        "Every gallery with its subject, face, pool-face and active-key counts: the default "
        "gallery first, then the named ones (created over HTTP, or implied by a key, subjects "
        "or pool faces). Needs scope `admin` of the default gallery."
    ),
    responses={**_example(200, _LIST_EXAMPLE), **error_responses(401, 403, 408, 429, 503)},
)
async def list_galleries(
    principal: AdminKey, services: ServicesDep, gallery: GalleryDep
) -> GalleryList:
    _operator_admin(principal)
    registry = _registry(services, gallery)

    def read() -> GalleryList:
        named = registry.list_galleries()
        return GalleryList(galleries=[_info(registry, "", None)] + [
            _info(registry, name, at) for name, at in named.items()])

    return await run_in_threadpool(read)


@router.post(
    "",
    response_model=GalleryInfo,
    response_model_exclude_none=True,
    status_code=201,
    summary="Create a gallery",
    description=(
        "A new, empty gallery. Give it keys with POST /keys and `gallery` (or `faceserve keys "
        "create --gallery`). 409 `gallery_exists` when a gallery of that name exists. Needs "
        "scope `admin` of the default gallery."
    ),
    responses={**_example(201, {**_ACME, "subjects": 0, "faces": 0, "active_keys": 0}),
               **error_responses(400, 401, 403, 408, 409, 422, 429, 503)},
)
async def create_gallery(
    body: CreateGalleryRequest, principal: AdminKey, services: ServicesDep, gallery: GalleryDep
) -> GalleryInfo:
    _operator_admin(principal)
    registry = _registry(services, gallery)

    def create() -> GalleryInfo:
        at = _now()
        if body.name in registry.list_galleries() or not registry.add_gallery(body.name, at):
            raise GalleryConflict(f"gallery {body.name!r} exists already")
        return _info(registry, body.name, at)

    info = await run_in_threadpool(create)
    await audit_event(services, principal, "create_gallery", detail={"gallery": body.name})
    return info


def _erase(
    services: ServicesDep, gallery: Gallery, registry: SecurityStore, principal: Principal,
    name: str, force: bool,
) -> DeleteGalleryResponse:
    if name not in registry.list_galleries():
        raise GalleryNotFound(f"gallery {name!r} does not exist")
    counts = registry.gallery_counts(name)
    if (counts.subjects or counts.faces or counts.unknown_faces) and not force:
        raise GalleryConflict(
            f"gallery {name!r} holds {counts.subjects} subjects, {counts.faces} faces and "
            f"{counts.unknown_faces} pool faces; pass force=true to erase them with it",
            code="gallery_not_empty",
        )

    def audit(action: str, **fields: Any) -> None:
        if services.audit is not None:
            services.audit.record(principal, action, gallery=name, **fields)

    # Keys first: no request of the gallery's can add to it while it is emptied.
    revoked = []
    for record in registry.list_keys(name):
        if record.revoked_at is None and registry.revoke_key(record.key_id, _now(), name):
            revoked.append(record.key_id)
            audit("revoke_key", detail={"key_id": record.key_id, "name": record.name,
                                        "reason": "gallery deleted"})
    namespace = Namespace(name)
    subjects = faces = 0
    while True:  # erasing as it goes: every page starts at the gallery's first subject
        records, _ = gallery.list_subjects(_encode_cursor(namespace.list_after), ERASE_PAGE)
        mine = [r for r in records if namespace.owns(r.subject_id)]
        if not mine:
            break
        for record in mine:
            removed = gallery.delete_subject(record.subject_id)
            subjects += 1
            faces += removed
            audit("delete_subject", subject_id=namespace.external(record.subject_id),
                  detail={"faces_deleted": removed, "reason": "gallery deleted"})
    pool = gallery.store.unknown_faces(name, with_embeddings=False)  # type: ignore[attr-defined]
    pool_deleted = gallery.store.delete_unknown(  # type: ignore[attr-defined]
        name, [f.face_id for f in pool]) if pool else 0
    registry.remove_gallery(name)
    return DeleteGalleryResponse(name=name, subjects_deleted=subjects, faces_deleted=faces,
                                 unknown_faces_deleted=pool_deleted, keys_revoked=revoked)


@router.delete(
    "/{name}",
    response_model=DeleteGalleryResponse,
    summary="Delete a gallery",
    description=(
        "Refused while the gallery holds subjects or pool faces (409 `gallery_not_empty`) "
        "unless `force=true`: its keys are then revoked first, every subject is erased as by "
        "DELETE /subjects/{id} (audited in the gallery's own log, which is kept), and its pool "
        "faces too. An empty gallery's keys are revoked as well. The default gallery cannot be "
        "deleted. Needs scope `admin` of the default gallery."
    ),
    responses={**_example(200, _DELETE_EXAMPLE),
               **error_responses(401, 403, 404, 408, 409, 422, 429, 503)},
)
async def delete_gallery(
    principal: AdminKey,
    services: ServicesDep,
    gallery: GalleryDep,
    name: GalleryPath,
    force: Annotated[bool, Query(
        description="Erase the gallery's subjects, faces and pool faces with it.")] = False,
) -> DeleteGalleryResponse:
    _operator_admin(principal)
    registry = _registry(services, gallery)
    result = await run_in_threadpool(_erase, services, gallery, registry, principal, name, force)
    await audit_event(services, principal, "delete_gallery", detail={
        "gallery": name, "subjects_deleted": result.subjects_deleted,
        "faces_deleted": result.faces_deleted,
        "unknown_faces_deleted": result.unknown_faces_deleted,
        "keys_revoked": result.keys_revoked})
    return result
