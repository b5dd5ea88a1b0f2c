"""GET/POST /keys, DELETE /keys/{key_id}: API keys of the admin key's gallery.

The same operations as ``faceserve keys`` on the command line, limited to the caller's gallery:
an admin of one gallery can neither see nor create nor revoke another gallery's keys.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import ServicesDep
from service.api.errors import NotReady, ServiceError, error_responses
from service.api.routes.common import audit_event, run_in_threadpool
from service.api.schemas import CreatedKey, CreateKeyRequest, KeyInfo, KeyList
from service.gallery.store.base import KeyRecord
from service.security.auth import AdminKey
from service.security.keys import KeyRing

router = APIRouter(prefix="/keys", tags=["security"])


class KeyNotFound(ServiceError):
    status, code = 404, "key_not_found"


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


@router.get(
    "",
    response_model=KeyList,
    summary="List API keys",
    description="Keys of the caller's gallery (never their tokens). Needs scope `admin`.",
    responses=error_responses(401, 403, 408, 429, 503),
)
async def list_keys(principal: AdminKey, services: ServicesDep) -> KeyList:
    records = await run_in_threadpool(_ring(services).list, principal.gallery)
    return KeyList(keys=[key_info(r) for r in records])


@router.post(
    "",
    response_model=CreatedKey,
    status_code=201,
    summary="Create an API key",
    description=(
        "A new key of the caller's gallery. The response holds the token: it is shown once "
        "and only its hash is stored. Needs scope `admin`."
    ),
    responses=error_responses(400, 401, 403, 408, 422, 429, 503),
)
async def create_key(
    body: CreateKeyRequest, principal: AdminKey, services: ServicesDep
) -> CreatedKey:
    record, token = await run_in_threadpool(
        _ring(services).create, body.name, list(body.scopes), principal.gallery
    )
    await audit_event(services, principal, "create_key",
                      detail={"key_id": record.key_id, "name": record.name,
                              "scopes": list(record.scopes)})
    return CreatedKey(**key_info(record).model_dump(), token=token)


@router.delete(
    "/{key_id}",
    response_model=KeyInfo,
    summary="Revoke an API key",
    description="Revoked at once and for good (keys are never deleted). Needs scope `admin`.",
    responses=error_responses(401, 403, 404, 408, 422, 429, 503),
)
async def revoke_key(
    principal: AdminKey,
    services: ServicesDep,
    key_id: Annotated[str, Path(min_length=1, max_length=64,
                                description="The key's public id (`key_id`).")],
) -> KeyInfo:
    record = await run_in_threadpool(_ring(services).revoke, key_id, principal.gallery)
    if record is None:
        raise KeyNotFound(f"key {key_id!r} does not exist")
    await audit_event(services, principal, "revoke_key",
                      detail={"key_id": record.key_id, "name": record.name})
    return key_info(record)
