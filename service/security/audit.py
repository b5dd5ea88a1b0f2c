"""The audit log: who (key name and id) did what (enroll, erase, key changes) and when.

Events hold ids and small facts (``created``, ``faces_deleted``, scopes), never an image,
embedding, chip or metadata. They are written in their own transaction right after the change
commits and before the client gets its answer. A crash between the two commits can leave a
change without its event (the store's change log still has it); it cannot leave an event for a
change that did not happen. Subject ids stay in the log after an erasure: they are the
client's own keys, and the log must show that the subject was erased.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from service.gallery.store.base import AuditRecord, NewAuditEvent, SecurityStore

__all__ = ["ACTIONS", "Actor", "AuditLog"]

log = logging.getLogger("faceserve.audit")

# ``enroll`` creates a subject; ``add_face`` adds a face to (and may replace the metadata of) one
# that existed before the request: taking over an existing identity is its own kind of event.
ACTIONS: tuple[str, ...] = (
    "enroll", "add_face", "delete_subject", "delete_face", "create_key", "revoke_key",
    "name_cluster", "delete_cluster",
    # Issue 20: metadata replaced (``update_subject``), a subject and its faces moved to a new
    # id (``rename_subject``, the old id in ``detail``), one merged into another
    # (``merge_subject``, on the receiving subject; the merged one in ``detail``).
    "update_subject", "rename_subject", "merge_subject",
    # ``faceserve restore``: a backup replaced the gallery, erasures since re-applied.
    "restore",
    # Galleries created and deleted over HTTP (issue 20), in the default gallery's log.
    "create_gallery", "delete_gallery",
    # Issue 17: a face given to another subject; a negative example added or deleted.
    "move_face", "add_negative", "delete_negative",
)


class Actor(Protocol):
    """Who acts: an API key, or the operator (no key: the CLI, or a server without keys)."""

    @property
    def key_id(self) -> str | None: ...

    @property
    def name(self) -> str: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, store: SecurityStore) -> None:
        self.store = store

    def record(
        self,
        actor: Actor,
        action: str,
        *,
        gallery: str = "",
        subject_id: str | None = None,
        face_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        """Append an event (blocking: call from a worker thread). A failure is logged, not
        raised: the change it describes is already committed and the client must learn so."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        event = NewAuditEvent(
            at=_now(), key_id=actor.key_id, key_name=actor.name, action=action,
            gallery=gallery, subject_id=subject_id, face_id=face_id, detail=detail or {},
        )
        try:
            return self.store.add_audit(event)
        except Exception:
            log.exception("could not write the audit event %s", event)
            return None

    def events(
        self, gallery: str | None, after: int, limit: int, action: str | None = None
    ) -> list[AuditRecord]:
        """One gallery's events; a gallery other than the default (a tenant's) is numbered
        in its own sequence, so its ids reveal nothing of the other galleries' activity."""
        return self.store.list_audit(gallery, after, limit, action,
                                     per_gallery=bool(gallery))
