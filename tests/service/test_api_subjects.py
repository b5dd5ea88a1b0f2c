"""Subject management over HTTP (issue 20): rename and metadata (PATCH), merge, a subject's
faces by page, ids with ``/`` (refused when new, reached with ``%2F`` when old), a subject
that loses its last face, explicit metadata replacement on enroll, and ``max_faces`` cuts
reported. Storage paths run on SQLite and on a fresh PostgreSQL schema; renames and merges
also reach a second replica's index through the change log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.cursors import encode_cursor
from service.api.routes.common import encode_embedding
from service.gallery.gallery import Gallery
from tests.service import postgres_util
from tests.service.conftest import AppFactory, fake_embedding, fake_photo


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, make_client: AppFactory) -> Iterator[TestClient]:
    """An app with the fake pipeline on SQLite or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield make_client(rate_limit_per_s=0)
        return
    with postgres_util.fresh_schema() as (url, _):
        client = make_client(rate_limit_per_s=0, database_url=url)
        yield client
        client.__exit__(None, None, None)  # before the schema is dropped


def png(data: bytes) -> tuple[str, bytes, str]:
    return ("p.png", data, "image/png")


def enroll(client: TestClient, subject: str, photo: bytes, status: int = 201,
           **fields: Any) -> dict[str, Any]:
    r = client.post("/enroll", files={"image": png(photo)}, data={"subject_id": subject, **fields})
    assert r.status_code == status, r.text
    return r.json()


def match_of(client: TestClient, person: int) -> str | None:
    r = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(person))})
    match = r.json()["match"]
    return None if match is None else match["subject_id"]


def listed(client: TestClient) -> list[str]:
    return [s["subject_id"] for s in client.get("/subjects").json()["subjects"]]


def audit(client: TestClient, action: str) -> list[dict[str, Any]]:
    return client.get("/audit", params={"action": action}).json()["events"]


# ---------------------------------------------------------------- PATCH: metadata and rename


def test_patch_replaces_metadata(api: TestClient) -> None:
    enroll(api, "rose", fake_photo(1), metadata='{"name": "Rose", "desk": 4}')
    r = api.patch("/subjects/rose", json={"metadata": {"name": "Rose Tyler"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"] == {"name": "Rose Tyler"} and body["metadata_replaced"] is True
    assert body["subject_id"] == "rose" and body.get("renamed_from") is None
    assert api.get("/subjects/rose").json()["metadata"] == {"name": "Rose Tyler"}
    [event] = audit(api, "update_subject")
    assert event["subject_id"] == "rose"
    assert event["detail"]["metadata_keys_before"] == ["desk", "name"]
    assert event["detail"]["metadata_keys_after"] == ["name"]
    assert "Rose Tyler" not in str(event)  # key names only, never the values
    assert api.patch("/subjects/rose", json={"metadata": {}}).json()["metadata"] == {}


def test_rename_moves_every_face_and_identify_follows(api: TestClient) -> None:
    faces = [enroll(api, "rose", fake_photo(1, faces=n))["face_id"] for n in (1, 2)]
    enroll(api, "kit", fake_photo(2))
    assert match_of(api, 1) == "rose"
    r = api.patch("/subjects/rose", json={"subject_id": "rose-tyler", "metadata": {"v": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subject_id"] == "rose-tyler" and body["renamed_from"] == "rose"
    assert body["faces_moved"] == 2 and body["face_count"] == 2 and body["metadata"] == {"v": 1}
    assert match_of(api, 1) == "rose-tyler"
    assert api.get("/subjects/rose").status_code == 404
    moved = api.get("/subjects/rose-tyler").json()
    assert sorted(f["face_id"] for f in moved["faces"]) == sorted(faces)  # face ids kept
    assert all(f["subject_id"] == "rose-tyler" for f in moved["faces"])
    assert api.get(f"/faces/{faces[0]}").json()["subject_id"] == "rose-tyler"
    assert sorted(listed(api)) == ["kit", "rose-tyler"]
    r = api.post("/verify", files={"image": png(fake_photo(1, variant=4))},
                 data={"subject_id": "rose-tyler"})
    assert r.status_code == 200 and r.json()["match"] is True
    [event] = audit(api, "rename_subject")
    assert event["subject_id"] == "rose-tyler"
    assert event["detail"]["renamed_from"] == "rose" and event["detail"]["faces_moved"] == 2


def test_renaming_onto_an_existing_id_is_409_and_points_to_merge(api: TestClient) -> None:
    enroll(api, "rose", fake_photo(1))
    enroll(api, "kit", fake_photo(2))
    r = api.patch("/subjects/rose", json={"subject_id": "kit", "metadata": {"x": 1}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "subject_exists"
    assert "/merge" in r.json()["error"]["message"]
    # Nothing happened, not even the metadata half of the request.
    assert api.get("/subjects/rose").json()["metadata"] == {}
    assert match_of(api, 1) == "rose" and match_of(api, 2) == "kit"
    assert audit(api, "rename_subject") == []


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 422, "invalid_field"),
    ({"subject_id": "a/b"}, 422, "invalid_field"),
    ({"subject_id": ""}, 422, "invalid_field"),
    ({"metadata": [1, 2]}, 422, "invalid_field"),
    ({"nickname": "r"}, 422, "invalid_field"),
])
def test_bad_patches_are_refused(
    api: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    enroll(api, "rose", fake_photo(1))
    r = api.patch("/subjects/rose", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert listed(api) == ["rose"]


def test_patching_an_unknown_subject_is_404(api: TestClient) -> None:
    r = api.patch("/subjects/nobody", json={"metadata": {"a": 1}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "subject_not_found"


# ---------------------------------------------------------------- merge


def test_merge_moves_faces_drops_duplicate_images_and_removes_the_source(
    api: TestClient,
) -> None:
    shared_photo = fake_photo(1, variant=7)
    keep = enroll(api, "rose", fake_photo(1), metadata='{"name": "Rose"}')["face_id"]
    enroll(api, "rose", shared_photo)
    moved = enroll(api, "rose-t", fake_photo(1, faces=2), metadata='{"old": true}')["face_id"]
    enroll(api, "rose-t", shared_photo)  # the same photo under both ids
    r = api.post("/subjects/rose-t/merge", json={"into": "rose"})
    assert r.status_code == 200, r.text
    assert r.json() == {"subject_id": "rose", "merged_subject_id": "rose-t", "faces_moved": 1,
                        "faces_dropped": 1, "face_count": 3}
    assert api.get("/subjects/rose-t").status_code == 404
    rose = api.get("/subjects/rose").json()
    assert rose["metadata"] == {"name": "Rose"}  # the receiving subject keeps its own
    assert {keep, moved} <= {f["face_id"] for f in rose["faces"]}
    assert listed(api) == ["rose"]
    r = api.get("/identify", params={"face_id": keep, "k": 10})
    assert {c["subject_id"] for c in r.json()["candidates"]} <= {"rose"}
    [event] = audit(api, "merge_subject")
    assert event["subject_id"] == "rose" and event["detail"] == {
        "merged_subject_id": "rose-t", "faces_moved": 1, "faces_dropped": 1}


def test_merge_errors(api: TestClient) -> None:
    enroll(api, "rose", fake_photo(1))
    r = api.post("/subjects/rose/merge", json={"into": "nobody"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "target_not_found"
    r = api.post("/subjects/nobody/merge", json={"into": "rose"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "subject_not_found"
    r = api.post("/subjects/rose/merge", json={"into": "rose"})
    assert r.status_code == 422
    r = api.post("/subjects/rose/merge", json={})
    assert r.status_code == 422
    assert listed(api) == ["rose"] and match_of(api, 1) == "rose"


# ---------------------------------------------------------------- the last face


def test_a_subject_goes_with_its_last_face_everywhere(api: TestClient) -> None:
    first = enroll(api, "kit", fake_photo(2))["face_id"]
    second = enroll(api, "kit", fake_photo(2, faces=2), metadata='{"a": 1}')["face_id"]
    r = api.delete(f"/faces/{first}")
    assert r.json()["subject_deleted"] is False and listed(api) == ["kit"]
    r = api.delete(f"/faces/{second}")
    assert r.status_code == 200 and r.json()["subject_deleted"] is True
    assert listed(api) == []
    assert api.get("/subjects/kit").status_code == 404
    assert api.get("/subjects/kit/faces").status_code == 404
    assert match_of(api, 2) is None
    r = api.post("/verify", files={"image": png(fake_photo(2))}, data={"subject_id": "kit"})
    assert r.status_code == 404
    assert api.get("/readyz").json()["gallery_subjects"] == 0
    [event] = [e for e in audit(api, "delete_face") if e["face_id"] == second]
    assert event["detail"] == {"subject_deleted": True}
    # Enrolling again starts a new subject: the old metadata did not survive.
    enroll(api, "kit", fake_photo(2))
    assert api.get("/subjects/kit").json()["metadata"] == {}


# ---------------------------------------------------------------- faces by page


def test_a_subjects_faces_page_by_page(api: TestClient) -> None:
    ids = [enroll(api, "rose", fake_photo(1, variant=v))["face_id"] for v in range(5)]
    enroll(api, "kit", fake_photo(2))
    seen: list[str] = []
    cursor = None
    cursors: list[str] = []
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = api.get("/subjects/rose/faces", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["faces"]) <= 2
        assert all(f["subject_id"] == "rose" for f in body["faces"])
        seen += [f["face_id"] for f in body["faces"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert seen == ids and pages == 3  # oldest first, each once
    assert len(cursors) == 2 and all("rose" not in c and c not in ids for c in cursors)


def test_face_pages_refuse_bad_cursors_and_unknown_subjects(api: TestClient) -> None:
    enroll(api, "rose", fake_photo(1))
    subjects_cursor = encode_cursor("subjects", "", "rose")  # another list's
    for bad in ("x", "f1.!!", "f1.LTE", "s1.cm9zZQ", subjects_cursor,
                encode_cursor("subject_faces", "", -1)):
        r = api.get("/subjects/rose/faces", params={"cursor": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", bad
    r = api.get("/subjects/nobody/faces")
    assert r.status_code == 404 and r.json()["error"]["code"] == "subject_not_found"


# ---------------------------------------------------------------- "/" in subject ids


def legacy(client: TestClient, subject_id: str, person: int) -> str:
    """A subject enrolled by an older version, which allowed "/" in ids."""
    gallery: Gallery = client.app.state.services.gallery  # type: ignore[attr-defined]
    record, _ = gallery.enroll(subject_id, fake_embedding(person), bbox=(0, 0, 9, 9),
                               landmarks=np.zeros((5, 2)), detection_confidence=1.0,
                               image_sha256=f"legacy-{person}")
    return record.face_id


def test_new_ids_with_a_slash_are_refused_with_a_clear_message(api: TestClient) -> None:
    r = api.post("/enroll", files={"image": png(fake_photo(1))}, data={"subject_id": "biden/x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    assert "must not contain '/'" in r.json()["error"]["message"]
    assert listed(api) == []


def test_old_ids_with_a_slash_work_through_encoded_paths(api: TestClient) -> None:
    """``biden/faces`` (an old id) and ``biden`` (with its faces sub-resource) coexist."""
    old = legacy(api, "biden/faces", 3)
    enroll(api, "biden", fake_photo(4))
    r = api.get("/subjects/biden%2Ffaces")
    assert r.status_code == 200, r.text
    assert r.json()["subject_id"] == "biden/faces" and r.json()["faces"][0]["face_id"] == old
    r = api.get("/subjects/biden/faces")  # the sub-resource of "biden"
    assert r.status_code == 200 and [f["subject_id"] for f in r.json()["faces"]] == ["biden"]
    r = api.get("/subjects/biden%2Ffaces/faces")
    assert [f["face_id"] for f in r.json()["faces"]] == [old]
    assert api.get("/subjects/biden%2ffaces").status_code == 200  # lower-case escape too
    # An existing id may still gain faces, keep being verified, and be renamed away.
    enroll(api, "biden/faces", fake_photo(3, variant=2))
    r = api.post("/verify", files={"image": png(fake_photo(3))},
                 data={"subject_id": "biden/faces"})
    assert r.status_code == 200 and r.json()["match"] is True
    r = api.patch("/subjects/biden%2Ffaces", json={"subject_id": "biden-2"})
    assert r.status_code == 200 and r.json()["renamed_from"] == "biden/faces"
    assert match_of(api, 3) == "biden-2"
    legacy(api, "a/b", 5)
    assert api.delete("/subjects/a%2Fb").json()["faces_deleted"] == 1
    assert sorted(listed(api)) == ["biden", "biden-2"]


def test_an_encoded_nul_is_not_a_slash(api: TestClient) -> None:
    legacy(api, "a/b", 5)
    r = api.get("/subjects/a%00b")
    assert r.status_code == 422, r.text


# ---------------------------------------------------------------- metadata on re-enrollment


def test_enroll_keeps_existing_metadata_unless_told_to_replace_it(api: TestClient) -> None:
    photo = fake_photo(1)
    body = enroll(api, "rose", photo, metadata='{"v": 1}')
    assert body["metadata_status"] == "set"
    again = enroll(api, "rose", photo, status=200, metadata='{"v": 2}')  # the same bytes
    assert again["created"] is False and again["face_id"] == body["face_id"]
    assert again["metadata_status"] == "kept"
    assert api.get("/subjects/rose").json()["metadata"] == {"v": 1}
    same = enroll(api, "rose", photo, status=200, metadata='{"v": 1}')
    assert same["metadata_status"] == "unchanged"
    replaced = enroll(api, "rose", photo, status=200, metadata='{"v": 3}',
                      replace_metadata="true")
    assert replaced["metadata_status"] == "replaced"
    assert api.get("/subjects/rose").json()["metadata"] == {"v": 3}
    assert enroll(api, "rose", fake_photo(1, variant=2)).get("metadata_status") is None
    flags = [e["detail"]["metadata_replaced"] for e in audit(api, "add_face")]
    assert flags == [False, False, True, False]


# ---------------------------------------------------------------- max_faces


@pytest.mark.parametrize("path", ["/identify", "/embed"])
def test_a_max_faces_cut_is_reported(make_client: AppFactory, path: str) -> None:
    client = make_client(max_faces=3)
    photo = png(fake_photo(1, faces=5))
    body = client.post(path, files={"image": photo}, data={"max_faces": "2"}).json()
    assert len(body["faces"]) == 2 and body["faces_detected"] == 5
    assert body["truncated"] is True and body["max_faces"] == 2
    body = client.post(path, files={"image": photo}).json()  # the server's cap
    assert len(body["faces"]) == 3 and body["truncated"] is True and body["max_faces"] == 3
    body = client.post(path, files={"image": png(fake_photo(1, faces=2))}).json()
    assert len(body["faces"]) == 2 and body["truncated"] is False


# ---------------------------------------------------------------- replicas


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Callable[[str], Gallery]]:
    opened: list[Gallery] = []
    with postgres_util.fresh_schema() as (url, _):
        def make(name: str) -> Gallery:
            g = Gallery.open(tmp_path / name, "m", database_url=url, follow=False)
            opened.append(g)
            return g

        yield make
        for g in opened:
            g.close()


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_replica_sees_renames_and_merges(shared: Callable[[str], Gallery]) -> None:
    a, b = shared("a"), shared("b")

    def add(subject: str, seed: int) -> None:
        a.enroll(subject, unit(seed), bbox=(0, 0, 9, 9), landmarks=np.zeros((5, 2)),
                 detection_confidence=1.0, image_sha256=f"img-{seed}")

    def top(g: Gallery, seed: int) -> str:
        return g.search(unit(seed)[None, :], 1)[0][0].subject_id

    for seed in range(4):
        add("rose" if seed < 2 else "kit", seed)
    b.catch_up()
    assert top(b, 0) == "rose"
    assert a.rename_subject("rose", "rose-tyler").faces_moved == 2
    assert top(a, 0) == "rose-tyler"  # this replica at once
    assert top(b, 0) == "rose"  # the other one after its catch-up
    b.catch_up()
    assert top(b, 0) == top(b, 1) == "rose-tyler"
    assert a.merge_subjects("kit", "rose-tyler").faces_moved == 2
    b.catch_up()
    assert {top(b, s) for s in range(4)} == {"rose-tyler"}
    assert (b.size, b.subject_count) == (4, 1)
    assert sorted(b._faces.items()) == sorted(a._faces.items())
