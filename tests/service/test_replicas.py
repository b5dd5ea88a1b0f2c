"""Replicas sharing one PostgreSQL gallery: each index follows the change log.

In process (two ``Gallery`` objects on one fresh schema, synthetic unit vectors): catching up
applies the others' adds and deletes, a local write applies the others' earlier changes first,
replaying the log is idempotent, and a replica whose notifications never come still catches up
by polling.

Two real ``faceserve serve`` processes (real pipeline, real photos, one fresh database): enroll
through A, identify through B within 1 s; delete through B, gone from A within 1 s; SIGKILL B,
enroll 100 LFW faces through A's API (and delete 5), restart B: the same gallery (same subjects
and face ids, the same top-1 answers) on both.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.api.routes.common import encode_embedding
from service.gallery.gallery import Gallery
from service.gallery.replication import Replicator, wait_caught_up
from tests.service import postgres_util
from tests.service.test_server_process import faceserve_bin, free_port, post_photo, wait_ready

pytestmark = pytest.mark.timeout(300)

MODEL = "dlib-resnet-v1"
REPO = Path(__file__).resolve().parents[2]


def unit(seed: int, n: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def enroll(g: Gallery, subject: str, vector: np.ndarray) -> str:
    record, _ = g.enroll(
        subject, vector, bbox=(1, 2, 101, 102), landmarks=[[10.0, 20.0]] * 5,
        detection_confidence=0.9,
        image_sha256=hashlib.sha256(f"{subject}/{vector[:4].tobytes().hex()}".encode()).hexdigest(),
    )
    return record.face_id


def top1(g: Gallery, vector: np.ndarray) -> str | None:
    [hits] = g.search(vector[None, :], 1)
    return hits[0].face_id if hits else None


def view(g: Gallery) -> tuple[Any, ...]:
    """Everything a search can depend on: ids in the index and the id -> face map."""
    return tuple(g._index.ids().tolist()), dict(g._faces), g.size, g.subject_count


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Callable[..., Gallery]]:
    """``shared(name, follow=False)``: a Gallery on one fresh PostgreSQL schema per test."""
    opened: list[Gallery] = []
    with postgres_util.fresh_schema() as (url, _):
        def make(name: str, follow: bool = False, **kw: Any) -> Gallery:
            g = Gallery.open(tmp_path / name, MODEL, database_url=url, follow=follow, **kw)
            opened.append(g)
            return g

        yield make
        for g in opened:
            g.close()


# ---------------------------------------------------------------- in process


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_replica_applies_the_others_adds_and_deletes(
    shared: Callable[..., Gallery], kind: str
) -> None:
    a, b = shared("a", index_kind=kind), shared("b", index_kind=kind)
    assert a.shared and b.shared and a.replicator is None
    vectors = unit(1, 30)
    ids = [enroll(a, f"s{i % 10}", v) for i, v in enumerate(vectors)]
    assert top1(a, vectors[3]) == ids[3]  # searchable where it was enrolled, at once
    assert b.size == 0 and top1(b, vectors[3]) is None  # not yet applied on b
    assert b.catch_up() == 30
    assert view(b) == view(a) and top1(b, vectors[3]) == ids[3]
    assert b.subject_count == 10
    # A delete on b: b's own index at once, a's after its catch-up.
    assert b.delete_subject("s3") == 3
    assert top1(b, vectors[3]) != ids[3]
    assert top1(a, vectors[3]) == ids[3]
    a.catch_up()
    assert top1(a, vectors[3]) != ids[3] and view(a) == view(b)
    assert (a.size, a.subject_count) == (27, 9)
    assert a.delete_face(ids[4]) and b.catch_up() == 1 and view(b) == view(a)
    assert a.last_change_id == b.last_change_id == 30 + 3 + 1


def test_a_local_write_applies_the_others_earlier_changes_first(
    shared: Callable[..., Gallery],
) -> None:
    a, b = shared("a"), shared("b")
    va, vb = unit(2, 2)
    fa = enroll(a, "alice", va)
    fb = enroll(b, "bob", vb)  # b's write catches b up through alice's change too
    assert top1(b, va) == fa and top1(b, vb) == fb
    assert b.last_change_id == 2 and b.size == 2
    assert a.catch_up() == 1 and view(a) == view(b)


def test_replaying_the_log_changes_nothing(shared: Callable[..., Gallery]) -> None:
    """A restarted replica builds from the table, then replays the log from the change id it
    read first, which may overlap: adds of indexed faces and deletes of absent ones are no-ops."""
    a = shared("a")
    vectors = unit(3, 40)
    ids = [enroll(a, f"s{i % 8}", v) for i, v in enumerate(vectors)]
    a.delete_subject("s1")
    a.delete_face(ids[2])
    b = shared("b")  # built from the faces table
    before = view(b)
    assert before == view(a)
    b._last_change_id = 0  # replay the whole log over it
    assert b.catch_up(7) == 7  # in batches
    while b.catch_up(7):
        pass
    assert view(b) == before and b.last_change_id == a.last_change_id
    assert b._index.ntotal == b.size == 40 - 5 - 1


def test_a_replica_follows_through_notifications(shared: Callable[..., Gallery]) -> None:
    a = shared("a")
    b = shared("b", follow=True)
    assert b.replicator is not None
    vectors = unit(4, 5)
    ids = [enroll(a, f"s{i}", v) for i, v in enumerate(vectors)]
    assert wait_caught_up(b, timeout=10)
    assert [top1(b, v) for v in vectors] == ids
    status = b.replication_status()
    assert (status.applied_change_id, status.head_change_id, status.changes_behind) == (5, 5, 0)
    assert status.seconds_behind == 0.0 and status.listening and status.error is None


class Deaf:
    """A listener that never hears a notification (as if they were all lost)."""

    def wait(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def close(self) -> None:
        pass


def test_lost_notifications_cost_only_a_poll(shared: Callable[..., Gallery]) -> None:
    a, b = shared("a"), shared("b")
    follower = Replicator(b, Deaf, poll_s=0.05)
    follower.start()
    try:
        vector = unit(5)[0]
        face_id = enroll(a, "alice", vector)
        assert wait_caught_up(b, timeout=10)
        assert top1(b, vector) == face_id
        behind = a.replication_status()  # a has no follower: no status
        assert behind is None
    finally:
        follower.stop()


def test_a_replica_reports_how_far_behind_it_is(shared: Callable[..., Gallery]) -> None:
    a, b = shared("a"), shared("b")
    for i, v in enumerate(unit(6, 3)):
        enroll(a, f"s{i}", v)
    position = b.log_position()
    assert (position.head, position.behind) == (3, 3) and position.oldest_pending_s >= 0.0
    b.catch_up()
    assert b.log_position().behind == 0


# ---------------------------------------------------------------- two real servers


@contextmanager
def replica(name: str, tmp: Path, url: str, port: int) -> Iterator[subprocess.Popen]:
    env = dict(os.environ)
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    env["FACESERVE_DATABASE_URL"] = url
    env.setdefault("OMP_NUM_THREADS", "1")
    data_dir = tmp / name
    data_dir.mkdir(exist_ok=True)
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [faceserve_bin(), "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning", "--device", "cpu"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def embedding_of(client: httpx.Client, photo: Path) -> str:
    r = post_photo(client, "/embed", photo)
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert faces, f"no face in {photo}"
    return faces[0]["embedding_b64"]


def first_seen(client: httpx.Client, embedding: str, want: Callable[[dict], bool],
               deadline_s: float) -> float:
    """Seconds from now until a GET /identify *sent* then answers as wanted (fails after)."""
    start = time.monotonic()
    while True:
        sent = time.monotonic() - start
        r = client.get("/identify", params={"embedding": embedding, "k": 5})
        assert r.status_code == 200, r.text
        if want(r.json()):
            return sent
        if sent > deadline_s:
            pytest.fail(f"not replicated within {deadline_s}s: {r.json()}")
        time.sleep(0.01)


def matched(subject: str) -> Callable[[dict], bool]:
    return lambda body: body["match"] is not None and body["match"]["subject_id"] == subject


def absent(subject: str) -> Callable[[dict], bool]:
    return lambda body: all(c["subject_id"] != subject for c in body["candidates"])


def lfw_photos(lfw: Path, n: int) -> list[tuple[str, Path]]:
    """(subject, first photo) of the first ``n`` LFW people by name."""
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[:n]
    return [(p.name, sorted(p.glob("*.jpg"))[0]) for p in people]


def gallery_of(client: httpx.Client) -> dict[str, list[str]]:
    """subject -> its face ids, through the paginated API."""
    out: dict[str, list[str]] = {}
    params: dict[str, Any] = {"limit": 1000}
    while True:
        body = client.get("/subjects", params=params).json()
        for s in body["subjects"]:
            detail = client.get(f"/subjects/{s['subject_id']}").json()
            out[s["subject_id"]] = sorted(f["face_id"] for f in detail["faces"])
        if body["next_cursor"] is None:
            return out
        params["cursor"] = body["next_cursor"]


@pytest.mark.slow
def test_two_servers_share_one_gallery(people: Path, lfw: Path, tmp_path: Path) -> None:
    deadline_s = 1.0  # the bound for a change to reach the other replica
    with postgres_util.fresh_database() as url, ExitStack() as stack:
        pa, pb = free_port(), free_port()
        a_url, b_url = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
        a_proc = stack.enter_context(replica("a", tmp_path, url, pa))
        b_proc = stack.enter_context(replica("b", tmp_path, url, pb))
        wait_ready(a_url, a_proc, tmp_path / "a.log")
        wait_ready(b_url, b_proc, tmp_path / "b.log")
        a = stack.enter_context(httpx.Client(base_url=a_url, timeout=120))
        b = stack.enter_context(httpx.Client(base_url=b_url, timeout=120))

        # Enroll through A, identify through B.
        probe = embedding_of(b, people / "test/obama1.jpg")  # computed before the clock starts
        r = post_photo(a, "/enroll", people / "train/obama/obama.jpg", subject_id="obama")
        assert r.status_code == 201, r.text
        seen_add = first_seen(b, probe, matched("obama"), deadline_s)
        faces = b.post("/identify", files={
            "image": ("p.jpg", (people / "test/obama1.jpg").read_bytes(), "image/jpeg")})
        assert [f["match"]["subject_id"] for f in faces.json()["faces"]] == ["obama"]

        # Delete through B, gone from A.
        r = b.delete("/subjects/obama")
        assert r.status_code == 200 and r.json()["faces_deleted"] == 1, r.text
        seen_delete = first_seen(a, probe, absent("obama"), deadline_s)
        lag = b.get("/readyz").json()["replication"]
        assert lag["changes_behind"] == 0 and lag["applied_change_id"] == lag["head_change_id"]

        # B dies without a goodbye; A goes on enrolling (and deleting) through its API.
        b_proc.send_signal(signal.SIGKILL)
        b_proc.wait(30)
        enrolled: list[str] = []
        for subject, photo in lfw_photos(lfw, 130):
            r = post_photo(a, "/enroll", photo, subject_id=subject)
            if r.status_code == 201:
                enrolled.append(r.json()["face_id"])
            else:
                assert r.status_code == 422, r.text  # a photo without a usable face
            if len(enrolled) == 100:
                break
        assert len(enrolled) == 100
        for face_id in enrolled[::20]:
            assert a.delete(f"/faces/{face_id}").status_code == 200
        kept = [f for i, f in enumerate(enrolled) if i % 20]

        # B restarts on the same data dir and database: the same gallery as A.
        b_proc = stack.enter_context(replica("b", tmp_path, url, pb))
        ready_b = wait_ready(b_url, b_proc, tmp_path / "b.log")
        ready_a = a.get("/readyz").json()
        assert ready_b["gallery_faces"] == ready_a["gallery_faces"] == len(kept) == 95
        assert ready_b["gallery_subjects"] == ready_a["gallery_subjects"]
        assert gallery_of(b) == gallery_of(a)
        for face_id in kept:  # each stored face searches both galleries (itself left out)
            ra = a.get("/identify", params={"face_id": face_id, "k": 1}).json()["candidates"]
            rb = b.get("/identify", params={"face_id": face_id, "k": 1}).json()["candidates"]
            assert [c["face_id"] for c in ra] == [c["face_id"] for c in rb]
            assert [c["similarity"] for c in ra] == pytest.approx(
                [c["similarity"] for c in rb], abs=1e-6)
        for vector in unit(7, 20):
            e = encode_embedding(vector)
            ta = a.get("/identify", params={"embedding": e, "k": 1}).json()["candidates"]
            tb = b.get("/identify", params={"embedding": e, "k": 1}).json()["candidates"]
            assert ta == tb
        print(f"replication delays: add {seen_add * 1000:.0f} ms, "
              f"delete {seen_delete * 1000:.0f} ms")
