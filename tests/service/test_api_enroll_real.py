"""Several photos per person and the duplicate check, with the real pipeline on real photos.

The fake pipeline's embeddings are identical for one person and unrelated otherwise; here the
check meets real ones: another photo of an enrolled person under a new id must be flagged
with that person's name, different people must not be, and a person's own photos enrolled
together must all be stored without flagging each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.service.conftest import wait_ready

pytestmark = pytest.mark.slow


def part(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (path.name, path.read_bytes(), "image/jpeg"))


@pytest.fixture(scope="module")
def real(face_pipeline: Any, people: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("enroll-real"))
    app = create_app(settings, pipeline_factory=lambda s: face_pipeline)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_a_persons_photos_in_one_request_and_duplicates_under_other_ids(
    real: TestClient, people: Path
) -> None:
    train = people / "train"
    # Two photos each of two people, one request per person: all stored, nobody flagged.
    for subject, photos in (("obama", ["obama/obama.jpg", "obama/obama2.jpg"]),
                            ("biden", ["biden/biden.jpg", "biden/biden2.jpg"])):
        r = real.post("/enroll", data={"subject_id": subject, "on_duplicate": "reject"},
                      files=[part(train / p) for p in photos])
        assert r.status_code == 201, r.text
        outcomes = r.json()["images"]
        assert [o["status"] for o in outcomes] == ["enrolled", "enrolled"], outcomes
        assert all(o["possible_duplicate"] is None for o in outcomes), outcomes
    threshold = r.json()["threshold"]

    # The same photo under a second name: flagged, naming the first subject (warn: stored).
    r = real.post("/enroll", data={"subject_id": "barack"},
                  files={"image": ("o.jpg", (train / "obama/obama.jpg").read_bytes())})
    assert r.status_code == 201, r.text
    duplicate = r.json()["possible_duplicate"]
    assert duplicate["subject_id"] == "obama"
    assert duplicate["similarity"] == pytest.approx(1.0, abs=1e-4)

    # Another photo of him, never enrolled, under a third name with reject: 409 naming him.
    other = people / "test/obama1.jpg"
    r = real.post("/enroll", data={"subject_id": "b-obama", "on_duplicate": "reject"},
                  files={"image": ("o1.jpg", other.read_bytes())})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "duplicate_face"
    match = error["details"][0]["possible_duplicate"]
    assert match["subject_id"] in {"obama", "barack"} and match["similarity"] >= threshold
    assert real.get("/subjects/b-obama").status_code == 404

    # A different person is not a duplicate of either.
    r = real.post("/enroll", data={"subject_id": "kit", "on_duplicate": "reject"},
                  files=[part(train / "kit_harington/john1.jpeg"),
                         part(train / "kit_harington/john2.jpeg")])
    assert r.status_code == 201, r.text
    assert [o["possible_duplicate"] for o in r.json()["images"]] == [None, None]


def test_rose_is_enrolled_from_the_photo_where_kit_is_larger(
    real: TestClient, people: Path
) -> None:
    """Issue 20's receptionist: ``kit_with_rose.jpg`` shows Kit larger (the primary face);
    Rose is enrolled from it by naming her face, and then verifies against her own portrait
    while Kit's does not. Verify's ``any`` finds her in the two-person photo too."""
    group = people / "test" / "kit_with_rose.jpg"
    photo = {"image": (group.name, group.read_bytes(), "image/jpeg")}
    faces = real.post("/embed", files=photo).json()["faces"]
    assert len(faces) == 2
    primary = real.post("/enroll", files=photo, data={"subject_id": "kit-from-group"}).json()
    other = next(i for i, f in enumerate(faces) if f["bbox"] != primary["bbox"])
    r = real.post("/enroll", files=photo, data={"subject_id": "rose-from-group",
                                                "face": f'{{"index": {other}}}'})
    assert r.status_code == 201, r.text
    assert r.json()["bbox"] == faces[other]["bbox"]
    r = real.post("/enroll", files=photo, data={
        "subject_id": "rose-by-box", "face": '{"box": %s}' % [
            faces[other]["bbox"][k] for k in ("left", "top", "right", "bottom")]})
    assert r.status_code == 201 and r.json()["bbox"] == faces[other]["bbox"], r.text

    def verify(portrait: str, subject: str, **fields: str) -> dict[str, Any]:
        path = people / portrait
        r = real.post("/verify", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                      data={"subject_id": subject, **fields})
        assert r.status_code == 200, r.text
        return r.json()

    rose, kit = "train/rose_leslie/img1.jpg", "train/kit_harington/john1.jpeg"
    assert verify(rose, "rose-from-group")["match"] is True
    assert verify(kit, "rose-from-group")["match"] is False
    assert verify(kit, "kit-from-group")["match"] is True
    # The group photo against Rose: the primary face (Kit) does not match, `any` finds her.
    real.post("/enroll", files={"image": ("r.jpg", (people / rose).read_bytes(), "image/jpeg")},
              data={"subject_id": "rose-portrait"})
    r = real.post("/verify", files=photo, data={"subject_id": "rose-portrait"}).json()
    assert r["match"] is False
    r = real.post("/verify", files=photo,
                  data={"subject_id": "rose-portrait", "on_multiple": "any"}).json()
    assert r["match"] is True and r["faces"][0]["bbox"] == faces[other]["bbox"]
    print(f"rose in the group photo against her portrait: {r['similarity']:.3f}")
