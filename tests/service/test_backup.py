"""Backup and restore (``service.gallery.backup``, ``faceserve backup``/``restore``): a backup
taken while the gallery is being written is consistent; a restore keeps erasures and key
revocations made after the backup, through the command line and as the HTTP API sees it; the
tombstones hold no personal data; and the gallery's files are owner-only."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main as cli
from service.config import Settings
from service.gallery.backup import BackupError, backup_sqlite, restore_sqlite
from service.gallery.gallery import Gallery, GalleryLocked
from service.gallery.store import GalleryStore, SqliteStore, SubjectRecord
from service.gallery.store.sqlite import FILENAME, JOURNAL_NAME
from tests.service import postgres_util
from tests.service.conftest import FakePipeline, fake_photo, wait_ready
from tests.service.test_store import face, vec

pytestmark = pytest.mark.timeout(120)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """A ``faceserve`` command that must succeed; its JSON output."""
    capsys.readouterr()
    assert cli(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- tombstones in both stores


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GalleryStore]:
    if request.param == "sqlite":
        s: Any = SqliteStore.open(tmp_path)
        yield s
        s.close()
        return
    with postgres_util.fresh_schema() as (url, _):
        from service.gallery.store.postgres import PostgresStore

        s = PostgresStore.open(url)
        yield s
        s.close()


def test_erasures_and_revocations_leave_tombstones_without_personal_data(
    store: Any,
) -> None:
    from service.gallery.store.base import KeyRecord

    store.add_face(face("Alice Example", 1), {"name": "Alice Example"})
    store.add_face(face("Alice Example", 2), None)
    store.add_face(face("bob", 1), None)
    store.add_key(KeyRecord("k_1", "app", "h1", ("enroll",), "", "2026-01-01T00:00:00Z"))
    assert store.tombstones() == []

    store.delete_subject("Alice Example")
    store.delete_face("face-bob-1")
    store.revoke_key("k_1", "2026-02-02T00:00:00.000Z")
    store.revoke_key("k_1", "2026-03-03T00:00:00.000Z")  # already revoked: no second one
    store.delete_subject("nobody")

    items = store.tombstones()
    assert [t.kind for t in items] == ["subject", "face", "face", "face", "key"]
    assert [t.ref for t in items[1:]] == [
        "face-Alice Example-1", "face-Alice Example-2", "face-bob-1", "k_1"]
    assert items[4].at == "2026-02-02T00:00:00.000Z"
    text = json.dumps([t.__dict__ for t in items[:1]] + [t.__dict__ for t in items[3:]])
    assert "Alice" not in text and "alice" not in text  # (the test's face ids contain names)
    assert len(items[0].ref) == 32  # a random token, not the id or a hash of it


def test_applying_tombstones_erases_by_token_and_revokes(store: Any) -> None:
    from service.gallery.store.base import KeyRecord, Tombstone

    store.add_face(face("alice", 1), None)
    store.add_face(face("bob", 1), None)
    store.add_face(face("bob", 2), None)
    store.add_key(KeyRecord("k_1", "app", "h1", ("enroll",), "", "2026-01-01T00:00:00Z"))
    with store._reader() as conn:
        token = conn.execute(
            f"SELECT erasure_token FROM subjects WHERE subject_id = {store._P}", ("alice",)
        ).fetchone()[0]
    undone = store.apply_tombstones([
        Tombstone("subject", token, "t"), Tombstone("face", "face-bob-2", "t"),
        Tombstone("key", "k_1", "2026-05-05T00:00:00.000Z"),
        Tombstone("subject", "f" * 32, "t"),  # a subject this store never had
    ])
    assert undone == {"subjects_erased": 1, "faces_erased": 2, "unknown_faces_erased": 0,
                      "negatives_erased": 0, "keys_revoked": 1}
    assert store.get_subject("alice") is None
    assert [f.face_id for f in store.subject_faces("bob")] == ["face-bob-1"]
    assert store.list_keys()[0].revoked_at == "2026-05-05T00:00:00.000Z"
    assert len(store.tombstones()) == 5  # and alice's face, recorded by erasing her
    # Applying them again changes nothing and records nothing twice.
    assert store.apply_tombstones(store.tombstones()) == {
        "subjects_erased": 0, "faces_erased": 0, "unknown_faces_erased": 0,
        "negatives_erased": 0, "keys_revoked": 0}
    assert len(store.tombstones()) == 5


def test_an_erased_unknown_face_is_erased_again(store: Any) -> None:
    from service.gallery.store.base import Tombstone
    from service.gallery.store.unknown import UnknownFace

    def unknown(face_id: str) -> UnknownFace:
        f = face("x", 1)
        return UnknownFace(
            face_id=face_id, gallery="", photo="p" * 64, source=None, bbox=f.bbox,
            landmarks=f.landmarks, detection_confidence=0.9, model="m1",
            created_at="2026-01-01T00:00:00.000Z", embedding=f.embedding)

    store.add_unknown([unknown("u1"), unknown("u2")])
    assert store.delete_unknown("", ["u1", "nope"]) == 1
    assert store.tombstones()[-1].kind == "unknown_face"
    assert [t.ref for t in store.tombstones()] == ["u1"]
    store.add_unknown([unknown("u1")])  # as if an older backup were restored
    undone = store.apply_tombstones([Tombstone("unknown_face", "u1", "t")])
    assert undone["unknown_faces_erased"] == 1
    assert [f.face_id for f in store.unknown_faces("")] == ["u2"]


def negative(subject: str, seed: int) -> Any:
    """A negative ("not this person") of ``subject`` with a random id, as the API makes one."""
    import uuid

    from service.gallery.store.negatives import NegativeRecord

    return NegativeRecord(negative_id=uuid.uuid4().hex, subject_id=subject, source="embedding",
                          source_id=None, model="m1", created_at="2026-01-01T00:00:00.000Z",
                          embedding=vec(seed), chip_jpeg=b"chip of a face")


def token_of(store: Any, subject: str) -> str:
    with store._reader() as conn:
        return str(conn.execute(
            f"SELECT erasure_token FROM subjects WHERE subject_id = {store._P}", (subject,)
        ).fetchone()[0])


def test_a_deleted_negative_leaves_a_tombstone_and_is_erased_again(store: Any) -> None:
    from service.gallery.store.base import Tombstone

    for subject in ("alice", "bob", "carol"):
        store.add_face(face(subject, 1), None)
    n1, n2, n3, n4 = (negative(s, i) for i, s in
                      enumerate(("alice", "alice", "bob", "carol")))
    for n in (n1, n2, n3, n4):
        store.add_negative(n)

    assert store.delete_negative("alice", n1.negative_id)
    assert not store.delete_negative("bob", n2.negative_id)  # not bob's: nothing happens
    assert [(t.kind, t.ref) for t in store.tombstones()] == [("negative", n1.negative_id)]
    store.delete_subject("bob")  # its negatives by id, as its faces
    assert [(t.kind, t.ref) for t in store.tombstones()][-2:] == [
        ("face", "face-bob-1"), ("negative", n3.negative_id)]

    # As after restoring an older backup: n1 is back, and so is bob with n3.
    assert store.import_negatives([n1]) == 1
    assert store.negative(n1.negative_id) is not None
    undone = store.apply_tombstones([Tombstone("negative", n1.negative_id, "t")])
    assert undone["negatives_erased"] == 1
    assert store.negative(n1.negative_id) is None
    assert store.negative(n2.negative_id) is not None  # only the one named
    # A subject's tombstone alone erases its negatives too (they go with their subject).
    undone = store.apply_tombstones([Tombstone("subject", token_of(store, "carol"), "t")])
    assert undone["subjects_erased"] == 1 and undone["negatives_erased"] == 0
    assert store.negative(n4.negative_id) is None
    # A tombstone of a kind a newer faceserve may add is skipped, not an error.
    future = Tombstone("future", "x", "t")  # type: ignore[arg-type]
    assert store.apply_tombstones([future])["subjects_erased"] == 0
    assert all(t.kind != "future" for t in store.tombstones())


def test_a_subject_keeps_its_token_and_a_new_one_gets_another(tmp_path: Path) -> None:
    s = SqliteStore.open(tmp_path)
    try:
        s.add_face(face("alice", 1), None)
        s.add_face(face("alice", 2), {"x": 1})  # metadata replaced: same subject
        s.import_batch([SubjectRecord("carol", {}, "2026-01-01T00:00:00.000Z", 0)],
                       [face("carol", 1)])
        with s._reader() as conn:
            rows = dict(conn.execute("SELECT subject_id, erasure_token FROM subjects"))
    finally:
        s.close()
    assert set(rows) == {"alice", "carol"}
    assert all(len(t) == 32 for t in rows.values()) and len(set(rows.values())) == 2


# ---------------------------------------------------------------- backup while writing


def test_a_backup_taken_while_the_gallery_is_written_is_consistent(tmp_path: Path) -> None:
    """A writer enrolls and erases without pause while backups are taken: every backup is a
    valid database whose faces, subjects, change log and tombstones agree with each other."""
    data_dir = tmp_path / "g"
    store = SqliteStore.open(data_dir)
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # One transaction: a subject and its two faces, which no backup may split.
            store.import_batch(
                [SubjectRecord(f"s{n}", {"n": n}, "2026-01-01T00:00:00.000Z", 0)],
                [face(f"s{n}", 1, chip=b"\xff\xd8" + bytes(2000)), face(f"s{n}", 2)],
            )
            if n % 3 == 0:
                store.delete_subject(f"s{n - 1}")
            written[0] = n

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        backups = []
        while len(backups) < 5 or written[0] < 60:
            backups.append(backup_sqlite(data_dir, tmp_path / f"b{len(backups)}.sqlite3"))
            assert len(backups) < 200, "the writer did not progress"
    finally:
        stop.set()
        thread.join()
        store.close()
    counts = set()
    for b in backups:
        assert mode(b.path) == 0o600
        assert not Path(str(b.path) + "-wal").exists()
        conn = sqlite3.connect(f"file:{b.path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            faces = conn.execute("SELECT count(*) FROM faces").fetchone()[0]
            adds, deletes = conn.execute(
                "SELECT sum(op = 'add'), sum(op = 'delete') FROM changes").fetchone()
            assert faces == (adds or 0) - (deletes or 0) == b.faces
            orphans = conn.execute("SELECT count(*) FROM faces f LEFT JOIN subjects s "
                                   "ON f.subject_id = s.subject_id WHERE s.subject_id IS NULL")
            assert orphans.fetchone()[0] == 0
            erased = conn.execute(
                "SELECT count(*) FROM tombstones WHERE kind = 'subject'").fetchone()[0]
            assert (deletes or 0) == 2 * erased  # each erased subject had two faces
            no_second = conn.execute("SELECT count(*) FROM subjects s WHERE (SELECT count(*) "
                                     "FROM faces f WHERE f.subject_id = s.subject_id) <> 2")
            assert no_second.fetchone()[0] == 0  # no backup caught an enrollment half-done
        finally:
            conn.close()
        counts.add(b.faces)
    assert len(counts) > 1, "every backup saw the same state: nothing was written meanwhile"


# ---------------------------------------------------------------- restore from the command line


def test_restore_keeps_erasures_and_revocations_made_after_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, out = tmp_path / "g", tmp_path / "backups"
    store = SqliteStore.open(data_dir)
    for subject in ("alice", "bob", "carol"):
        store.add_face(face(subject, 1), {"name": subject})
    store.close()
    key = run(capsys, "keys", "create", "--name", "app", "--scope", "enroll",
              "--data-dir", str(data_dir), "--json")
    backup = run(capsys, "backup", f"{out}/", "--data-dir", str(data_dir), "--json")
    assert (backup["subjects"], backup["faces"]) == (3, 3)
    assert mode(out) == 0o700 and mode(Path(backup["backup"])) == 0o600

    store = SqliteStore.open(data_dir)
    store.delete_subject("alice")
    store.delete_face("face-bob-1")
    store.add_face(face("dave", 1), None)  # after the backup: not in it
    store.close()
    run(capsys, "keys", "revoke", key["key_id"], "--data-dir", str(data_dir), "--json")

    result = run(capsys, "restore", backup["backup"], "--data-dir", str(data_dir), "--json")
    assert result["subjects_erased"] == 1 and result["faces_erased"] == 2
    assert result["keys_revoked"] == 1 and not result["journal_only"]
    store = SqliteStore.open(data_dir)
    try:
        assert store.get_subject("alice") is None
        assert store.get_face("face-bob-1") is None
        assert store.get_subject("carol") is not None
        assert store.get_subject("dave") is None
        assert store.list_keys()[0].revoked_at is not None
        actions = [e.action for e in store.list_audit(None, 0, 100)]
        assert actions[-1] == "restore"
    finally:
        store.close()
    replaced = Path(result["replaced"])
    assert replaced.is_file() and mode(replaced) == 0o600


def test_a_renamed_or_merged_subject_erased_after_the_backup_stays_erased(
    tmp_path: Path,
) -> None:
    """Renames and merges keep face ids, and a rename keeps the subject's token: erasing the
    subject under its new id still finds it in a backup made under the old one."""
    data_dir = tmp_path / "g"
    store = SqliteStore.open(data_dir)
    for subject in ("bob", "carol", "dave", "erin"):
        store.add_face(face(subject, 1), {"name": subject})
    store.close()
    backup = backup_sqlite(data_dir, tmp_path / "b.sqlite3")
    store = SqliteStore.open(data_dir)
    assert store.rename_subject("bob", "robert").status == "ok"
    assert store.merge_subjects("carol", "dave").status == "ok"
    store.delete_subject("robert")
    store.delete_subject("dave")
    store.close()
    result = restore_sqlite(data_dir, backup.path)
    store = SqliteStore.open(data_dir)
    try:
        assert [s.subject_id for s in store.list_subjects(None, 10)] == ["erin"]
    finally:
        store.close()
    assert result.faces == 1


def test_restore_without_the_current_database_uses_the_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "g"
    store = SqliteStore.open(data_dir)
    store.add_face(face("alice", 1), None)
    store.add_face(face("bob", 1), None)
    store.close()
    backup = backup_sqlite(data_dir, tmp_path / "b.sqlite3")
    store = SqliteStore.open(data_dir)
    store.delete_subject("alice")
    store.close()
    assert mode(data_dir / JOURNAL_NAME) == 0o600
    (data_dir / FILENAME).write_bytes(b"this disk died")  # the database is lost

    result = restore_sqlite(data_dir, backup.path)
    assert result.journal_only and result.undone["subjects_erased"] == 1
    store = SqliteStore.open(data_dir)
    try:
        assert store.get_subject("alice") is None and store.get_subject("bob") is not None
    finally:
        store.close()
    # A restore of the same backup again still knows of the erasure (now from both places).
    (data_dir / FILENAME).unlink()
    assert restore_sqlite(data_dir, backup.path).undone["subjects_erased"] == 1


def test_restore_refuses_while_the_gallery_is_open_and_bad_backups(tmp_path: Path) -> None:
    data_dir = tmp_path / "g"
    gallery = Gallery.open(data_dir, "m1")
    try:
        backup = backup_sqlite(data_dir, tmp_path / "b.sqlite3")  # while open: fine
        with pytest.raises(GalleryLocked, match="stop the server"):
            restore_sqlite(data_dir, backup.path)
    finally:
        gallery.close()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackupError):
        restore_sqlite(data_dir, junk)
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE schema_version (version INTEGER)")
    conn.execute("INSERT INTO schema_version VALUES (4)")
    conn.execute("CREATE TABLE subjects (subject_id TEXT)")
    conn.execute("CREATE TABLE faces (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(BackupError, match="erasure tokens"):
        restore_sqlite(data_dir, old)
    with pytest.raises(BackupError, match="exists"):
        backup_sqlite(data_dir, backup.path)


# ---------------------------------------------------------------- through the HTTP API


def serve(data_dir: Path) -> TestClient:
    settings = Settings(data_dir=data_dir, inference_threads=2, rate_limit_per_s=0)
    pipe = FakePipeline()
    client = TestClient(create_app(settings, pipeline_factory=lambda s: pipe))
    client.__enter__()
    wait_ready(client)
    return client


def test_after_a_restore_the_api_still_sees_the_erasure_and_the_revocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "g"
    ops = run(capsys, "keys", "create", "--name", "ops", "--scope", "admin", "--scope",
              "enroll", "--scope", "recognize", "--scope", "erase", "--scope", "read",
              "--data-dir", str(data_dir), "--json")
    app_key = run(capsys, "keys", "create", "--name", "kiosk", "--scope", "recognize",
                  "--data-dir", str(data_dir), "--json")
    admin = {"Authorization": f"Bearer {ops['token']}"}
    kiosk = {"Authorization": f"Bearer {app_key['token']}"}
    photos = {"alice": fake_photo(21), "bob": fake_photo(22)}

    client = serve(data_dir)
    try:
        for subject, photo in photos.items():
            r = client.post("/enroll", data={"subject_id": subject}, headers=admin,
                            files={"image": ("p.png", photo, "image/png")})
            assert r.status_code == 201, r.text
        backup = run(capsys, "backup", str(tmp_path / "b.sqlite3"), "--data-dir",
                     str(data_dir), "--json")  # while the server runs
        assert client.delete("/subjects/alice", headers=admin).status_code in (200, 204)
        r = client.delete(f"/keys/{app_key['key_id']}", headers=admin)
        assert r.status_code in (200, 204), r.text
        assert client.get("/subjects/alice", headers=admin).status_code == 404
        # The server holds the gallery: a restore now is refused, and changes nothing.
        capsys.readouterr()
        assert cli(["restore", backup["backup"], "--data-dir", str(data_dir)]) == 1
        assert "stop the server" in capsys.readouterr().err
    finally:
        client.__exit__(None, None, None)

    run(capsys, "restore", backup["backup"], "--data-dir", str(data_dir), "--json")

    client = serve(data_dir)
    try:
        assert client.get("/subjects/alice", headers=admin).status_code == 404
        assert client.get("/subjects/bob", headers=admin).status_code == 200
        r = client.post("/identify", headers=admin,
                        files={"image": ("p.png", photos["alice"], "image/png")})
        assert r.status_code == 200, r.text
        assert all(f.get("match") is None for f in r.json()["faces"]), r.text
        r = client.post("/identify", headers=admin,
                        files={"image": ("p.png", photos["bob"], "image/png")})
        assert r.json()["faces"][0]["match"]["subject_id"] == "bob"
        r = client.post("/identify", headers=kiosk,
                        files={"image": ("p.png", photos["bob"], "image/png")})
        assert r.status_code == 401  # the revoked key stays revoked
    finally:
        client.__exit__(None, None, None)


def test_a_negative_deleted_after_the_backup_stays_deleted_after_a_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Negatives hold a face's embedding and chip. One deleted through the API after the
    backup, and those of a subject erased after it, are not brought back by the restore."""
    import base64

    from tests.service.conftest import fake_embedding

    data_dir = tmp_path / "g"
    client = serve(data_dir)
    try:
        faces = {}
        for person, subject in enumerate(("alice", "bob", "carol"), start=21):
            r = client.post("/enroll", data={"subject_id": subject},
                            files={"image": ("p.png", fake_photo(person), "image/png")})
            assert r.status_code == 201, r.text
            faces[subject] = r.json()["face_id"]
        stranger = base64.urlsafe_b64encode(
            np.asarray(fake_embedding(99), "<f4").tobytes()).decode().rstrip("=")
        made = {}
        for name, body in (("deleted", {"subject_id": "alice", "face_id": faces["bob"]}),
                           ("kept", {"subject_id": "alice", "embedding": stranger}),
                           ("of_carol", {"subject_id": "carol", "face_id": faces["bob"]})):
            r = client.post("/negatives", json=body)
            assert r.status_code == 201, r.text
            made[name] = r.json()["negative_id"]
        backup = run(capsys, "backup", str(tmp_path / "b.sqlite3"), "--data-dir",
                     str(data_dir), "--json")
        r = client.delete(f"/negatives/{made['deleted']}")
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert client.delete("/subjects/carol").status_code in (200, 204)
    finally:
        client.__exit__(None, None, None)
    journal = [json.loads(line) for line in (data_dir / JOURNAL_NAME).read_text().splitlines()]
    negatives = [d["ref"] for d in journal if d["kind"] == "negative"]
    assert negatives == [made["deleted"], made["of_carol"]]

    result = run(capsys, "restore", backup["backup"], "--data-dir", str(data_dir), "--json")
    assert result["negatives_erased"] == 1 and result["subjects_erased"] == 1

    client = serve(data_dir)
    try:
        listed = client.get("/negatives", params={"subject_id": "alice"}).json()
        assert [n["negative_id"] for n in listed["negatives"]] == [made["kept"]]
        assert client.get("/subjects/carol").status_code == 404
        r = client.delete(f"/negatives/{made['deleted']}")
        assert r.status_code == 404
    finally:
        client.__exit__(None, None, None)
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        assert conn.execute("SELECT negative_id FROM negatives").fetchall() == [(made["kept"],)]
    finally:
        conn.close()


# ---------------------------------------------------------------- owner-only files


def test_the_gallery_files_are_owner_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    data_dir = tmp_path / "g"
    client = serve(data_dir)
    try:
        r = client.post("/enroll", data={"subject_id": "alice"},
                        files={"image": ("p.png", fake_photo(5), "image/png")})
        assert r.status_code == 201, r.text
        wal = data_dir / (FILENAME + "-wal")
        assert wal.exists() and mode(wal) == 0o600
        assert mode(data_dir / (FILENAME + "-shm")) == 0o600
        assert client.delete("/subjects/alice").status_code in (200, 204)
        r = client.post("/enroll", data={"subject_id": "bob"},
                        files={"image": ("p.png", fake_photo(6), "image/png")})
        assert r.status_code == 201
    finally:
        client.__exit__(None, None, None)  # writes the index snapshot
    assert mode(data_dir) == 0o700
    files = {p.name: mode(p) for p in data_dir.iterdir()}
    assert {FILENAME, "index.faiss", JOURNAL_NAME} <= set(files)
    assert all(m == 0o600 for m in files.values()), files
    archive = tmp_path / "export.tar"
    capsys.readouterr()
    assert cli(["export-gallery", str(archive), "--data-dir", str(data_dir)]) == 0
    assert mode(archive) == 0o600


def test_an_older_gallery_is_made_owner_only_when_opened(tmp_path: Path) -> None:
    data_dir = tmp_path / "g"
    SqliteStore.open(data_dir).close()
    data_dir.chmod(0o755)
    (data_dir / FILENAME).chmod(0o644)
    SqliteStore.open(data_dir).close()
    assert mode(data_dir) == 0o700 and mode(data_dir / FILENAME) == 0o600


def test_a_backup_from_another_process_leaves_the_servers_wal_alone(tmp_path: Path) -> None:
    """A server opens the database twice (gallery and key stores). Opening the file by any
    other descriptor in that process would drop SQLite's locks, and the backup process's
    connection, closing last as far as the locks say, would then delete the WAL the server
    still writes to."""
    import subprocess
    import sys

    data_dir = tmp_path / "g"
    gallery_store, key_store = SqliteStore.open(data_dir), SqliteStore.open(data_dir)
    try:
        gallery_store.add_face(face("alice", 1), None)
        wal = data_dir / (FILENAME + "-wal")
        assert wal.exists()
        out = subprocess.run(
            [sys.executable, "-m", "service.cli", "backup", str(tmp_path / "b.sqlite3"),
             "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert wal.exists() and (data_dir / (FILENAME + "-shm")).exists()
        gallery_store.add_face(face("bob", 1), None)
        assert key_store.get_subject("bob") is not None
    finally:
        key_store.close()
        gallery_store.close()
    store = SqliteStore.open(data_dir)
    try:
        assert store.get_subject("bob") is not None and store.get_subject("alice") is not None
    finally:
        store.close()


def test_postgres_restored_with_pg_restore_gets_its_tombstones_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented PostgreSQL procedure: pg_dump; later erase and revoke; export the
    tombstones; pg_restore the dump (the erased subject is back); apply them (gone again)."""
    import shutil
    import subprocess

    from service.gallery.store.base import KeyRecord
    from service.gallery.store.postgres import PostgresStore

    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump and pg_restore are not installed")
    data_dir = tmp_path / "replica"
    with postgres_util.fresh_schema() as (url, schema):
        store = PostgresStore.open(url)
        store.add_face(face("alice", 1), None)
        store.add_face(face("bob", 1), None)
        store.add_key(KeyRecord("k_1", "app", "h1", ("enroll",), "", "2026-01-01T00:00:00Z"))
        of_alice, deleted, kept = negative("alice", 1), negative("bob", 2), negative("bob", 3)
        for n in (of_alice, deleted, kept):
            store.add_negative(n)
        store.close()
        dump = tmp_path / "gallery.dump"
        subprocess.run(["pg_dump", "--format=custom", f"--schema={schema}", f"--file={dump}",
                        postgres_util.PG_URL], check=True, timeout=60)
        store = PostgresStore.open(url)
        store.delete_subject("alice")
        assert store.delete_negative("bob", deleted.negative_id)
        store.revoke_key("k_1", "2026-02-02T00:00:00.000Z")
        store.close()

        saved = tmp_path / "tombstones.jsonl"
        capsys.readouterr()
        assert cli(["tombstones", "export", str(saved), "--database-url", url,
                    "--data-dir", str(data_dir)]) == 0
        assert mode(saved) == 0o600
        subprocess.run(["pg_restore", "--clean", "--if-exists",
                        f"--dbname={postgres_util.PG_URL}", str(dump)], check=True, timeout=60)
        store = PostgresStore.open(url)
        assert store.get_subject("alice") is not None  # the dump brought it back
        assert store.negative(deleted.negative_id) is not None  # and the negative
        store.close()

        undone = run(capsys, "tombstones", "apply", str(saved), "--database-url", url,
                     "--data-dir", str(data_dir))
        assert undone == {"tombstones": 5, "subjects_erased": 1, "faces_erased": 1,
                          "unknown_faces_erased": 0, "negatives_erased": 1,
                          "keys_revoked": 1}
        store = PostgresStore.open(url)
        try:
            assert store.get_subject("alice") is None
            assert store.get_subject("bob") is not None
            assert store.negative(deleted.negative_id) is None
            assert store.negative(of_alice.negative_id) is None  # went with alice
            assert store.negative(kept.negative_id) is not None
            assert store.list_keys()[0].revoked_at == "2026-02-02T00:00:00.000Z"
            # alice, her face and her negative, the deleted negative, the key
            assert len(store.tombstones()) == 5
        finally:
            store.close()


def test_a_shared_directory_is_not_tightened_but_what_goes_in_it_is_private(
    tmp_path: Path,
) -> None:
    """A backup folder or data directory that others use (``/srv``, ``/tmp``) keeps its mode:
    only faceserve's own files in it are owner-only."""
    data_dir = tmp_path / "g"
    SqliteStore.open(data_dir).close()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o1777)
    result = backup_sqlite(data_dir, shared)
    assert mode(shared) == 0o1777 and mode(result.path) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    other.chmod(0o755)
    SqliteStore.open(other).close()  # a new gallery in an existing directory
    assert mode(other) == 0o755 and mode(other / FILENAME) == 0o600


# ---------------------------------------------------------------- the migration to 'negative'


OLD_TOMBSTONES = [("subject", "a" * 32, "2026-01-01T00:00:00.000Z"),
                  ("face", "face-x-1", "2026-01-02T00:00:00.000Z"),
                  ("key", "k_1", "2026-01-03T00:00:00.000Z")]


def test_sqlite_migration_keeps_the_tombstones_and_allows_negatives(tmp_path: Path) -> None:
    """A gallery of the version before (7, the CHECK without 'negative') with tombstones is
    upgraded: the rows stay, in their order, and a deleted negative can have one."""
    from service.gallery.store.sqlite import MIGRATIONS, SCHEMA_VERSION

    before = 7
    data_dir = tmp_path / "g"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / FILENAME)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (before,))
    for migration in MIGRATIONS[:before]:
        for statement in migration:
            conn.execute(statement)
    conn.executemany("INSERT INTO tombstones (kind, ref, at) VALUES (?, ?, ?)", OLD_TOMBSTONES)
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK, as the test's premise
        conn.execute("INSERT INTO tombstones (kind, ref, at) VALUES ('negative', 'n', 't')")
    conn.commit()
    conn.close()

    store = SqliteStore.open(data_dir)
    try:
        assert [(t.kind, t.ref, t.at) for t in store.tombstones()] == OLD_TOMBSTONES
        store.add_face(face("alice", 1), None)
        n = negative("alice", 1)
        store.add_negative(n)
        assert store.delete_negative("alice", n.negative_id)
        assert [(t.kind, t.ref) for t in store.tombstones()][-1] == ("negative", n.negative_id)
    finally:
        store.close()
    conn = sqlite3.connect(data_dir / FILENAME)
    try:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == \
            SCHEMA_VERSION
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK is still there
            conn.execute("INSERT INTO tombstones (kind, ref, at) VALUES ('other', 'r', 't')")
    finally:
        conn.close()


def test_postgres_migration_keeps_the_tombstones_and_allows_negatives() -> None:
    """As for SQLite: a PostgreSQL gallery of version 8 with tombstones is upgraded."""
    import psycopg

    from service.gallery.store.migrations.postgres import MIGRATIONS, SCHEMA_VERSION
    from service.gallery.store.postgres import PostgresStore

    before = 8
    with postgres_util.fresh_schema() as (url, _):
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (before,))
            for migration in MIGRATIONS[:before]:
                for statement in migration:
                    conn.execute(statement)
            for row in OLD_TOMBSTONES:
                conn.execute("INSERT INTO tombstones (kind, ref, at) VALUES (%s, %s, %s)", row)
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO tombstones (kind, ref, at) VALUES ('negative', 'n', 't')")

        store = PostgresStore.open(url)
        try:
            assert [(t.kind, t.ref, t.at) for t in store.tombstones()] == OLD_TOMBSTONES
            store.add_face(face("alice", 1), None)
            n = negative("alice", 1)
            store.add_negative(n)
            assert store.delete_negative("alice", n.negative_id)
            assert [(t.kind, t.ref) for t in store.tombstones()][-1] == (
                "negative", n.negative_id)
        finally:
            store.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == \
                SCHEMA_VERSION
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO tombstones (kind, ref, at) VALUES ('other', 'r', 't')")
