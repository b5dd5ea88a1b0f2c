"""Subjects and faces: listing with cursors, reading, deleting; deletion is erasure for search."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.api.routes.common import encode_embedding
from tests.service.conftest import fake_embedding, fake_photo


def enroll(client: TestClient, subject: str, photo: bytes, metadata: str | None = None) -> dict:
    data = {"subject_id": subject} | ({"metadata": metadata} if metadata else {})
    r = client.post("/enroll", files={"image": ("p.png", photo, "image/png")}, data=data)
    assert r.status_code == 201, r.text
    return r.json()


def identify(client: TestClient, person: int, k: int = 5) -> dict:
    return client.get(
        "/identify", params={"embedding": encode_embedding(fake_embedding(person)), "k": k}
    ).json()


def test_list_subjects_pages_through_everyone_once(client: TestClient) -> None:
    names = {f"s{i:02d}" for i in range(23)}
    for i, name in enumerate(sorted(names)):
        enroll(client, name, fake_photo(100 + i))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        r = client.get("/subjects", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["subjects"]) <= 10
        seen += [s["subject_id"] for s in body["subjects"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(names) and len(seen) == len(names)
    first = client.get("/subjects", params={"limit": 1}).json()["subjects"][0]
    assert set(first) == {"subject_id", "metadata", "created_at", "face_count"}
    assert first["face_count"] == 1


def test_get_subject_shows_metadata_and_faces(client: TestClient) -> None:
    a = enroll(client, "zed", fake_photo(1), metadata='{"dept": "r&d"}')
    b = enroll(client, "zed", fake_photo(1, variant=2))
    body = client.get("/subjects/zed").json()
    assert body["metadata"] == {"dept": "r&d"} and body["face_count"] == 2
    assert {f["face_id"] for f in body["faces"]} == {a["face_id"], b["face_id"]}
    face = body["faces"][0]
    assert set(face) == {"face_id", "subject_id", "bbox", "landmarks", "detection_confidence",
                         "model", "image_sha256", "created_at"}
    assert face["model"] == "fake-v1" and len(face["image_sha256"]) == 64


def test_get_face(client: TestClient) -> None:
    enrolled = enroll(client, "ann", fake_photo(2))
    r = client.get(f"/faces/{enrolled['face_id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["subject_id"] == "ann" and body["bbox"] == enrolled["bbox"]
    np.testing.assert_allclose(body["landmarks"], enrolled["landmarks"], rtol=1e-6)


def test_deleting_a_subject_makes_it_unfindable(client: TestClient) -> None:
    enroll(client, "gone", fake_photo(3))
    enroll(client, "gone", fake_photo(3, faces=2))
    enroll(client, "stays", fake_photo(4))
    face_ids = [f["face_id"] for f in client.get("/subjects/gone").json()["faces"]]
    assert identify(client, 3)["match"]["subject_id"] == "gone"

    r = client.delete("/subjects/gone")
    assert r.status_code == 200 and r.json() == {"subject_id": "gone", "faces_deleted": 2}

    body = identify(client, 3, k=100)
    assert body["match"] is None
    assert all(c["subject_id"] != "gone" for c in body["candidates"])
    assert client.get("/subjects/gone").status_code == 404
    for face_id in face_ids:
        assert client.get(f"/faces/{face_id}").status_code == 404
    r = client.post("/verify", files={"image": ("p.png", fake_photo(3), "image/png")},
                    data={"subject_id": "gone"})
    assert r.status_code == 404
    assert client.delete("/subjects/gone").status_code == 404
    assert identify(client, 4)["match"]["subject_id"] == "stays"


def test_deleting_a_face_removes_only_that_template(client: TestClient) -> None:
    first = enroll(client, "two", fake_photo(5))
    enroll(client, "two", fake_photo(6))  # another look, another vector
    r = client.delete(f"/faces/{first['face_id']}")
    assert r.status_code == 200
    assert r.json() == {"face_id": first["face_id"], "subject_id": "two", "deleted": True,
                        "subject_deleted": False}
    assert client.get(f"/faces/{first['face_id']}").status_code == 404
    assert client.get("/subjects/two").json()["face_count"] == 1
    assert identify(client, 5)["match"] is None or identify(client, 5)["match"]["face_id"] != (
        first["face_id"]
    )
    assert identify(client, 6)["match"]["subject_id"] == "two"
    assert client.delete(f"/faces/{first['face_id']}").status_code == 404
