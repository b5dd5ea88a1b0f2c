"""The SQLite store: idempotent writes, the change log, cascades, migrations, scans."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.store import NewFace, SchemaTooNew, SqliteStore, StoreError
from service.store.sqlite import FILENAME, SCHEMA_VERSION

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(tmp_path)
    yield s
    s.close()


def test_a_face_round_trips_with_every_field(store: SqliteStore) -> None:
    new = face("alice", 1, chip=b"\xff\xd8jpeg")
    result = store.add_face(new, {"name": "Alice", "tags": ["a", "ü"]})
    assert result.created and result.subject_created and result.change_id == 1
    got = store.get_face(new.face_id)
    assert got is not None
    assert (got.subject_id, got.bbox, got.landmarks, got.model, got.image_sha256) == (
        "alice", (10, 20, 110, 120), new.landmarks, "m1", new.image_sha256)
    assert got.detection_confidence == pytest.approx(0.75)
    assert got.embedding is not None and np.array_equal(got.embedding, new.embedding)
    assert got.embedding.dtype == np.float32
    assert store.get_face(new.face_id, with_embedding=False).embedding is None  # type: ignore[union-attr]
    assert store.get_chip(new.face_id) == b"\xff\xd8jpeg"
    subject = store.get_subject("alice")
    assert subject is not None
    assert subject.metadata == {"name": "Alice", "tags": ["a", "ü"]}
    assert subject.face_count == 1 and [f.face_id for f in subject.faces] == [new.face_id]


def test_same_subject_and_image_is_one_face(store: SqliteStore) -> None:
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


def test_every_face_write_appends_to_the_change_log(store: SqliteStore) -> None:
    for n in range(3):
        store.add_face(face("alice", n), None)
    store.add_face(face("bob", 0), None)
    assert store.state().last_change_id == 4
    result = store.delete_subject("alice")
    assert len(result.row_ids) == 3 and result.change_id == 7
    assert store.delete_face("face-bob-0").change_id == 8
    assert store.delete_face("face-bob-0").row_ids == []
    assert store.state().last_change_id == 8
    conn = sqlite3.connect(store.path)
    ops = conn.execute("SELECT op, face_row_id FROM changes ORDER BY change_id").fetchall()
    conn.close()
    assert [op for op, _ in ops] == ["add"] * 4 + ["delete"] * 4
    assert sorted(r for op, r in ops if op == "delete") == sorted(r for op, r in ops if op == "add")


def test_deleting_a_subject_deletes_its_faces(store: SqliteStore) -> None:
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


def test_deleting_a_face_keeps_its_subject(store: SqliteStore) -> None:
    store.add_face(face("alice", 0), {"k": 1})
    assert store.delete_face("face-alice-0").row_ids
    subject = store.get_subject("alice")
    assert subject is not None and subject.face_count == 0 and subject.metadata == {"k": 1}


def test_metadata_is_replaced_only_when_given(store: SqliteStore) -> None:
    store.add_face(face("alice", 0), {"v": 1})
    store.add_face(face("alice", 1), None)
    assert store.get_subject("alice").metadata == {"v": 1}  # type: ignore[union-attr]
    store.add_face(face("alice", 2), {"v": 2})
    assert store.get_subject("alice").metadata == {"v": 2}  # type: ignore[union-attr]


def test_chips_may_be_absent(store: SqliteStore) -> None:
    store.add_face(face("alice", 0, chip=None), None)
    assert store.get_chip("face-alice-0") is None
    assert store.get_chip("no-such-face") is None


def test_subjects_are_listed_in_a_stable_bytewise_order(store: SqliteStore) -> None:
    ids = ["b", "a", "é", "B", "a/b", "aa", "Z", "日本"]
    for s in ids:
        store.add_face(face(s, 0), None)
    listed = [r.subject_id for r in store.list_subjects(None, 100)]
    assert listed == sorted(ids, key=lambda s: s.encode("utf-8"))
    assert [r.subject_id for r in store.list_subjects("a", 2)] == listed[
        listed.index("a") + 1 : listed.index("a") + 3
    ]
    assert all(r.face_count == 1 and r.faces == [] for r in store.list_subjects(None, 100))


def test_a_scan_sees_every_face_once_in_row_order(store: SqliteStore) -> None:
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


def test_model_counts_are_reported(store: SqliteStore) -> None:
    store.add_face(face("a", 0), None)
    store.add_face(NewFace(**{**face("b", 0).__dict__, "model": "m0"}), None)
    assert store.state().model_counts == {"m1": 1, "m0": 1}


def test_a_reopened_store_keeps_its_data_and_version(tmp_path: Path) -> None:
    s = SqliteStore.open(tmp_path)
    s.add_face(face("alice", 0), None)
    s.close()
    s = SqliteStore.open(tmp_path)
    assert s.get_face("face-alice-0") is not None
    s.close()
    conn = sqlite3.connect(tmp_path / FILENAME)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    path = tmp_path / FILENAME
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match=rf"version {SCHEMA_VERSION + 1}.*newer faceserve"):
        SqliteStore.open(tmp_path)
    assert path.read_bytes() == before


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute("CREATE TABLE photos (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a faceserve gallery"):
        SqliteStore.open(tmp_path)


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    s = SqliteStore.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get_face("x")
    with pytest.raises(StoreError, match="closed"):
        s.add_face(face("a", 0), None)
