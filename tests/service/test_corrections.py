"""Corrections that stick (issue 17): "not this person" negatives, moving a face to another
subject, one clustering at a time, chips inline in the cluster listing; SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.gallery.gallery import Gallery
from tests.service import postgres_util
from tests.service.conftest import AppFactory, fake_embedding, fake_photo


@pytest.fixture(params=["sqlite", "postgres"])
def any_client(request: pytest.FixtureRequest, make_client: AppFactory
               ) -> Iterator[tuple[TestClient, str | None]]:
    """(an app that remembers unknown faces, its database URL or None for SQLite)."""
    if request.param == "sqlite":
        yield make_client(remember_unknown=True, identify_fpir="off"), None
        return
    with postgres_util.fresh_schema() as (url, _):
        client = make_client(remember_unknown=True, identify_fpir="off", database_url=url)
        yield client, url
        client.__exit__(None, None, None)  # before the schema is dropped


def png(data: bytes) -> dict[str, Any]:
    return {"image": ("p.png", data, "image/png")}


def b64(vector: np.ndarray) -> str:
    return base64.urlsafe_b64encode(np.asarray(vector, "<f4").tobytes()).decode().rstrip("=")


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def near(base: np.ndarray, seed: int, scale: float) -> np.ndarray:
    """A unit vector at cosine about 1/sqrt(1 + scale**2) from ``base``."""
    noise = np.random.default_rng(seed).normal(size=base.shape)
    return unit(base + scale * unit(noise))


def enroll(client: TestClient, subject: str, person: int, variant: int = 0) -> str:
    r = client.post("/enroll", files=png(fake_photo(person, variant=variant)),
                    data={"subject_id": subject})
    assert r.status_code == 201, r.text
    return str(r.json()["face_id"])


def search(client: TestClient, vector: np.ndarray) -> dict[str, Any]:
    r = client.get("/identify", params={"embedding": b64(vector), "threshold": 0.8})
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------- not this person


def test_a_negative_refuses_the_face_and_similar_faces_not_the_subject(any_client: Any) -> None:
    client, _ = any_client
    enroll(client, "alice", 1)
    bob_face = enroll(client, "bob", 2)
    alice = fake_embedding(1)
    impostor = near(alice, 0, 0.3)  # a stranger who looks like alice
    assert search(client, impostor)["match"]["subject_id"] == "alice"

    r = client.post("/negatives", json={"subject_id": "alice", "embedding": b64(impostor)})
    assert r.status_code == 201, r.text
    negative = r.json()
    assert negative["source"] == "embedding" and negative["subject_id"] == "alice"

    # The marked face itself: refused for alice, and the response says by which negative.
    body = search(client, impostor)
    assert body["match"] is None
    top = body["candidates"][0]
    assert top["subject_id"] == "alice"
    assert top["suppressed_by"]["negative_id"] == negative["negative_id"]
    assert top["suppressed_by"]["similarity"] >= top["similarity"]
    # Another photo of the stranger (nearer to the negative than to alice): refused too.
    other_photo = near(impostor, 1, 0.1)
    assert float(other_photo @ impostor) > float(other_photo @ alice)
    assert search(client, other_photo)["match"] is None
    # Alice herself, and a photo of her nearer to her than to the negative, still match.
    for probe in (alice, near(alice, 2, 0.1)):
        assert float(probe @ alice) > float(probe @ impostor)
        found = search(client, probe)
        assert found["match"]["subject_id"] == "alice"
        assert found["candidates"][0].get("suppressed_by") is None
    # POST /identify: the photo of alice still matches, bob's is unaffected.
    r = client.post("/identify", files=png(fake_photo(1, variant=5)))
    assert r.json()["faces"][0]["match"]["subject_id"] == "alice"

    # An enrolled face of another subject as the negative; listing; undo.
    r = client.post("/negatives", json={"subject_id": "alice", "face_id": bob_face})
    assert r.status_code == 201 and r.json()["source_id"] == bob_face
    listed = client.get("/negatives", params={"subject_id": "alice"}).json()
    assert [n["source"] for n in listed["negatives"]] == ["embedding", "face"]
    r = client.delete(f"/negatives/{negative['negative_id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert r.json()["subject_id"] == "alice"
    assert search(client, impostor)["match"]["subject_id"] == "alice"
    r = client.delete(f"/negatives/{negative['negative_id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "negative_not_found"
    assert client.get("/audit").json()["events"][-1]["action"] == "delete_negative"


def test_a_face_of_an_identify_result_is_marked_by_its_embedding(any_client: Any) -> None:
    client, _ = any_client
    enroll(client, "alice", 1)
    photo = fake_photo(1, variant=7)  # the fake pipeline gives every photo of 1 one vector:
    # so marking it refuses alice for all of them (a tie goes to the negative).
    r = client.post("/identify", files=png(photo), data={"return_embedding": "true"})
    face = r.json()["faces"][0]
    assert face["match"]["subject_id"] == "alice" and face["embedding_b64"]
    r = client.post("/negatives", json={"subject_id": "alice",
                                        "embedding": face["embedding_b64"]})
    assert r.status_code == 201, r.text
    face = client.post("/identify", files=png(photo)).json()["faces"][0]
    assert face["match"] is None and face["candidates"][0]["suppressed_by"]
    assert face.get("embedding_b64") is None  # only when asked for
    # Verify against alice agrees: the similarity is there, the match is not.
    r = client.post("/verify", files=png(photo), data={"subject_id": "alice"}).json()
    assert r["similarity"] == pytest.approx(1.0, abs=1e-5) and r["match"] is False
    assert r["suppressed_by"]["similarity"] >= r["similarity"]
    r = client.post("/verify", files=png(fake_photo(2)), data={"subject_id": "alice"}).json()
    assert r.get("suppressed_by") is None


def test_a_pool_face_can_be_marked_and_bad_requests_are_refused(any_client: Any) -> None:
    client, _ = any_client
    alice_face = enroll(client, "alice", 1)
    r = client.post("/identify", files=png(fake_photo(9)), data={"remember_unknown": "true"})
    pooled = r.json()["faces"][0]["unknown_face_id"]
    r = client.post("/negatives", json={"subject_id": "alice", "unknown_face_id": pooled})
    assert r.status_code == 201 and r.json()["source"] == "unknown_face"
    assert client.get("/clusters").json()["pending"] == 1  # it stays in the pool

    def refused(subject: str, body: dict[str, Any], status: int, code: str) -> None:
        r = client.post("/negatives", json={"subject_id": subject, **body})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code

    refused("alice", {"face_id": alice_face}, 409, "face_of_subject")
    refused("alice", {}, 422, "invalid_field")
    refused("alice", {"face_id": alice_face, "embedding": b64(fake_embedding(3))}, 422,
            "invalid_field")
    refused("nobody", {"embedding": b64(fake_embedding(3))}, 404, "subject_not_found")
    refused("alice", {"face_id": "f" * 32}, 404, "face_not_found")
    refused("alice", {"unknown_face_id": "f" * 32}, 404, "face_not_found")
    refused("alice", {"embedding": "AAAA"}, 400, "invalid_embedding")
    assert client.get("/negatives", params={"subject_id": "nobody"}).status_code == 404


def test_erasing_the_subject_erases_its_negatives(make_client: AppFactory, tmp_path: Path
                                                  ) -> None:
    client = make_client(data_dir=tmp_path / "g")
    enroll(client, "alice", 1)
    marked = near(fake_embedding(1), 3, 0.2)
    r = client.post("/negatives", json={"subject_id": "alice", "embedding": b64(marked)})
    assert r.status_code == 201
    assert client.delete("/subjects/alice").status_code == 200
    files = b"".join(p.read_bytes() for p in (tmp_path / "g").glob("gallery.sqlite3*"))
    assert np.asarray(marked, "<f4").tobytes() not in files
    conn = sqlite3.connect(tmp_path / "g" / "gallery.sqlite3")
    try:
        assert conn.execute("SELECT count(*) FROM negatives").fetchone() == (0,)
    finally:
        conn.close()
    # A new subject of the same name starts without them.
    enroll(client, "alice", 1)
    assert client.get("/negatives", params={"subject_id": "alice"}).json()["negatives"] == []


def test_a_renamed_or_merged_subject_keeps_its_negatives(any_client: Any) -> None:
    client, _ = any_client
    enroll(client, "alice", 1)
    enroll(client, "bob", 2)
    impostor = near(fake_embedding(1), 0, 0.3)
    r = client.post("/negatives", json={"subject_id": "alice", "embedding": b64(impostor)})
    negative_id = r.json()["negative_id"]
    assert client.patch("/subjects/alice", json={"subject_id": "alicia"}).status_code == 200
    listed = client.get("/negatives", params={"subject_id": "alicia"}).json()["negatives"]
    assert [n["negative_id"] for n in listed] == [negative_id]
    top = search(client, impostor)["candidates"][0]
    assert top["subject_id"] == "alicia" and top["suppressed_by"]["negative_id"] == negative_id
    r = client.post("/subjects/alicia/merge", json={"into": "bob"})
    assert r.status_code == 200, r.text
    listed = client.get("/negatives", params={"subject_id": "bob"}).json()["negatives"]
    assert [(n["negative_id"], n["subject_id"]) for n in listed] == [(negative_id, "bob")]


# ---------------------------------------------------------------- moving a face


def test_a_face_moves_to_a_new_subject_and_back(any_client: Any) -> None:
    client, _ = any_client
    enroll(client, "alice", 1)
    wrong = enroll(client, "alice", 3)  # a photo of someone else, enrolled as alice
    r = client.post(f"/faces/{wrong}/move", json={"subject_id": "carol"})
    assert r.status_code == 200, r.text
    assert r.json() == {"face_id": wrong, "from_subject_id": "alice", "subject_id": "carol",
                        "subject_created": True, "from_subject_deleted": False}
    assert [f["face_id"] for f in client.get("/subjects/carol").json()["faces"]] == [wrong]
    assert client.get("/subjects/alice").json()["face_count"] == 1
    match = client.post("/identify", files=png(fake_photo(3, variant=4))).json()["faces"][0]
    assert (match["match"]["subject_id"], match["match"]["face_id"]) == ("carol", wrong)
    assert client.get(f"/faces/{wrong}").json()["subject_id"] == "carol"
    event = client.get("/audit").json()["events"][-1]
    assert event["action"] == "move_face" and event["face_id"] == wrong

    r = client.post(f"/faces/{wrong}/move", json={"subject_id": "alice"})
    assert r.json()["subject_created"] is False and r.json()["from_subject_deleted"] is True
    assert client.get("/subjects/alice").json()["face_count"] == 2
    assert client.get("/subjects/carol").status_code == 404  # it went with its last face

    r = client.post(f"/faces/{wrong}/move", json={"subject_id": "alice"})
    assert r.status_code == 422
    assert client.post("/faces/" + "f" * 32 + "/move",
                       json={"subject_id": "x"}).status_code == 404
    # The target already has a face of the same image: refused, nothing changed.
    same = client.post("/enroll", files=png(fake_photo(3)), data={"subject_id": "dave"})
    assert same.status_code == 201
    r = client.post(f"/faces/{wrong}/move", json={"subject_id": "dave"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_face"
    assert client.get(f"/faces/{wrong}").json()["subject_id"] == "alice"


def test_a_move_reaches_every_replica(tmp_path: Path) -> None:
    """Two galleries on one PostgreSQL schema: a move on one is seen by the other through the
    change log (as a delete and an add, applied in one batch)."""
    with postgres_util.fresh_schema() as (url, _):
        a = Gallery.open(tmp_path / "a", "fake", database_url=url, follow=False)
        b = Gallery.open(tmp_path / "b", "fake", database_url=url, follow=False)
        try:
            v = fake_embedding(5)
            record, _ = a.enroll("x", v, bbox=(0, 0, 9, 9), landmarks=[[0.0, 0.0]] * 5,
                                 detection_confidence=1.0, image_sha256="i")
            b.catch_up()
            assert b.search(v[None, :], 1)[0][0].subject_id == "x"
            a.move_face(record.face_id, "y")
            b.catch_up()
            hits = b.search(v[None, :], 5)[0]
            assert [(h.face_id, h.subject_id) for h in hits] == [(record.face_id, "y")]
            assert b.size == 1 and b.subject_count == 1  # "x" went with its only face
        finally:
            a.close()
            b.close()


# ---------------------------------------------------------------- clustering


def test_a_second_clustering_of_the_pool_is_refused_while_one_runs(any_client: Any) -> None:
    client, url = any_client
    for v in range(2):
        client.post("/identify", files=png(fake_photo(70, variant=v)),
                    data={"remember_unknown": "true"})
    store = client.app.state.services.gallery.store
    other: Any = store
    if url is not None:  # another replica: its own session, the same schema
        from service.gallery.store.postgres import PostgresStore

        other = PostgresStore.open(url)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.clustering_lock("") as taken:
            assert taken
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        r = client.post("/clusters")
        assert r.status_code == 409 and r.json()["error"]["code"] == "clustering_running"
        with store.clustering_lock("another-gallery") as taken:
            assert taken  # one lock per gallery
    finally:
        release.set()
        holder.join()
        if other is not store:
            other.close()
    r = client.post("/clusters")
    assert r.status_code == 200 and [c["size"] for c in r.json()["clusters"]] == [2]


def test_the_listing_carries_chips_when_asked(any_client: Any) -> None:
    client, _ = any_client
    for person, n in ((80, 3), (81, 2)):
        for v in range(n):
            client.post("/identify", files=png(fake_photo(person, variant=v)),
                        data={"remember_unknown": "true"})
    plain = client.post("/clusters").json()
    assert all(c.get("chips") is None for c in plain["clusters"])
    listing = client.get("/clusters", params={"include": "chips", "chips_per_cluster": 2}).json()
    for cluster in listing["clusters"]:
        chips = cluster["chips"]
        assert len(chips) == 2
        assert chips[0]["face_id"] == cluster["representative_face_id"]
        assert {c["face_id"] for c in chips} <= {f["face_id"] for f in cluster["faces"]}
        jpeg = base64.b64decode(chips[0]["jpeg_b64"])
        served = client.get(f"/clusters/faces/{chips[0]['face_id']}/chip").content
        assert jpeg[:2] == b"\xff\xd8" and jpeg == served
    for bad in ({"include": "faces"}, {"include": "chips", "chips_per_cluster": 9}):
        assert client.get("/clusters", params=bad).status_code == 422
