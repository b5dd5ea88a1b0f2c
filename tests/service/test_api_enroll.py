"""POST /enroll over the HTTP layer (fake pipeline): both encodings, faces, idempotency."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import fake_photo


def enroll(client: TestClient, subject: str, photo: bytes, **fields: str):
    return client.post(
        "/enroll", files={"image": ("face.png", photo, "image/png")},
        data={"subject_id": subject, **fields},
    )


def test_enroll_multipart_returns_the_stored_face(client: TestClient) -> None:
    r = enroll(client, "alice", fake_photo(person=1), metadata=json.dumps({"team": "blue"}))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["subject_id"] == "alice" and body["created"] is True
    assert len(body["face_id"]) == 32
    assert body["bbox"] == {"left": 10, "top": 20, "right": 49, "bottom": 59}
    assert len(body["landmarks"]) == 5 and all(len(p) == 2 for p in body["landmarks"])
    assert body["faces_detected"] == 1 and body["model"] == "fake-v1"
    assert 0 < body["detection_confidence"] <= 1
    subject = client.get("/subjects/alice").json()
    assert subject["metadata"] == {"team": "blue"}
    assert [f["face_id"] for f in subject["faces"]] == [body["face_id"]]


def test_enroll_json_body_with_base64_image(client: TestClient) -> None:
    photo = base64.b64encode(fake_photo(person=2)).decode()
    r = client.post(
        "/enroll", json={"image": photo, "subject_id": "bob", "metadata": {"n": 1}}
    )
    assert r.status_code == 201, r.text
    # URL-safe alphabet without padding, and a data: URL, are accepted too.
    urlsafe = base64.urlsafe_b64encode(fake_photo(person=2, variant=1)).decode().rstrip("=")
    r2 = client.post("/enroll", json={"image": urlsafe, "subject_id": "bob"})
    assert r2.status_code == 201, r2.text
    data_url = "data:image/png;base64," + base64.b64encode(fake_photo(2, variant=2)).decode()
    assert client.post("/enroll", json={"image": data_url, "subject_id": "bob"}).status_code == 201
    assert client.get("/subjects/bob").json()["face_count"] == 3


def test_identical_bytes_for_the_same_subject_are_idempotent(client: TestClient) -> None:
    photo = fake_photo(person=3)
    first = enroll(client, "carol", photo)
    again = enroll(client, "carol", photo)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["face_id"] == first.json()["face_id"]
    assert again.json()["created"] is False
    assert client.get("/subjects/carol").json()["face_count"] == 1
    # The same bytes for another subject are a new template of that subject.
    other = enroll(client, "dave", photo)
    assert other.status_code == 201 and other.json()["face_id"] != first.json()["face_id"]


def test_more_photos_add_templates(client: TestClient) -> None:
    ids = {enroll(client, "erin", fake_photo(4, variant=v)).json()["face_id"] for v in range(3)}
    assert len(ids) == 3
    assert client.get("/subjects/erin").json()["face_count"] == 3


def test_the_largest_face_is_enrolled_and_faces_are_counted(client: TestClient) -> None:
    r = enroll(client, "group", fake_photo(person=5, faces=3))
    assert r.status_code == 201
    body = r.json()
    assert body["faces_detected"] == 3
    # Face 2 has the largest box (80 px) though face 0 is the most confident.
    assert body["bbox"] == {"left": 210, "top": 20, "right": 289, "bottom": 99}


def test_several_faces_with_on_multiple_reject_is_422(client: TestClient) -> None:
    r = enroll(client, "group", fake_photo(person=5, faces=2), on_multiple="reject")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "multiple_faces"
    assert client.get("/subjects/group").status_code == 404
    assert enroll(client, "solo", fake_photo(6), on_multiple="reject").status_code == 201


def test_no_face_is_422_no_face(client: TestClient) -> None:
    r = enroll(client, "nobody", fake_photo(person=7, faces=0))
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
    assert client.get("/subjects/nobody").status_code == 404


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"subject_id": ""}, 422, "invalid_field"),
        ({"subject_id": "x" * 129}, 422, "invalid_field"),
        ({"subject_id": "tab\there"}, 422, "invalid_field"),
        ({"subject_id": "ok", "metadata": "{not json"}, 400, "invalid_metadata"),
        ({"subject_id": "ok", "metadata": "[1, 2]"}, 422, "invalid_field"),
        ({"subject_id": "ok", "metadata": json.dumps({"x": "y" * 5000})}, 422, "invalid_field"),
        ({"subject_id": "ok", "on_multiple": "first"}, 422, "invalid_field"),
        ({"subject_id": "ok", "unknown_field": "1"}, 422, "invalid_field"),
        ({}, 422, "invalid_field"),
    ],
)
def test_bad_enroll_fields(client: TestClient, fields: dict, status: int, code: str) -> None:
    r = client.post("/enroll", files={"image": ("f.png", fake_photo(8), "image/png")}, data=fields)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_missing_image_is_422(client: TestClient) -> None:
    r = client.post("/enroll", json={"subject_id": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    assert "image" in r.json()["error"]["message"]


def test_metadata_up_to_4kb_is_kept(client: TestClient) -> None:
    metadata = {"note": "n" * 4000}
    r = client.post(
        "/enroll",
        json={
            "image": base64.b64encode(fake_photo(9)).decode(),
            "subject_id": "meta",
            "metadata": metadata,
        },
    )
    assert r.status_code == 201
    assert client.get("/subjects/meta").json()["metadata"] == metadata


def test_subject_ids_with_slashes_and_unicode_round_trip(client: TestClient) -> None:
    for subject in ("org/42", "Zoë Ångström"):
        assert enroll(client, subject, fake_photo(10)).status_code == 201
        from urllib.parse import quote

        got = client.get("/subjects/" + quote(subject, safe=""))
        assert got.status_code == 200, got.text
        assert got.json()["subject_id"] == subject
