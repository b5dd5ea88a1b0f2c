"""Replicas: keep this process's FAISS index following a shared store's change log.

Several ``faceserve serve`` processes share one PostgreSQL gallery; each holds the whole index
in memory as a cache of the database. Writes go to the database (any replica), and every write
appends to the change log under a monotonically increasing change id. Each replica runs one
``Replicator`` thread:

1. ``LISTEN`` first (so no notification between the next two steps is lost), then
2. catch up: read the log after the last applied id, in batches, and apply adds and deletes to
   the index (``Gallery.catch_up``), then
3. sleep until a ``NOTIFY`` arrives or ``poll_s`` passes, and go to 2.

The log, not the notification, is the truth: a notification missed while the listening
connection was down, or a whole replica restart, costs only the catch-up, never a change. A
restarted replica rebuilds its index from the faces table and replays the log from the change id
it read first; replaying is idempotent (an add of a face already indexed, or deleted since, and
a delete of a face not indexed are no-ops; row ids are never reused). Errors (database away)
are logged, reported as the lag grows, and retried with backoff.

Snapshots and pruning (issue 16). A replica keeps an index snapshot in its data directory,
tagged with the change id it reflects, and at start-up replays the log from there instead of
rebuilding. Every ``HEARTBEAT_S`` the replicator records in the store how far this replica has
applied (``replicas`` table), and every ``PRUNE_S`` it deletes the log entries that every live
replica (heartbeat within ``LIVE_S``) has applied, so the log stays short. A replica that was
not live meanwhile (stopped, or stalled longer than ``LIVE_S``) can find the log pruned past its
position, at start-up (its snapshot is then refused) or while following (``ChangeBatch.
pruned_through``): it rebuilds its index from the store and logs a warning; never a lost change.
A starting replica records the pruned point as its position before it reads the store, so the
others do not prune what it is about to replay.

Each batch is applied atomically for searches (one exclusive section of the gallery's
readers-writer lock); a single transaction with more changes than a batch (erasing a subject
with more than ``CATCH_UP_BATCH`` faces) can be seen half-applied between two batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.gallery.store.base import ChangeListener, LogPosition

CATCH_UP_BATCH = 2000  # change-log entries applied at once (one exclusive section for searches)


class FollowedGallery(Protocol):
    """What the replicator needs of ``gallery.Gallery`` (which depends on this module,
    not the reverse)."""

    @property
    def last_change_id(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def log_position(self, after: int | None = None) -> LogPosition: ...

    def catch_up(self, limit: int = CATCH_UP_BATCH) -> int: ...

    def heartbeat(self) -> None: ...

    def prune_log(self, live_s: float) -> tuple[int, int]: ...


__all__ = ["CATCH_UP_BATCH", "HEARTBEAT_S", "LIVE_S", "POLL_S", "PRUNE_S", "FollowedGallery",
           "ReplicationStatus", "Replicator"]

log = logging.getLogger("faceserve.replication")

POLL_S = 1.0  # longest sleep without a notification: bounds the lag when notifications are lost
HEARTBEAT_S = 5.0  # how often a replica records its applied position
PRUNE_S = 60.0  # how often it prunes the log of what every live replica has applied
LIVE_S = 600.0  # a replica silent longer no longer holds the log (it rebuilds if pruned past)
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ReplicationStatus:
    """How far this replica's index is behind the shared store."""

    applied_change_id: int  # the index reflects every change up to this id
    # None when the store cannot be asked (then ``error`` says why)
    head_change_id: int | None  # the last change committed to the store
    changes_behind: int | None
    seconds_behind: float | None  # age of the oldest change not applied yet; 0 when caught up
    listening: bool  # the LISTEN connection is up (else the replica polls every attempt)
    error: str | None  # the last catch-up or connection error, until the next success


class Replicator:
    """The background thread that applies the change log to ``gallery``'s index."""

    def __init__(
        self,
        gallery: FollowedGallery,
        open_listener: Callable[[], ChangeListener],
        *,
        poll_s: float = POLL_S,
        batch: int = CATCH_UP_BATCH,
        heartbeat_s: float = HEARTBEAT_S,
        prune_s: float = PRUNE_S,
        live_s: float = LIVE_S,
    ) -> None:
        self._gallery = gallery
        self._heartbeat_s, self._prune_s, self._live_s = heartbeat_s, prune_s, live_s
        self._last_heartbeat = self._last_prune = time.monotonic()
        self._open_listener = open_listener
        self._poll_s = poll_s
        self._batch = batch
        self._stop = threading.Event()
        self._listener: ChangeListener | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="faceserve-replicator",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (it wakes at least every ``poll_s``)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def status(self) -> ReplicationStatus:
        """The lag, read from the store now (one small query)."""
        applied = self._gallery.last_change_id
        listening = self._listener is not None
        try:
            position = self._gallery.log_position(applied)
        except Exception as exc:
            return ReplicationStatus(applied, None, None, None, listening,
                                     f"{type(exc).__name__}: {exc}".strip())
        return ReplicationStatus(
            applied_change_id=applied,
            head_change_id=position.head,
            changes_behind=position.behind,
            seconds_behind=round(position.oldest_pending_s, 3),
            listening=listening,
            error=self._error,
        )

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                self._listener.close()
            self._listener = None

    def _housekeeping(self) -> None:
        """Heartbeat and prune when due (errors go to the retry loop like catch-up's)."""
        now = time.monotonic()
        if now - self._last_heartbeat >= self._heartbeat_s:
            self._gallery.heartbeat()
            self._last_heartbeat = now
        if now - self._last_prune >= self._prune_s:
            through, removed = self._gallery.prune_log(self._live_s)
            self._last_prune = now
            if removed:
                log.info("change log pruned through change %d (%d entries)", through, removed)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._listener is None:
                        self._listener = self._open_listener()  # before catching up: see step 1
                    while self._gallery.catch_up(self._batch) >= self._batch:
                        if self._stop.is_set():
                            return
                    if self._error is not None:
                        log.info("replication resumed: caught up to change %d",
                                 self._gallery.last_change_id)
                    self._error, failures = None, 0
                    self._housekeeping()
                    self._listener.wait(self._poll_s)
                except Exception as exc:
                    if self._gallery.closed:
                        return
                    self._error = f"{type(exc).__name__}: {exc}".strip()
                    delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("replication: %s; retrying in %.1fs", self._error, delay)
                    self._close_listener()
                    self._stop.wait(delay)
        finally:
            self._close_listener()


def wait_caught_up(gallery: FollowedGallery, timeout: float, poll_s: float = 0.01) -> bool:
    """Until ``gallery`` has applied every change committed when called (tests, benchmarks)."""
    head = gallery.log_position(gallery.last_change_id).head
    deadline = time.monotonic() + timeout
    while gallery.last_change_id < head:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
