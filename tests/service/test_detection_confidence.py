"""``detection_confidence`` holds its documented range on real photos, through the HTTP API.

The API documents it as the detector's raw MMOD score: > 0 (``DETECTION_THRESHOLD``), no upper
bound, clear faces about 1 and above (``faceserve_client.models.DetectionConfidence``). Every
face the real pipeline reports on the shared photos (group photos with small and turned faces,
named people, one face at four resolutions, LFW) must be inside that range, in every response
that carries the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faceserve_client.models import DetectionConfidence
from fastapi.testclient import TestClient

from models.detector import DETECTION_THRESHOLD
from service.api.app import create_app
from service.config import Settings
from tests.service.conftest import wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_client(face_pipeline: Any, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("confidence"), max_faces=50)
    with TestClient(create_app(settings, pipeline_factory=lambda s: face_pipeline)) as client:
        wait_ready(client)
        yield client


def _photos(shared_data: Path) -> list[Path]:
    detect = sorted((shared_data / "detect").glob("*.jpg"))
    people = sorted((shared_data / "people").rglob("*.jp*g"))
    lfw = sorted((shared_data / "lfw" / "lfw-deepfunneled").glob("A*/*_0001.jpg"))[:8]
    return detect + people + lfw


def test_every_detection_confidence_is_in_the_documented_range(
    real_client: TestClient, shared_data: Path
) -> None:
    scores: list[float] = []
    for photo in _photos(shared_data):
        r = real_client.post("/v1/embed", files={"image": (photo.name, photo.read_bytes(),
                                                           "image/jpeg")})
        assert r.status_code == 200, (photo.name, r.text)
        for face in r.json()["faces"]:
            value = face["detection_confidence"]
            assert math.isfinite(value) and value > DETECTION_THRESHOLD, (photo.name, value)
            assert face["quality"]["detection_confidence"] == value
            scores.append(value)
    assert len(scores) > 40
    # The description promises values above 1 are normal, and that it is not a probability.
    assert max(scores) > 1.0
    assert "> 0" in DetectionConfidence.__metadata__[0].description
    print(f"\n{len(scores)} faces: detection_confidence min {min(scores):.3f}, "
          f"median {sorted(scores)[len(scores) // 2]:.3f}, max {max(scores):.3f}")


def test_enrolled_stored_and_verified_faces_report_the_same_score(
    real_client: TestClient, shared_data: Path
) -> None:
    photo = shared_data / "people" / "train" / "obama" / "obama.jpg"
    files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
    enrolled = real_client.post("/v1/enroll", files=files, data={"subject_id": "obama"})
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["detection_confidence"] > DETECTION_THRESHOLD
    stored = real_client.get(f"/v1/faces/{enrolled.json()['face_id']}").json()
    assert stored["detection_confidence"] == enrolled.json()["detection_confidence"]
    verify = real_client.post("/v1/verify", files=files, data={"subject_id": "obama"}).json()
    assert all(f["detection_confidence"] > DETECTION_THRESHOLD for f in verify["faces"])
