"""GET /audit: the audit log of the key's gallery (who enrolled or erased what, when)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.api.cursors import CursorQuery, decode_cursor, encode_cursor, invalid_cursor
from service.api.deps import ServicesDep
from service.api.errors import Forbidden, InvalidField, error_responses
from service.api.routes.common import run_in_threadpool
from service.api.schemas import AuditEvent, AuditList
from service.security.auth import AuditKey
from service.security.keys import GALLERY_PATTERN

router = APIRouter(tags=["security"])


@router.get(
    "/audit",
    response_model=AuditList,
    summary="The audit log",
    description=(
        "Enrollments, erasures and key changes of the key's gallery, oldest first, `limit` per "
        "page; pass `next_cursor` back as `cursor` (the older `after`/`next_after` pair "
        "still works, deprecated). Events name the key (who), the action and "
        "ids (what) and the time (when); never images, embeddings or metadata. `enroll` "
        "creates a subject, `add_face` adds a face to one that existed before (with the "
        "metadata's key names when it was replaced). A gallery other than the default numbers "
        "its events in its own sequence. Needs scope `audit`; an audit key of the default "
        "gallery may read another gallery's log with `gallery`."
    ),
    responses=error_responses(401, 403, 408, 422, 429, 503),
)
async def audit_log(
    principal: AuditKey,
    services: ServicesDep,
    cursor: CursorQuery = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=2**62, deprecated=True,
              description="Deprecated (use `cursor`): events after this event id."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 100,
    action: Annotated[
        Literal[
            "enroll", "add_face", "delete_subject", "delete_face", "create_key", "revoke_key",
            "name_cluster", "delete_cluster", "update_subject", "rename_subject",
            "merge_subject", "create_gallery", "delete_gallery",
            "move_face", "add_negative", "delete_negative",
        ] | None,
        Query(description="Only this kind of event."),
    ] = None,
    gallery: Annotated[str | None, Query(
        pattern=GALLERY_PATTERN,
        description="Read this gallery's log instead (audit keys of the default gallery "
        "only): how the operator sees a tenant's history, or the erasures of a deleted one.",
    )] = None,
) -> AuditList:
    log = principal.gallery
    if gallery is not None and gallery != principal.gallery:
        if principal.gallery:
            raise Forbidden(
                f"key {principal.name!r} is bound to gallery {principal.gallery!r}: only an "
                "audit key of the default gallery reads other galleries' logs")
        log = gallery
    if cursor is not None and after is not None:
        raise InvalidField("give `cursor` or the deprecated `after`, not both")
    start = after or 0
    if cursor is not None:
        start = decode_cursor("audit", log, cursor, int)
        if start < 0:
            raise invalid_cursor()
    if services.audit is None:
        return AuditList(events=[], next_cursor=None, next_after=None)
    records = await run_in_threadpool(
        services.audit.events, log, start, limit, action
    )
    events = [
        AuditEvent(
            id=r.id, at=r.at, key_id=r.key_id, key_name=r.key_name, action=r.action,  # type: ignore[arg-type]
            subject_id=r.subject_id, face_id=r.face_id, detail=r.detail,
        )
        for r in records
    ]
    last = events[-1].id if len(events) == limit else None
    return AuditList(
        events=events,
        next_cursor=None if last is None else encode_cursor("audit", log, last),
        next_after=last,
    )
