"""POST /enroll over the HTTP layer (fake pipeline): both encodings, faces, idempotency,
several photos in one request, and the duplicate check."""

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


def test_subject_ids_with_unicode_and_url_characters_round_trip(client: TestClient) -> None:
    # "/" is refused in new ids (issue 20; tests/service/test_api_subjects.py); the other
    # characters a URL gives meaning to are plain characters of an id.
    for subject in ("org:42?x=1#top", "Zoë Ångström", "50% off"):
        assert enroll(client, subject, fake_photo(10)).status_code == 201
        from urllib.parse import quote

        got = client.get("/subjects/" + quote(subject, safe=""))
        assert got.status_code == 200, got.text
        assert got.json()["subject_id"] == subject


# ---------------------------------------------------------------- several photos, duplicates


def enroll_many(client: TestClient, subject: str, photos: list[bytes], **fields: str):
    parts = [("images", (f"p{i}.png", photo, "image/png")) for i, photo in enumerate(photos)]
    return client.post("/enroll", files=parts, data={"subject_id": subject, **fields})


def b64(photo: bytes) -> str:
    return base64.b64encode(photo).decode()


def audit_enrolls(client: TestClient) -> list[tuple[str, str, bool]]:
    """Faces stored or replayed: ``enroll`` (new subject) and ``add_face`` events."""
    events = client.get("/audit").json()["events"]
    return [(e["subject_id"], e["face_id"], e["detail"]["created"]) for e in events
            if e["action"] in ("enroll", "add_face")]


def test_several_photos_in_one_multipart_request(client: TestClient) -> None:
    r = enroll_many(client, "fay", [fake_photo(11, variant=v) for v in range(3)],
                    metadata=json.dumps({"team": "red"}))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["subject_id"] == "fay" and body["model"] == "fake-v1"
    assert (body["enrolled"], body["created"], body["rejected"]) == (3, 3, 0)
    assert [o["index"] for o in body["images"]] == [0, 1, 2]
    assert [o["status"] for o in body["images"]] == ["enrolled"] * 3
    ids = [o["face_id"] for o in body["images"]]
    assert len(set(ids)) == 3
    assert all(o["possible_duplicate"] is None and o["error"] is None for o in body["images"])
    assert body["images"][0]["bbox"] == {"left": 10, "top": 20, "right": 49, "bottom": 59}
    subject = client.get("/subjects/fay").json()
    assert sorted(f["face_id"] for f in subject["faces"]) == sorted(ids)
    assert subject["metadata"] == {"team": "red"}
    # Each stored face is audited exactly as a single enrollment is.
    assert sorted(audit_enrolls(client)) == sorted(("fay", i, True) for i in ids)


def test_several_photos_in_one_json_request(client: TestClient) -> None:
    photos = [b64(fake_photo(12, variant=v)) for v in range(2)]
    r = client.post("/enroll", json={"images": photos, "subject_id": "gus", "metadata": {"a": 1}})
    assert r.status_code == 201, r.text
    assert [o["status"] for o in r.json()["images"]] == ["enrolled", "enrolled"]
    assert client.get("/subjects/gus").json()["face_count"] == 2


def test_one_bad_photo_does_not_stop_the_others(client: TestClient) -> None:
    photos = [fake_photo(13), b"this is not an image", fake_photo(13, variant=1),
              fake_photo(13, faces=0), fake_photo(13, faces=2, variant=2)]
    r = enroll_many(client, "hal", photos, on_multiple="reject")
    assert r.status_code == 201, r.text
    body = r.json()
    assert [o["status"] for o in body["images"]] == [
        "enrolled", "rejected", "enrolled", "rejected", "rejected"]
    assert [o["error"] and o["error"]["code"] for o in body["images"]] == [
        None, "not_an_image", None, "no_face", "multiple_faces"]
    assert body["images"][1]["face_id"] is None and body["images"][1]["faces_detected"] is None
    assert body["images"][3]["faces_detected"] == 0
    assert all(o["error"]["message"] for o in body["images"] if o["error"])
    assert (body["enrolled"], body["created"], body["rejected"]) == (2, 2, 3)
    stored = {f["face_id"] for f in client.get("/subjects/hal").json()["faces"]}
    assert stored == {body["images"][0]["face_id"], body["images"][2]["face_id"]}
    # In JSON, a photo that is not even base64 is one more rejected photo.
    r = client.post("/enroll", json={"subject_id": "hal",
                                     "images": ["%%%not base64", b64(fake_photo(13, variant=3))]})
    assert r.status_code == 201, r.text
    assert [o["error"] and o["error"]["code"] for o in r.json()["images"]] == [
        "invalid_base64", None]
    assert client.get("/subjects/hal").json()["face_count"] == 3


def test_when_no_photo_is_enrolled_the_error_lists_every_outcome(client: TestClient) -> None:
    # Different reasons: 422 nothing_enrolled.
    r = enroll_many(client, "ivy", [b"garbage", fake_photo(14, faces=0)])
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "nothing_enrolled"
    assert [d["status"] for d in error["details"]] == ["rejected", "rejected"]
    assert [d["error"]["code"] for d in error["details"]] == ["not_an_image", "no_face"]
    # The same reason for all: that reason's own status and code.
    r = enroll_many(client, "ivy", [fake_photo(14, faces=0), fake_photo(14, faces=0, variant=1)])
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face"
    assert len(r.json()["error"]["details"]) == 2
    r = client.post("/enroll", json={"subject_id": "ivy", "images": [b64(b"x" * 100)]})
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
    assert r.json()["error"]["details"][0]["error"]["code"] == "not_an_image"
    assert client.get("/subjects/ivy").status_code == 404


def test_the_same_face_under_another_name_is_reported_as_a_duplicate(client: TestClient) -> None:
    first = enroll(client, "jan", fake_photo(15))
    assert first.status_code == 201 and first.json()["possible_duplicate"] is None
    # Other bytes, same person (the fake embedding depends on the person only).
    r = enroll(client, "janet", fake_photo(15, variant=1))
    assert r.status_code == 201, r.text  # on_duplicate=warn (default): enrolled and reported
    duplicate = r.json()["possible_duplicate"]
    assert duplicate["subject_id"] == "jan" and duplicate["face_id"] == first.json()["face_id"]
    assert duplicate["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert client.get("/subjects/janet").json()["face_count"] == 1
    # The batch form reports it per photo; a stranger in the same batch is not flagged.
    r = client.post("/enroll", json={"subject_id": "kim", "images": [
        b64(fake_photo(15, variant=2)), b64(fake_photo(16))]})
    assert r.status_code == 201, r.text
    outcomes = r.json()["images"]
    assert outcomes[0]["status"] == "enrolled"
    assert outcomes[0]["possible_duplicate"]["subject_id"] in {"jan", "janet"}
    assert outcomes[1]["possible_duplicate"] is None
    assert r.json()["threshold"] == r.json()["operating_point"]["threshold"]


def test_more_photos_of_the_same_subject_are_not_duplicates(client: TestClient) -> None:
    assert enroll(client, "lee", fake_photo(17)).status_code == 201
    r = enroll(client, "lee", fake_photo(17, variant=1), on_duplicate="reject")
    assert r.status_code == 201 and r.json()["possible_duplicate"] is None
    # Within one request the photos are the claimed same person: none flags another.
    r = enroll_many(client, "max", [fake_photo(18, variant=v) for v in range(3)],
                    on_duplicate="reject")
    assert r.status_code == 201
    assert all(o["status"] == "enrolled" and o["possible_duplicate"] is None
               for o in r.json()["images"])


def test_on_duplicate_reject_refuses_the_photo(client: TestClient) -> None:
    original = enroll(client, "ned", fake_photo(19)).json()["face_id"]
    r = enroll(client, "ted", fake_photo(19, variant=1), on_duplicate="reject")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "duplicate_face"
    assert "'ned'" in error["message"] and "similarity 1.000" in error["message"]
    [detail] = error["details"]
    assert detail["status"] == "rejected" and detail["face_id"] is None
    assert detail["possible_duplicate"]["subject_id"] == "ned"
    assert detail["possible_duplicate"]["face_id"] == original
    assert client.get("/subjects/ted").status_code == 404
    # In a batch only that photo is refused; the others are enrolled.
    r = client.post("/enroll", json={"subject_id": "ted", "on_duplicate": "reject", "images": [
        b64(fake_photo(19, variant=2)), b64(fake_photo(20))]})
    assert r.status_code == 201, r.text
    outcomes = r.json()["images"]
    assert outcomes[0]["status"] == "rejected"
    assert outcomes[0]["error"]["code"] == "duplicate_face"
    assert outcomes[0]["possible_duplicate"]["subject_id"] == "ned"
    assert outcomes[1]["status"] == "enrolled"
    assert client.get("/subjects/ted").json()["face_count"] == 1
    # Every photo a duplicate: 409 with each outcome.
    r = enroll_many(client, "uma", [fake_photo(19, variant=3), fake_photo(19, variant=4)],
                    on_duplicate="reject")
    assert r.status_code == 409 and len(r.json()["error"]["details"]) == 2
    bad = enroll(client, "uma", fake_photo(19, variant=3), on_duplicate="sometimes")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_field"


def test_too_many_photos_is_a_clear_422(make_client) -> None:
    client = make_client(max_enroll_images=3)
    photos = [fake_photo(21, variant=v) for v in range(6)]
    for n in (4, 6):  # multipart: the form parser stops at the 4th part; JSON: the route
        r = enroll_many(client, "ola", photos[:n])
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "too_many_images"
        assert "at most 3 images" in r.json()["error"]["message"]
        r = client.post("/enroll", json={"subject_id": "ola",
                                         "images": [b64(p) for p in photos[:n]]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_images"
    assert client.get("/subjects/ola").status_code == 404
    assert enroll_many(client, "ola", photos[:3]).status_code == 201


def test_the_body_limit_bounds_a_batch_as_a_whole(make_client) -> None:
    photos = [fake_photo(22, variant=v) for v in range(3)]
    client = make_client(max_upload_bytes=sum(map(len, photos)) + 1024)
    assert enroll_many(client, "pia", photos[:2]).status_code == 201
    r = enroll_many(client, "pia", [*photos, fake_photo(22, variant=9)])
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert client.get("/subjects/pia").json()["face_count"] == 2


def test_replaying_a_batch_creates_no_new_faces(client: TestClient) -> None:
    photos = [fake_photo(23, variant=v) for v in range(3)]
    first = enroll_many(client, "quin", [*photos, b"junk"])
    assert first.status_code == 201
    again = enroll_many(client, "quin", [*photos, b"junk"])
    assert again.status_code == 200, again.text
    body = again.json()
    assert [o["status"] for o in body["images"]] == ["already_enrolled"] * 3 + ["rejected"]
    assert [o["face_id"] for o in body["images"]] == [o["face_id"] for o in first.json()["images"]]
    assert (body["enrolled"], body["created"], body["rejected"]) == (3, 0, 1)
    assert client.get("/subjects/quin").json()["face_count"] == 3
    # Partly new: 201, only the new photo is created.
    r = enroll_many(client, "quin", [photos[0], fake_photo(23, variant=7)])
    assert r.status_code == 201
    assert [o["status"] for o in r.json()["images"]] == ["already_enrolled", "enrolled"]
    created = [c for _, _, c in audit_enrolls(client)]
    assert created.count(True) == 4 and created.count(False) == 4


def test_image_and_images_are_exclusive(client: TestClient) -> None:
    photo = b64(fake_photo(24))
    for body in ({"subject_id": "rex", "image": photo, "images": [photo]},
                 {"subject_id": "rex", "images": []},
                 {"subject_id": "rex"}):
        r = client.post("/enroll", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field", body
    r = client.post("/enroll", data={"subject_id": "rex"}, files=[
        ("image", ("a.png", fake_photo(24), "image/png")),
        ("image", ("b.png", fake_photo(24, variant=1), "image/png"))])
    assert r.status_code == 422 and "more than once" in r.json()["error"]["message"]
    assert client.get("/subjects/rex").status_code == 404


def test_duplicates_are_looked_for_only_in_the_keys_gallery(make_client) -> None:
    client = make_client(rate_limit_per_s=0)
    ring = client.app.state.services.keys
    _, mine = ring.create("mine", ["enroll"], None)
    _, theirs = ring.create("theirs", ["enroll"], "b")
    r = client.post("/enroll", data={"subject_id": "sam"}, headers={"X-API-Key": mine},
                    files={"image": ("p.png", fake_photo(25), "image/png")})
    assert r.status_code == 201
    r = client.post("/enroll", data={"subject_id": "tom", "on_duplicate": "reject"},
                    headers={"X-API-Key": theirs},
                    files={"image": ("p.png", fake_photo(25, variant=1), "image/png")})
    assert r.status_code == 201, r.text
    assert r.json()["possible_duplicate"] is None


def test_a_batch_reports_poor_quality_per_photo_and_force_overrides(make_client) -> None:
    client = make_client(enroll_min_eye_distance=1000.0)  # every face is too small
    r = enroll_many(client, "ann", [fake_photo(1), fake_photo(1, variant=1)])
    assert r.status_code == 422 and r.json()["error"]["code"] == "poor_quality"
    outcomes = r.json()["error"]["details"]
    assert [o["error"]["code"] for o in outcomes] == ["poor_quality", "poor_quality"]
    assert all(o["quality"]["eye_distance"] < 1000 for o in outcomes)
    r = enroll_many(client, "ann", [fake_photo(1), fake_photo(1, variant=1)], force="true")
    assert r.status_code == 201 and r.json()["created"] == 2
    assert all(o["quality"] is not None for o in r.json()["images"])
