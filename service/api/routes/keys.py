"""GET/POST /keys, DELETE /keys/{key_id}: API keys of the admin key's gallery.

The same operations as ``faceserve keys`` on the command line. An admin of a named gallery
sees, creates and revokes only its own gallery's keys. An admin of the default gallery (the
operator's, which also manages the galleries: ``routes/galleries.py``) may name another
gallery (``gallery`` in the body or query) and revoke any key by id: without that, a gallery
created over HTTP could never get its first key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.api.deps import ServicesDep
from service.api.errors import Forbidden, NotReady, ServiceError, error_responses
from service.api.routes.common import run_in_threadpool
from service.api.schemas import CreatedKey, CreateKeyRequest, KeyInfo, KeyList
from service.gallery.store.base import KeyRecord
from service.security.auth import AdminKey, Principal
from service.security.keys import GALLERY_PATTERN, KeyRing

router = APIRouter(prefix="/keys", tags=["security"])


class KeyNotFound(ServiceError):
    status, code = 404, "key_not_found"


class GalleryNotFound(ServiceError):
    status, code = 404, "gallery_not_found"


def key_info(record: KeyRecord) -> KeyInfo:
    return KeyInfo(
        key_id=record.key_id, name=record.name, scopes=list(record.scopes),  # type: ignore[arg-type]
        gallery=record.gallery or None, created_at=record.created_at,
        revoked_at=record.revoked_at,
    )


def _ring(services: ServicesDep) -> KeyRing:
    if services.keys is None:
        raise NotReady("this server has no key store")
    return services.keys


def _target(principal: Principal, gallery: str | None) -> str:
    """The gallery an operation acts on: the caller's, or one an operator's admin names."""
    if gallery is None or gallery == principal.gallery:
        return principal.gallery
    if principal.gallery:
        raise Forbidden(
            f"key {principal.name!r} is bound to gallery {principal.gallery!r}: only an admin "
            "key of the default gallery manages other galleries' keys"
        )
    return gallery


@router.get(
    "",
    response_model=KeyList,
    summary="List API keys",
    description="Keys of the caller's gallery, or (for an admin of the default gallery) of "
    "`gallery`; never their tokens. Needs scope `admin`.",
    responses=error_responses(401, 403, 408, 422, 429, 503),
)
async def list_keys(
    principal: AdminKey,
    services: ServicesDep,
    gallery: Annotated[str | None, Query(
        pattern=GALLERY_PATTERN,
        description="List this gallery's keys (admin keys of the default gallery only).",
    )] = None,
) -> KeyList:
    records = await run_in_threadpool(_ring(services).list, _target(principal, gallery))
    return KeyList(keys=[key_info(r) for r in records])


def _create(ring: KeyRing, body: CreateKeyRequest, gallery: str) -> tuple[KeyRecord, str]:
    if gallery and body.gallery is not None and gallery not in ring.store.list_galleries():
        raise GalleryNotFound(f"gallery {gallery!r} does not exist; create it first "
                              "(POST /galleries)")
    return ring.create(body.name, list(body.scopes), gallery)


@router.post(
    "",
    response_model=CreatedKey,
    status_code=201,
    summary="Create an API key",
    description=(
        "A new key of the caller's gallery, or (for an admin of the default gallery) of the "
        "existing `gallery`. The response holds the token: it is shown once and only its hash "
        "is stored. Needs scope `admin`."
    ),
    responses=error_responses(400, 401, 403, 404, 408, 422, 429, 503),
)
async def create_key(
    body: CreateKeyRequest, principal: AdminKey, services: ServicesDep
) -> CreatedKey:
    gallery = _target(principal, body.gallery)
    record, token = await run_in_threadpool(_create, _ring(services), body, gallery)
    await run_in_threadpool(
        _record, services, principal, "create_key", record.gallery,
        {"key_id": record.key_id, "name": record.name, "scopes": list(record.scopes)})
    return CreatedKey(**key_info(record).model_dump(), token=token)


def _record(services: ServicesDep, principal: Principal, action: str, gallery: str,
            detail: dict[str, object]) -> None:
    """Audit a key change in the key's gallery, where its tenant's admins read it."""
    if services.audit is not None:
        services.audit.record(principal, action, gallery=gallery, detail=detail)


@router.delete(
    "/{key_id}",
    response_model=KeyInfo,
    summary="Revoke an API key",
    description="Revoked at once and for good (keys are never deleted). Needs scope `admin`; "
    "an admin bound to a gallery revokes only that gallery's keys, an admin of the default "
    "gallery any key.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def revoke_key(
    principal: AdminKey,
    services: ServicesDep,
    key_id: Annotated[str, Path(min_length=1, max_length=64,
                                description="The key's public id (`key_id`).")],
) -> KeyInfo:
    scope = principal.gallery or None  # None: any gallery (the operator's admin)
    record = await run_in_threadpool(_ring(services).revoke, key_id, scope)
    if record is None:
        raise KeyNotFound(f"key {key_id!r} does not exist")
    await run_in_threadpool(_record, services, principal, "revoke_key", record.gallery,
                            {"key_id": record.key_id, "name": record.name})
    return key_info(record)
