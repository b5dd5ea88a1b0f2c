"""GET /audit: the audit log of the admin key's gallery (who enrolled or erased what, when)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.api.deps import ServicesDep
from service.api.errors import error_responses
from service.api.routes.common import run_in_threadpool
from service.api.schemas import AuditEvent, AuditList
from service.security.auth import AdminKey

router = APIRouter(tags=["security"])


@router.get(
    "/audit",
    response_model=AuditList,
    summary="The audit log",
    description=(
        "Enrollments, erasures and key changes of the key's gallery, oldest first, `limit` per "
        "page; pass `next_after` back as `after`. Events name the key (who), the action and "
        "ids (what) and the time (when); never images, embeddings or metadata. `enroll` "
        "creates a subject, `add_face` adds a face to one that existed before (with the "
        "metadata's key names when it was replaced). A gallery other than the default numbers "
        "its events in its own sequence. Needs scope `admin`."
    ),
    responses=error_responses(401, 403, 408, 422, 429, 503),
)
async def audit_log(
    principal: AdminKey,
    services: ServicesDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="Events after this id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 100,
    action: Annotated[
        Literal[
            "enroll", "add_face", "delete_subject", "delete_face", "create_key", "revoke_key",
            "name_cluster", "delete_cluster", "update_subject", "rename_subject",
            "merge_subject", "move_face", "add_negative", "delete_negative",
        ] | None,
        Query(description="Only this kind of event."),
    ] = None,
) -> AuditList:
    if services.audit is None:
        return AuditList(events=[], next_after=None)
    records = await run_in_threadpool(
        services.audit.events, principal.gallery, after, limit, action
    )
    events = [
        AuditEvent(
            id=r.id, at=r.at, key_id=r.key_id, key_name=r.key_name, action=r.action,  # type: ignore[arg-type]
            subject_id=r.subject_id, face_id=r.face_id, detail=r.detail,
        )
        for r in records
    ]
    return AuditList(events=events, next_after=events[-1].id if len(events) == limit else None)
