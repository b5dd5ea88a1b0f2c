"""Verify, identify and embed over the HTTP layer (fake pipeline: exact, known similarities)."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.routes.common import encode_embedding
from tests.service.conftest import AppFactory, FakePipeline, fake_embedding, fake_photo


def png(photo: bytes, name: str = "p.png") -> tuple[str, bytes, str]:
    return (name, photo, "image/png")


def enroll(client: TestClient, subject: str, photo: bytes) -> dict:
    r = client.post("/enroll", files={"image": png(photo)}, data={"subject_id": subject})
    assert r.status_code == 201, r.text
    return r.json()


def b64(photo: bytes) -> str:
    return base64.b64encode(photo).decode()


# ---------------------------------------------------------------- verify


def test_verify_two_images_of_the_same_person(client: TestClient) -> None:
    r = client.post("/verify", files={"image_a": png(fake_photo(1)),
                                      "image_b": png(fake_photo(1, variant=5))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["match"] is True
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert body["distance"] == pytest.approx(0.0, abs=1e-5)
    assert body["operating_point"]["source"] == "setting"
    assert body["threshold"] == body["operating_point"]["threshold"]
    assert [f["source"] for f in body["faces"]] == ["image_a", "image_b"]
    assert body["faces"][0]["faces_detected"] == 1 and body["faces"][0]["bbox"]["left"] == 10


def test_verify_two_different_people_json(client: TestClient) -> None:
    r = client.post("/verify", json={"image_a": b64(fake_photo(1)), "image_b": b64(fake_photo(2))})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = float(fake_embedding(1) @ fake_embedding(2))
    assert body["similarity"] == pytest.approx(expected, abs=1e-5)
    assert body["distance"] == pytest.approx(2 - 2 * expected, abs=1e-5)
    assert body["match"] is False


def test_verify_uses_the_largest_face_of_each_photo(client: TestClient) -> None:
    # Face index 1 is the larger of two; the same index in another photo of person 3 matches.
    r = client.post("/verify", files={"image_a": png(fake_photo(3, faces=2)),
                                      "image_b": png(fake_photo(3, faces=2, variant=1))})
    body = r.json()
    assert body["match"] is True and body["faces"][0]["faces_detected"] == 2
    assert body["faces"][0]["bbox"]["left"] == 110


def test_verify_against_a_subject_takes_the_best_template(client: TestClient) -> None:
    enroll(client, "eve", fake_photo(4))  # face index 0 of person 4
    best = enroll(client, "eve", fake_photo(4, faces=2))  # largest: face index 1 of person 4
    probe = fake_photo(4, faces=2, variant=9)
    r = client.post("/verify", files={"image": png(probe)}, data={"subject_id": "eve"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["match"] is True and body["templates_compared"] == 2
    assert body["faces"][1] == {**body["faces"][1], "source": "template", "subject_id": "eve",
                                "face_id": best["face_id"]}
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_a_request_threshold_overrides_and_is_reported(client: TestClient) -> None:
    r = client.post("/verify", json={"image_a": b64(fake_photo(1)), "image_b": b64(fake_photo(2)),
                                     "threshold": -1.0})
    body = r.json()
    assert body["match"] is True and body["threshold"] == -1.0
    assert body["operating_point"] == {**body["operating_point"], "source": "request"}


def test_verify_batches_both_images_into_one_pass(make_client: AppFactory) -> None:
    pipe = FakePipeline()
    # A batch closes when 2 faces are in: both images of one verify land in the same pass.
    client = make_client(pipe, batch_max_size=2, batch_max_wait_ms=60_000)
    pipe.embed_calls.clear()
    r = client.post("/verify", files={"image_a": png(fake_photo(1)), "image_b": png(fake_photo(2))})
    assert r.status_code == 200
    assert pipe.embed_calls == [2]


# ---------------------------------------------------------------- identify


@pytest.fixture
def gallery_client(client: TestClient) -> TestClient:
    """Subjects p1..p6, one template each; p1 has a second template (face index 1)."""
    for person in range(1, 7):
        enroll(client, f"p{person}", fake_photo(person))
    enroll(client, "p1", fake_photo(1, faces=2))
    return client


def test_identify_a_photo_finds_each_face(gallery_client: TestClient) -> None:
    r = gallery_client.post("/identify", files={"image": png(fake_photo(2, variant=3))},
                            data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces_detected"] == 1 and len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["match"]["subject_id"] == "p2"
    assert face["candidates"][0] == face["match"]
    assert face["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert len(face["candidates"]) == 3
    sims = [c["similarity"] for c in face["candidates"]]
    assert sims == sorted(sims, reverse=True)


def test_identify_groups_candidates_by_subject(gallery_client: TestClient) -> None:
    # p1 has two templates; it must appear once, with its best face, and k subjects are filled.
    emb = encode_embedding(fake_embedding(1, 1))
    r = gallery_client.get("/identify", params={"embedding": emb, "k": 6})
    body = r.json()
    subjects = [c["subject_id"] for c in body["candidates"]]
    assert len(subjects) == len(set(subjects)) == 6
    assert subjects[0] == "p1" and body["match"]["subject_id"] == "p1"
    assert body["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_identify_a_never_enrolled_person_has_no_match(gallery_client: TestClient) -> None:
    r = gallery_client.post("/identify", json={"image": b64(fake_photo(99)), "k": 2})
    face = r.json()["faces"][0]
    assert face["match"] is None
    assert len(face["candidates"]) == 2  # the nearest subjects are still listed


def test_identify_every_face_up_to_max_faces(gallery_client: TestClient) -> None:
    photo = fake_photo(5, faces=3)
    body = gallery_client.post("/identify", files={"image": png(photo)}).json()
    assert body["faces_detected"] == 3 and len(body["faces"]) == 3
    # Most confident first; face 0 of person 5 is the enrolled template of p5.
    assert body["faces"][0]["match"]["subject_id"] == "p5"
    assert body["faces"][1]["match"] is None
    body = gallery_client.post("/identify", files={"image": png(photo)},
                               data={"max_faces": "1"}).json()
    assert body["faces_detected"] == 3 and len(body["faces"]) == 1


def test_server_max_faces_caps_the_request(make_client: AppFactory) -> None:
    client = make_client(max_faces=2)
    body = client.post("/identify", files={"image": png(fake_photo(1, faces=4))},
                       data={"max_faces": "10"}).json()
    assert body["faces_detected"] == 4 and len(body["faces"]) == 2


def test_identify_by_stored_face_leaves_that_face_out(gallery_client: TestClient) -> None:
    faces = gallery_client.get("/subjects/p1").json()["faces"]
    first = next(f for f in faces if f["bbox"]["left"] == 10)
    body = gallery_client.get("/identify", params={"face_id": first["face_id"], "k": 3}).json()
    ids = [c["face_id"] for c in body["candidates"]]
    assert first["face_id"] not in ids
    assert len(body["candidates"]) == 3


def test_identify_an_empty_gallery(client: TestClient) -> None:
    body = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(1))}).json()
    assert body["candidates"] == [] and body["match"] is None


def test_a_photo_without_faces_identifies_nothing(gallery_client: TestClient) -> None:
    body = gallery_client.post("/identify", files={"image": png(fake_photo(1, faces=0))}).json()
    assert body == {**body, "faces": [], "faces_detected": 0}


def test_embedding_from_embed_feeds_identify(gallery_client: TestClient) -> None:
    r = gallery_client.post("/embed", files={"image": png(fake_photo(3, variant=7))})
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    assert len(face["embedding"]) == 128
    assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(face["embedding"], fake_embedding(3), atol=1e-6)
    body = gallery_client.get("/identify", params={"embedding": face["embedding_b64"]}).json()
    assert body["match"]["subject_id"] == "p3"


def test_embed_every_face_in_json(client: TestClient) -> None:
    body = client.post("/embed", json={"image": b64(fake_photo(8, faces=3)), "max_faces": 2}).json()
    assert body["faces_detected"] == 3 and len(body["faces"]) == 2
    assert body["model"] == "fake-v1"
    assert body["faces"][0]["detection_confidence"] > body["faces"][1]["detection_confidence"]


# ---------------------------------------------------------------- operating points


def write_profile(path: Path, model: str = "fake-v1") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": model, "dataset": "lfw-view2", "created_at": "2025-01-01T00:00:00Z",
        "metric": "cosine",
        "operating_points": [
            {"far": 0.01, "threshold": 0.1, "tar": 0.99, "impostor_pairs": 3000},
            {"far": 0.001, "threshold": 0.3, "tar": 0.97, "impostor_pairs": 3000},
        ],
        "notes": ["FAR 1e-4 omitted: too few impostor pairs"],
    }))


def test_a_far_operating_point_comes_from_the_profile(make_client: AppFactory,
                                                      tmp_path: Path) -> None:
    data_dir = tmp_path / "with-profile"
    write_profile(data_dir / "operating_points.json")
    client = make_client(data_dir=data_dir, threshold="far=1e-3")
    r = client.post("/verify", json={"image_a": b64(fake_photo(1)), "image_b": b64(fake_photo(1))})
    body = r.json()
    assert body["threshold"] == 0.3
    assert body["operating_point"] == {
        "threshold": 0.3, "source": "profile", "far": 0.001, "tar": 0.97,
        "profile": str(data_dir / "operating_points.json"), "dataset": "lfw-view2",
        "fpir": None, "gallery_faces": None, "impostor_subjects": None, "reference": None,
    }
    enroll(client, "x", fake_photo(1))
    body = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(1))}).json()
    assert body["operating_point"]["far"] == 0.001


# ---------------------------------------------------------------- off the event loop


class GatedPipeline(FakePipeline):
    """Detection waits for the test: a request can be held inside the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list:
        self.entered.set()
        assert self.release.wait(60)
        return super().detect(image)


@pytest.mark.timeout(120)
def test_inference_runs_off_the_event_loop(make_client: AppFactory) -> None:
    pipe = GatedPipeline()
    client = make_client(pipe)
    pipe.release.set()  # let one enrollment through
    enroll(client, "p1", fake_photo(1))
    pipe.release.clear()
    pipe.entered.clear()
    held: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: held.update(r=client.post("/embed", files={"image": png(fake_photo(2))}))
    )
    worker.start()
    try:
        assert pipe.entered.wait(60)
        # Detection is blocked inside the pipeline; the loop must still answer other requests,
        # searches included (a detection on the loop would hang these until the timeout).
        assert client.get("/healthz").status_code == 200
        body = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(1))})
        assert body.json()["match"]["subject_id"] == "p1"
        assert "r" not in held
    finally:
        pipe.release.set()
        worker.join(60)
    assert held["r"].status_code == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/embed", "/identify"])
def test_min_face_px_reaches_the_detector(client: TestClient, path: str) -> None:
    """The request field is passed through: the fake detector's faces are 40, 60 and 80 px,
    and min_face_px=60 keeps the two that are at least that wide."""
    photo = {"image": ("p.png", fake_photo(person=1, faces=3), "image/png")}
    everything = client.post(path, files=photo)
    assert everything.status_code == 200, everything.text
    assert len(everything.json()["faces"]) == 3
    some = client.post(path, files=photo, data={"min_face_px": "60"})
    assert some.status_code == 200, some.text
    widths = sorted(f["bbox"]["right"] - f["bbox"]["left"] + 1 for f in some.json()["faces"])
    assert widths == [60, 80]


def test_post_identify_search_answers_as_get(gallery_client: TestClient) -> None:
    """The embedding (or face id) in a JSON body gives GET /identify's answer, so templates
    can stay out of URLs; exactly one of the two is required."""
    face = gallery_client.post(
        "/embed", files={"image": png(fake_photo(3, variant=7))}).json()["faces"][0]
    by_get = gallery_client.get("/identify", params={"embedding": face["embedding_b64"], "k": 3})
    by_post = gallery_client.post("/identify/search",
                                  json={"embedding": face["embedding_b64"], "k": 3})
    assert by_post.status_code == 200, by_post.text
    assert by_post.json() == by_get.json()
    assert by_post.json()["match"]["subject_id"] == "p3"
    stored = by_post.json()["match"]["face_id"]
    r = gallery_client.post("/identify/search", json={"face_id": stored})
    assert r.status_code == 200 and r.json() == gallery_client.get(
        "/identify", params={"face_id": stored}).json()
    for bad in ({}, {"face_id": stored, "embedding": face["embedding_b64"]}, {"k": 0,
                "face_id": stored}, {"face_id": stored, "surprise": 1}):
        r = gallery_client.post("/identify/search", json=bad)
        assert r.status_code == 422, (bad, r.text)
