"""Replica snapshots and change-log pruning on a real PostgreSQL gallery (issue 16).

A replica's index snapshot, loaded at start-up, gives the same search results as a rebuild and
catches up with the changes made after it; pruning never removes a change a live replica has
not applied; a replica found behind the pruned point (at start-up or while following) rebuilds
from the store and ends with the same gallery; the replication lag is a Prometheus gauge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from service.gallery.gallery import Gallery
from tests.service import postgres_util
from tests.service.conftest import AppFactory
from tests.service.test_replicas import MODEL, enroll, unit, view

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[tuple[Callable[..., Gallery], str]]:
    """(``open(name, **kw)``: a non-following Gallery in data dir ``name``, the URL)."""
    opened: list[Gallery] = []
    with postgres_util.fresh_schema() as (url, _):
        def make(name: str, **kw: Any) -> Gallery:
            g = Gallery.open(tmp_path / name, MODEL, database_url=url, follow=False, **kw)
            opened.append(g)
            return g

        yield make, url
        for g in opened:
            g.close()


def answers(g: Gallery, probes: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
    return [[(h.face_id, round(h.similarity, 5)) for h in hits] for hits in g.search(probes, k)]


def fill(g: Gallery, first: int, n: int) -> list[str]:
    return [enroll(g, f"s{i % 37}", unit(i)[0]) for i in range(first, first + n)]


def test_a_snapshot_reload_equals_a_rebuild(pg: tuple[Callable[..., Gallery], str],
                                            tmp_path: Path) -> None:
    open_, _ = pg
    a = open_("a")
    fill(a, 0, 120)
    a.delete_face(a.search(unit(3), 1)[0][0].face_id)
    a.close()  # writes the snapshot, tagged with the change id it reflects
    assert (tmp_path / "a" / "index.faiss").exists()
    again = open_("a")
    fresh = open_("fresh")  # no snapshot: built from the store
    assert again.index_source == "snapshot" and fresh.index_source == "store"
    assert view(again) == view(fresh)
    probes = unit(1000, 40)
    assert answers(again, probes) == answers(fresh, probes)


def test_a_replica_started_from_its_snapshot_catches_up(
        pg: tuple[Callable[..., Gallery], str]) -> None:
    open_, _ = pg
    a = open_("a")
    faces = fill(a, 0, 60)
    a.close()
    b = open_("b")
    new = fill(b, 60, 40)  # after a's snapshot
    for face_id in faces[:10] + new[:5]:  # some in a's snapshot, some not
        assert b.delete_face(face_id)
    a = open_("a")
    assert a.index_source == "snapshot"
    assert a.last_change_id == b.last_change_id
    assert view(a) == view(b)
    for i in range(60, 100):
        [hits] = a.search(unit(i), 1)
        assert hits[0].face_id == (new[i - 60] if i >= 65 else hits[0].face_id)
    gone = set(faces[:10] + new[:5])
    for hits in a.search(unit(1000, 20), 50):
        assert not {h.face_id for h in hits} & gone
    probes = np.vstack([unit(i) for i in range(100)])
    assert answers(a, probes) == answers(b, probes)


def test_pruning_keeps_what_a_live_replica_has_not_applied(
        pg: tuple[Callable[..., Gallery], str]) -> None:
    open_, _ = pg
    a, b = open_("a"), open_("b")
    fill(a, 0, 30)
    b.catch_up(10_000)
    a.heartbeat()
    b.heartbeat()
    behind = b.last_change_id  # b stops here (heartbeat still live)
    faces = fill(a, 30, 30)
    a.delete_face(faces[0])
    a.heartbeat()
    through, removed = a.prune_log(live_s=600)
    assert removed > 0 and through <= behind  # nothing b still needs
    b.catch_up(10_000)
    assert b.rebuilds == 0 and view(b) == view(a)
    b.heartbeat()
    through, _ = a.prune_log(live_s=600)
    assert through == b.last_change_id - 1  # the head entry stays (it gives the head id)
    assert a.log_position().head == a.last_change_id


def _silence(url: str, replica_id: str | None) -> None:
    """Make a replica's last heartbeat an hour old (as if it had stalled or stopped)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE replicas SET seen_at = now() - interval '1 hour' "
                     "WHERE replica_id = %s", (replica_id,))


def test_a_replica_behind_the_pruned_point_rebuilds_and_is_correct(
        pg: tuple[Callable[..., Gallery], str], caplog: pytest.LogCaptureFixture) -> None:
    open_, url = pg
    a, b = open_("a"), open_("b")
    fill(a, 0, 20)
    b.catch_up(10_000)
    b.heartbeat()
    faces = fill(a, 20, 40)
    a.delete_face(faces[3])
    a.heartbeat()
    _silence(url, b.replica_id)
    through, removed = a.prune_log(live_s=600)
    assert removed > 0 and through > b.last_change_id
    with caplog.at_level(logging.WARNING, logger="faceserve"):
        b.catch_up(10_000)
    assert b.rebuilds == 1
    assert "behind the pruned change log" in caplog.text
    assert view(b) == view(a)
    probes = np.vstack([unit(i) for i in range(60)])
    assert answers(b, probes) == answers(a, probes)


def test_a_snapshot_older_than_the_pruned_point_is_not_used(
        pg: tuple[Callable[..., Gallery], str]) -> None:
    open_, url = pg
    a, b = open_("a"), open_("b")
    fill(a, 0, 20)
    b.catch_up(10_000)
    replica_b = b.replica_id
    b.close()  # snapshot at its position
    fill(a, 20, 20)
    a.heartbeat()
    _silence(url, replica_b)
    through, _ = a.prune_log(live_s=600)
    b = open_("b")
    assert b.index_source == "store"  # refused: the log no longer reaches back to it
    assert view(b) == view(a) and through > 0


def test_replication_lag_is_a_prometheus_gauge(make_client: AppFactory) -> None:
    with postgres_util.fresh_schema() as (url, _):
        client = make_client(database_url=url)
        text = client.get("/metrics").text
        assert "faceserve_replication_lag_changes 0.0" in text
        assert "faceserve_replication_lag_seconds 0.0" in text
    private = make_client()
    assert "faceserve_replication_lag" not in private.get("/metrics").text
