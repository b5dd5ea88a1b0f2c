"""The gallery stores, SQLite and PostgreSQL, against one suite: idempotent writes, the change
log (commit order, followers), cascades, migrations, scans, keys and audit.

Every test runs on both backends. PostgreSQL tests use the real server (``postgres_util``), each
in a fresh schema dropped afterwards, and skip with the reason when no server answers.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from service.gallery.store import (
    GalleryStore,
    NewFace,
    SchemaTooNew,
    SqliteStore,
    StoreError,
    open_store,
)
from service.gallery.store.base import KeyRecord, NewAuditEvent
from service.gallery.store.migrations.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from service.gallery.store.sqlite import FILENAME
from service.gallery.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tests.service import postgres_util

pytestmark = pytest.mark.timeout(120)

DIM = 128


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def face(subject: str, n: int, *, chip: bytes | None = None) -> NewFace:
    return NewFace(
        face_id=f"face-{subject}-{n}",
        subject_id=subject,
        bbox=(10, 20, 110, 120),
        landmarks=[[1.5, 2.5], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
        detection_confidence=0.75,
        model="m1",
        image_sha256=hashlib.sha256(f"{subject}/{n}".encode()).hexdigest(),
        created_at="2026-01-01T00:00:00.000Z",
        embedding=vec(int.from_bytes(hashlib.sha256(f"{subject}{n}".encode()).digest()[:4])),
        chip_jpeg=chip,
    )


# ---------------------------------------------------------------- the two backends


class Backend:
    """One database for a test: open stores on it and look at it from outside the store."""

    name: str
    schema_version: int

    def open(self) -> GalleryStore:
        raise NotImplementedError

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def execute(self, statement: str) -> None:
        raise NotImplementedError

    def fingerprint(self) -> Any:
        """Something that changes whenever the database does."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    schema_version = SQLITE_SCHEMA_VERSION

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / FILENAME

    def open(self) -> GalleryStore:
        return open_store(self.data_dir)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()

    def execute(self, statement: str) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def fingerprint(self) -> Any:
        return self.path.read_bytes()


class PostgresBackend(Backend):
    name = "postgres"
    schema_version = PG_SCHEMA_VERSION

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema

    def open(self) -> GalleryStore:
        return open_store(Path("/nonexistent-unused"), self.url)

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(statement).fetchall()

    def execute(self, statement: str) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(statement)

    def fingerprint(self) -> Any:
        with psycopg.connect(self.url) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "ORDER BY 1", (self.schema,)).fetchall()
            dump = {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
                    for (t,) in tables}
        return tables, repr(dump)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path)
        return
    with postgres_util.fresh_schema() as (url, schema):
        yield PostgresBackend(url, schema)


@pytest.fixture
def store(backend: Backend) -> Iterator[GalleryStore]:
    s = backend.open()
    yield s
    s.close()


# ---------------------------------------------------------------- faces and subjects


def test_a_face_round_trips_with_every_field(store: GalleryStore) -> None:
    new = face("alice", 1, chip=b"\xff\xd8jpeg")
    result = store.add_face(new, {"name": "Alice", "tags": ["a", "ü"]})
    assert result.created and result.subject_created and result.change_id == 1
    got = store.get_face(new.face_id)
    assert got is not None
    assert (got.subject_id, got.bbox, got.landmarks, got.model, got.image_sha256) == (
        "alice", (10, 20, 110, 120), new.landmarks, "m1", new.image_sha256)
    assert got.detection_confidence == pytest.approx(0.75)
    assert got.created_at == new.created_at
    assert got.embedding is not None and np.array_equal(got.embedding, new.embedding)
    assert got.embedding.dtype == np.float32
    assert store.get_face(new.face_id, with_embedding=False).embedding is None  # type: ignore[union-attr]
    assert store.get_chip(new.face_id) == b"\xff\xd8jpeg"
    subject = store.get_subject("alice")
    assert subject is not None
    assert subject.metadata == {"name": "Alice", "tags": ["a", "ü"]}
    assert subject.face_count == 1 and [f.face_id for f in subject.faces] == [new.face_id]


def test_same_subject_and_image_is_one_face(store: GalleryStore) -> None:
    first = store.add_face(face("alice", 1), None)
    again = store.add_face(
        NewFace(**{**face("alice", 1).__dict__, "face_id": "another-id"}), None
    )
    assert not again.created and again.record.face_id == first.record.face_id
    assert again.row_id == first.row_id and again.change_id == first.change_id
    other = store.add_face(
        NewFace(**{**face("alice", 1).__dict__, "face_id": "bob-id", "subject_id": "bob"}), None
    )
    assert other.created  # the same photo may be enrolled for another subject
    assert store.state().face_count == 2


def test_every_face_write_appends_to_the_change_log(
    backend: Backend, store: GalleryStore
) -> None:
    for n in range(3):
        store.add_face(face("alice", n), None)
    store.add_face(face("bob", 0), None)
    assert store.state().last_change_id == 4
    result = store.delete_subject("alice")
    assert len(result.row_ids) == 3 and result.change_id == 7
    assert store.delete_face("face-bob-0").change_id == 8
    assert store.delete_face("face-bob-0").row_ids == []
    assert store.state().last_change_id == 8
    ops = backend.query("SELECT op, face_row_id FROM changes ORDER BY change_id")
    assert [op for op, _ in ops] == ["add"] * 4 + ["delete"] * 4
    assert sorted(r for op, r in ops if op == "delete") == sorted(r for op, r in ops if op == "add")


def test_deleting_a_subject_deletes_its_faces(store: GalleryStore) -> None:
    for n in range(3):
        store.add_face(face("alice", n), None)
    store.add_face(face("bob", 0), None)
    result = store.delete_subject("alice")
    assert result.subject_existed
    assert store.get_subject("alice") is None
    assert all(store.get_face(f"face-alice-{n}") is None for n in range(3))
    assert store.subject_faces("alice") == []
    state = store.state()
    assert (state.face_count, state.subject_count) == (1, 1)
    unknown = store.delete_subject("nobody")
    assert not unknown.subject_existed and unknown.row_ids == []


def test_a_subject_goes_with_its_last_face(store: GalleryStore) -> None:
    store.add_face(face("alice", 0), {"k": 1})
    store.add_face(face("alice", 1), None)
    first = store.delete_face("face-alice-0")
    assert first.row_ids and not first.subject_deleted
    subject = store.get_subject("alice")
    assert subject is not None and subject.face_count == 1 and subject.metadata == {"k": 1}
    last = store.delete_face("face-alice-1")
    assert last.row_ids and last.subject_deleted
    assert store.get_subject("alice") is None and store.state().subject_count == 0


def test_metadata_is_kept_unless_replacement_is_asked_for(store: GalleryStore) -> None:
    assert not store.add_face(face("alice", 0), {"v": 1}, False).metadata_replaced
    kept = store.add_face(face("alice", 1), {"v": 2}, replace_metadata=False)
    assert kept.created and not kept.metadata_replaced
    assert store.get_subject("alice").metadata == {"v": 1}  # type: ignore[union-attr]
    replaced = store.add_face(face("alice", 1), {"v": 3}, replace_metadata=True)
    assert not replaced.created and replaced.metadata_replaced
    assert store.get_subject("alice").metadata == {"v": 3}  # type: ignore[union-attr]


def test_rename_and_merge_move_faces_in_the_change_log(
    backend: Backend, store: GalleryStore
) -> None:
    for n in range(2):
        store.add_face(face("alice", n), {"a": 1})
    store.add_face(face("bob", 0), {"b": 1})
    assert store.rename_subject("alice", "bob").status == "target_exists"
    assert store.rename_subject("nobody", "x").status == "no_source"
    assert store.state().last_change_id == 3  # refused: nothing logged
    renamed = store.rename_subject("alice", "carol", {"c": 1})
    assert renamed.status == "ok" and renamed.faces_moved == 2
    assert store.get_subject("alice") is None
    carol = store.get_subject("carol")
    assert carol is not None and carol.metadata == {"c": 1}
    assert [f.face_id for f in carol.faces] == ["face-alice-0", "face-alice-1"]
    ops = backend.query("SELECT op, face_row_id FROM changes WHERE change_id > 3 "
                        "ORDER BY change_id")
    assert [op for op, _ in ops] == ["delete", "delete", "add", "add"]
    assert [r for _, r in ops] == renamed.removed_row_ids + renamed.added_row_ids
    assert store.merge_subjects("carol", "nobody").status == "no_target"
    merged = store.merge_subjects("carol", "bob")
    assert (merged.status, merged.faces_moved, merged.faces_dropped) == ("ok", 2, 0)
    assert store.get_subject("carol") is None
    bob = store.get_subject("bob")
    assert bob is not None and bob.face_count == 3 and bob.metadata == {"b": 1}
    assert store.state().subject_count == 1


def test_metadata_is_replaced_only_when_given(store: GalleryStore) -> None:
    store.add_face(face("alice", 0), {"v": 1})
    store.add_face(face("alice", 1), None)
    assert store.get_subject("alice").metadata == {"v": 1}  # type: ignore[union-attr]
    store.add_face(face("alice", 2), {"v": 2})
    assert store.get_subject("alice").metadata == {"v": 2}  # type: ignore[union-attr]


@pytest.mark.parametrize("replay", [False, True], ids=["new face", "idempotent replay"])
def test_replaced_metadata_leaves_no_copy_in_the_sqlite_files(
    tmp_path: Path, replay: bool
) -> None:
    """Issue 19: the old metadata stayed in the WAL (or the main file, until the next
    checkpoint) after it was replaced; replacing personal data now checkpoints, as deletion."""
    store = open_store(tmp_path)
    try:
        store.add_face(face("alice", 0), {"home": "old-address-4711"})
        store.add_face(face("bob", 0), {"home": "kept-address-0815"})
        store.add_face(face("alice", 0 if replay else 1), {"home": "new-address"})
        assert store.get_subject("alice").metadata == {"home": "new-address"}  # type: ignore[union-attr]
        disk = b"".join(p.read_bytes() for p in tmp_path.glob(FILENAME + "*"))
        assert b"old-address-4711" not in disk
        assert b"new-address" in disk and b"kept-address-0815" in disk
    finally:
        store.close()


def test_chips_may_be_absent(store: GalleryStore) -> None:
    store.add_face(face("alice", 0, chip=None), None)
    assert store.get_chip("face-alice-0") is None
    assert store.get_chip("no-such-face") is None


def test_subjects_are_listed_in_a_stable_bytewise_order(store: GalleryStore) -> None:
    # "\x1f..." is how namespaced galleries store their subjects: they must sort first.
    ids = ["b", "a", "é", "B", "a/b", "aa", "Z", "日本", "\x1fns\x1fz", "~"]
    for s in ids:
        store.add_face(face(s, 0), None)
    listed = [r.subject_id for r in store.list_subjects(None, 100)]
    assert listed == sorted(ids, key=lambda s: s.encode("utf-8"))
    assert [r.subject_id for r in store.list_subjects("a", 2)] == listed[
        listed.index("a") + 1 : listed.index("a") + 3
    ]
    assert all(r.face_count == 1 and r.faces == [] for r in store.list_subjects(None, 100))


def test_a_scan_sees_every_face_once_in_row_order(store: GalleryStore) -> None:
    added = [store.add_face(face(f"s{n % 7}", n), None) for n in range(50)]
    store.delete_face(added[10].record.face_id)
    chunks = list(store.scan_faces(8, with_embeddings=True))
    assert [len(c.row_ids) for c in chunks] == [8] * 6 + [1]
    rows = np.concatenate([c.row_ids for c in chunks])
    expected = [a.row_id for i, a in enumerate(added) if i != 10]
    assert rows.tolist() == expected
    vectors = np.concatenate([c.embeddings for c in chunks])  # type: ignore[misc]
    want = np.stack([a.record.embedding for i, a in enumerate(added) if i != 10])  # type: ignore[misc]
    assert np.array_equal(vectors, want)
    light = list(store.scan_faces(100, with_embeddings=False))
    assert light[0].embeddings is None
    assert light[0].face_ids == [a.record.face_id for i, a in enumerate(added) if i != 10]


def test_model_counts_are_reported(store: GalleryStore) -> None:
    store.add_face(face("a", 0), None)
    store.add_face(NewFace(**{**face("b", 0).__dict__, "model": "m0"}), None)
    assert store.state().model_counts == {"m1": 1, "m0": 1}


# ---------------------------------------------------------------- the change log, followed


def test_the_change_log_is_read_by_id_with_what_a_follower_needs(store: GalleryStore) -> None:
    a = store.add_face(face("alice", 0), None)
    b = store.add_face(face("alice", 1), None)
    c = store.add_face(face("bob", 0), None)
    store.delete_face(b.record.face_id)
    batch = store.changes_since(0, 100)
    assert [(x.change_id, x.op, x.row_id) for x in batch.changes] == [
        (1, "add", a.row_id), (2, "add", b.row_id), (3, "add", c.row_id), (4, "delete", b.row_id)]
    first = batch.changes[0]
    assert (first.face_id, first.subject_id, first.model) == ("face-alice-0", "alice", "m1")
    assert first.embedding is not None and np.array_equal(first.embedding, a.record.embedding)
    # The add of a face deleted since carries nothing to index: its delete follows.
    assert batch.changes[1].embedding is None and batch.changes[1].face_id is None
    assert batch.changes[3].embedding is None
    assert batch.subject_count == 2
    assert [x.change_id for x in store.changes_since(1, 2).changes] == [2, 3]
    assert store.changes_since(4, 100).changes == []
    position = store.log_position(2)
    assert (position.head, position.behind) == (4, 2) and 0.0 <= position.oldest_pending_s < 600
    caught_up = store.log_position(4)
    assert (caught_up.head, caught_up.behind, caught_up.oldest_pending_s) == (4, 0, 0.0)


def test_a_follower_reading_by_id_never_misses_a_concurrent_write(backend: Backend) -> None:
    """Two writers (two store objects, as two processes would have) and a follower that reads
    the log by id while they write: it must end with every change, each once, in id order.
    Ids drawn in one order but committed in another would make it skip some."""
    writers = [backend.open(), backend.open()]
    follower = backend.open()
    per_writer = 120
    seen: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for n in range(per_writer):
                writers[w].add_face(face(f"w{w}-{n % 9}", n), None)
                if n % 5 == 4:
                    writers[w].delete_face(f"face-w{w}-{(n - 2) % 9}-{n - 2}")
        except BaseException as exc:
            errors.append(exc)

    def follow() -> None:
        last = 0
        while True:
            finished = done.is_set()  # read before the log: the last read then sees all
            for change in follower.changes_since(last, 1000).changes:
                assert change.change_id > last
                seen.append(change.change_id)
                last = change.change_id
            if finished:
                return

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    reader = threading.Thread(target=follow)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    try:
        assert not errors, errors
        everything = [c.change_id for c in follower.changes_since(0, 100_000).changes]
        assert len(everything) == 2 * (per_writer + per_writer // 5)
        assert seen == everything
    finally:
        for s in (*writers, follower):
            s.close()


def test_stores_opened_at_once_migrate_once(backend: Backend) -> None:
    opened: list[GalleryStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(backend.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    assert not errors, errors
    assert backend.query("SELECT version FROM schema_version") == [(backend.schema_version,)]


# ---------------------------------------------------------------- lifecycle, migrations


def test_a_reopened_store_keeps_its_data_and_version(backend: Backend) -> None:
    s = backend.open()
    s.add_face(face("alice", 0), None)
    s.close()
    s = backend.open()
    assert s.get_face("face-alice-0") is not None
    assert s.state().last_change_id == 1
    s.close()
    assert backend.query("SELECT version FROM schema_version") == [(backend.schema_version,)]
    if backend.name == "sqlite":
        assert backend.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_newer_schema_is_refused_and_left_untouched(backend: Backend) -> None:
    backend.open().close()
    newer = backend.schema_version + 1
    backend.execute(f"UPDATE schema_version SET version = {newer}")
    before = backend.fingerprint()
    with pytest.raises(SchemaTooNew, match=rf"version {newer}.*newer faceserve"):
        backend.open()
    assert backend.fingerprint() == before


def test_a_foreign_database_is_refused(backend: Backend) -> None:
    backend.execute("CREATE TABLE faces (x integer)")
    with pytest.raises(StoreError, match="not a faceserve gallery"):
        backend.open()


def test_a_closed_store_refuses_work(backend: Backend) -> None:
    s = backend.open()
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get_face("x")
    with pytest.raises(StoreError, match="closed"):
        s.add_face(face("a", 0), None)


def test_the_factory_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    assert isinstance(s, SqliteStore) and not s.shared
    s.close()
    with pytest.raises(StoreError, match="unsupported database URL scheme 'mysql'"):
        open_store(tmp_path, "mysql://u:p@h/db")
    # A server that is not there: a clear error that does not repeat the password.
    with pytest.raises(StoreError, match="cannot connect to the PostgreSQL gallery") as err:
        open_store(tmp_path, "postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(err.value)


# ---------------------------------------------------------------- API keys and audit (issue 7)


def test_keys_and_audit_events_are_stored(store: Any) -> None:
    k1 = KeyRecord("k1", "kiosk", "h1", ("enroll", "recognize"), "", "2026-01-01T00:00:00Z")
    k2 = KeyRecord("k2", "ops", "h2", ("admin",), "tenant", "2026-01-02T00:00:00Z")
    store.add_key(k1)
    store.add_key(k2)
    assert store.find_key("h2") == k2 and store.find_key("nope") is None
    assert [k.key_id for k in store.list_keys()] == ["k1", "k2"]
    assert [k.key_id for k in store.list_keys("tenant")] == ["k2"]
    assert store.revoke_key("k2", "2026-01-03T00:00:00Z", gallery="") is None  # other gallery
    revoked = store.revoke_key("k2", "2026-01-03T00:00:00Z")
    assert revoked is not None and revoked.revoked_at == "2026-01-03T00:00:00Z"
    assert store.revoke_key("k2", "2026-02-01T00:00:00Z").revoked_at == "2026-01-03T00:00:00Z"
    assert (store.key_count(active_only=True), store.key_count(active_only=False)) == (1, 2)
    ids = [
        store.add_audit(NewAuditEvent("t1", "k1", "kiosk", "enroll", "", "alice", "f1",
                                      {"faces": 1})),
        store.add_audit(NewAuditEvent("t2", None, "", "delete_subject", "tenant", "bob")),
    ]
    assert ids[1] > ids[0]
    events = store.list_audit(None, 0, 10)
    assert [(e.action, e.detail) for e in events] == [("enroll", {"faces": 1}),
                                                       ("delete_subject", {})]
    assert [e.id for e in store.list_audit("tenant", 0, 10)] == [ids[1]]
    assert [e.id for e in store.list_audit(None, ids[0], 10)] == [ids[1]]
    assert [e.id for e in store.list_audit(None, 0, 10, action="enroll")] == [ids[0]]
    assert store.state().last_change_id == 0  # not gallery changes: followers ignore them


def test_a_gallerys_audit_events_are_numbered_in_its_own_sequence(store: Any) -> None:
    """A tenant's event ids are its own positions: no gaps where other galleries acted."""
    for i in range(7):
        gallery = "tenant" if i % 3 == 0 else ""  # positions 0, 3, 6 are the tenant's
        action = "enroll" if i < 6 else "delete_subject"
        store.add_audit(NewAuditEvent(f"t{i}", None, "k", action, gallery, f"s{i}"))
    mine = store.list_audit("tenant", 0, 10, per_gallery=True)
    assert [(e.id, e.subject_id) for e in mine] == [(1, "s0"), (2, "s3"), (3, "s6")]
    assert [e.id for e in store.list_audit("tenant", 1, 1, per_gallery=True)] == [2]
    assert [e.id for e in store.list_audit("tenant", 0, 10, "delete_subject",
                                           per_gallery=True)] == [3]
    assert [e.id for e in store.list_audit("tenant", 0, 10)] != [1, 2, 3]  # the global ids


# ---------------------------------------------------------------- scopes and galleries (issue 20)


def _migrations(backend: Backend) -> tuple[tuple[str, ...], ...]:
    from service.gallery.store.migrations.postgres import MIGRATIONS as PG_MIGRATIONS
    from service.gallery.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

    return SQLITE_MIGRATIONS if backend.name == "sqlite" else PG_MIGRATIONS


def _schema_before_scopes_split(backend: Backend, keys: list[tuple[str, str, str]]) -> None:
    """The database as a faceserve before issue 20 left it, holding ``keys`` (id, scopes,
    gallery): every migration up to the one that adds the galleries table."""
    migrations = _migrations(backend)
    upto = next(i for i, m in enumerate(migrations) if any("galleries" in s for s in m))
    statements = [s for m in migrations[:upto] for s in m] + [
        "CREATE TABLE schema_version (version integer NOT NULL)",
        f"INSERT INTO schema_version (version) VALUES ({upto})",
    ] + [
        "INSERT INTO api_keys (key_id, name, key_hash, scopes, gallery, created_at) VALUES "
        f"('{key_id}', 'old {key_id}', 'hash-{key_id}', '{scopes}', '{gallery}', "
        f"'2025-0{n + 1}-01T00:00:00.000Z')"
        for n, (key_id, scopes, gallery) in enumerate(keys)
    ]
    if backend.name == "sqlite":
        assert isinstance(backend, SqliteBackend)
        conn = sqlite3.connect(backend.path)
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
    else:
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(backend.url) as pg:
            for statement in statements:
                pg.execute(statement)


def test_keys_stored_with_the_old_admin_scope_keep_every_power(backend: Backend) -> None:
    """`admin` used to cover reading, erasure, audit and metrics: the migration spells that
    out for the keys stored then, and leaves the others as they were."""
    from service.security.keys import LEGACY_ADMIN

    _schema_before_scopes_split(backend, [
        ("k_ops", "admin", ""), ("k_both", "enroll,recognize,admin", "acme"),
        ("k_kiosk", "enroll,recognize", ""),
    ])
    store: Any = backend.open()
    try:
        scopes = {k.key_id: k.scopes for k in store.list_keys()}
        assert scopes == {"k_ops": LEGACY_ADMIN, "k_both": ("enroll", "recognize", *LEGACY_ADMIN),
                          "k_kiosk": ("enroll", "recognize")}
        # The gallery of an existing key is recorded as created with its first key.
        assert store.list_galleries() == {"acme": "2025-02-01T00:00:00.000Z"}
        # A key created now with admin alone stays admin alone.
        store.add_key(KeyRecord("k_new", "new", "hash-new", ("admin",), "", "2026-01-01Z"))
        assert store.find_key("hash-new").scopes == ("admin",)
    finally:
        store.close()
    reopened: Any = backend.open()  # the migration runs once
    assert reopened.find_key("hash-new").scopes == ("admin",)
    reopened.close()


def test_galleries_are_listed_from_the_table_keys_pool_and_subjects(store: Any) -> None:
    from service.gallery.store.unknown import UnknownFace
    from service.security.keys import Namespace

    assert store.list_galleries() == {}
    assert store.add_gallery("empty", "2026-01-01T00:00:00.000Z") is True
    assert store.add_gallery("empty", "2026-02-01T00:00:00.000Z") is False  # kept as it was
    store.add_key(KeyRecord("k1", "kiosk", "h1", ("enroll",), "keyed", "2026-01-02Z"))
    store.add_key(KeyRecord("k2", "old", "h2", ("enroll",), "revoked", "2026-01-02Z"))
    store.revoke_key("k2", "2026-01-03Z")
    for gallery, subject, n in (("a", "x", 0), ("a", "y", 1), ("ab", "x", 0), ("z.9", "q", 0),
                                ("", "plain", 0), ("", "plain", 1)):
        store.add_face(face(Namespace(gallery).internal(subject), n), None)
    store.add_unknown([UnknownFace(
        face_id="u1", gallery="pooled", photo="p", source=None, bbox=(0, 0, 9, 9),
        landmarks=[[0.0, 0.0]] * 5, detection_confidence=0.9, model="m1",
        created_at="2026-01-01T00:00:00.000Z", embedding=vec(1))])
    listed = store.list_galleries()
    assert list(listed) == ["a", "ab", "empty", "keyed", "pooled", "z.9"]  # not "revoked"
    assert listed["empty"] == "2026-01-01T00:00:00.000Z" and listed["a"] is None
    counts = {name: store.gallery_counts(name) for name in ("", "a", "ab", "empty", "pooled")}
    assert [(c.subjects, c.faces, c.unknown_faces) for c in counts.values()] == [
        (1, 2, 0), (2, 2, 0), (1, 1, 0), (0, 0, 0), (0, 0, 1)]
    assert store.gallery_counts("keyed").active_keys == 1
    assert store.remove_gallery("empty") is True and "empty" not in store.list_galleries()
    assert store.remove_gallery("empty") is False


# ---------------------------------------------------------------- PostgreSQL only


def test_postgres_notifies_listeners_at_commit() -> None:
    with postgres_util.fresh_schema() as (url, _):
        store: Any = open_store(Path("/nonexistent-unused"), url)
        listener = store.open_listener()
        try:
            assert store.shared and "s3cret" not in store.location
            assert listener.wait(0.05) is False
            store.add_face(face("alice", 0), None)
            assert listener.wait(10) is True
            assert listener.wait(0.05) is False  # drained: one wake-up per catch-up
            store.delete_subject("alice")
            assert listener.wait(10) is True
        finally:
            listener.close()
            store.close()


def test_opening_removes_subjects_older_versions_left_without_faces(backend: Backend) -> None:
    """Before issue 20 a subject stayed (listed, never found) after its last face was
    deleted; the migration to this version removes such subjects."""
    store = backend.open()
    store.add_face(face("alice", 0), {"k": 1})
    store.add_face(face("bob", 0), None)
    store.close()
    # As an older version leaves it: bob without faces, the schema from before that migration
    # (SQLite's 4, PostgreSQL's 5), the later ones (tombstones, negatives) undone first.
    backend.execute("DELETE FROM faces WHERE subject_id = 'bob'")
    backend.execute("DROP TABLE negatives")  # issue 17's, after both
    if backend.name == "sqlite":
        for statement in ("DROP TRIGGER subjects_erasure_token",
                          "DROP INDEX subjects_erasure_token", "DROP TABLE tombstones",
                          "ALTER TABLE subjects DROP COLUMN erasure_token"):
            backend.execute(statement)
    else:
        backend.execute("DROP TABLE tombstones")
        backend.execute("ALTER TABLE subjects DROP COLUMN erasure_token")
    before = 3 if backend.name == "sqlite" else 4
    backend.execute(f"UPDATE schema_version SET version = {before}")
    assert backend.query("SELECT count(*) FROM subjects") == [(2,)]
    store = backend.open()
    try:
        assert store.get_subject("bob") is None
        assert [s.subject_id for s in store.list_subjects(None, 10)] == ["alice"]
        assert backend.query("SELECT max(version) FROM schema_version") == [
            (backend.schema_version,)]
    finally:
        store.close()
