"""`faceserve calibrate`: an impostor reference from the deployment's own strangers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.faces import Box, Face
from models.fpir import load_reference
from models.stranger_cohort import MIN_PEOPLE, cohort_photos, stranger_reference


class OneFacePipeline:
    """Every photo holds one face whose embedding is read from the photo's first pixel."""

    model_version = "dlib-resnet-v1"

    def embed_image(self, image: np.ndarray) -> list[Face]:
        rng = np.random.default_rng(int(image[0, 0, 0]))
        v = rng.normal(size=128)
        return [Face(Box(0, 0, 9, 9), 1.0, np.zeros((5, 2)), embedding=v / np.linalg.norm(v))]


def png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_sub_folders_are_people_and_loose_files_are_one_each(tmp_path: Path) -> None:
    png(tmp_path / "ann" / "1.png", 1)
    png(tmp_path / "ann" / "2.png", 2)
    png(tmp_path / "bob.png", 3)
    (tmp_path / "notes.txt").write_text("not a photo")
    assert [(p, f.name) for p, f in cohort_photos(tmp_path)] == [
        ("ann", "1.png"), ("ann", "2.png"), ("bob", "bob.png")]


def test_too_few_people_is_refused_with_the_reason(tmp_path: Path) -> None:
    for i in range(MIN_PEOPLE - 1):
        png(tmp_path / f"p{i}.png", i)
    with pytest.raises(ValueError, match=f"at least {MIN_PEOPLE}"):
        stranger_reference(OneFacePipeline(), cohort_photos(tmp_path), source="t",
                           progress=False)


def test_the_reference_keeps_the_cohorts_statistics_and_the_models_tail(tmp_path: Path) -> None:
    for i in range(30):
        png(tmp_path / f"p{i}.png", i)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rule, counts = stranger_reference(OneFacePipeline(), cohort_photos(tmp_path), source="lobby",
                                      progress=False)
    assert counts == {"photos": 31, "used": 30, "no_face": 0, "unreadable": 1}
    assert rule.reference.subjects == 30 and rule.reference.pairs == 30 * 29 // 2
    assert abs(rule.reference.mean) < 0.05  # random 128-d directions: about orthogonal
    assert rule.prior_subjects == 30
    shipped = load_reference("dlib-resnet-v1")
    assert shipped is not None and rule.tail.z == shipped.tail.z
    assert rule.tail.source.startswith("lobby")
    # what the service reads back
    out = tmp_path / "impostor_reference.json"
    out.write_text(json.dumps(rule.to_dict()))
    assert load_reference("dlib-resnet-v1", out).to_dict() == rule.to_dict()


@pytest.mark.slow
def test_calibrate_on_real_strangers_writes_what_the_service_uses(
    shared_data: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from models.pipeline import FacePipeline
    from service.api.app import create_app
    from service.config import Settings
    from tests.service.conftest import wait_ready

    lfw = shared_data / "lfw" / "lfw-deepfunneled"
    if not lfw.is_dir():
        pytest.skip(f"LFW not found at {lfw}")
    strangers = tmp_path / "strangers"
    singles = [d for d in sorted(lfw.iterdir()) if len(list(d.glob("*.jpg"))) == 1][:24]
    for d in singles:
        (strangers / d.name).mkdir(parents=True)
        (strangers / d.name / "a.jpg").symlink_to(next(d.glob("*.jpg")))
    pipeline = FacePipeline(device="cpu")
    rule, counts = stranger_reference(pipeline, cohort_photos(strangers), source="lfw24",
                                      progress=False)
    assert counts["used"] == 24
    shipped = load_reference("dlib-resnet-v1")
    assert shipped is not None
    # LFW strangers sit where LFW's reference says, within sampling error
    assert abs(rule.reference.mean - shipped.reference.mean) < 0.02
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "impostor_reference.json").write_text(json.dumps(rule.to_dict()))
    app = create_app(Settings(data_dir=data_dir), pipeline_factory=lambda s: pipeline)
    with TestClient(app) as client:
        wait_ready(client)
        emb = pipeline.embed_image(
            np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
                next(singles[0].glob("*.jpg"))).convert("RGB")))[0].embedding
        from service.api.routes.common import encode_embedding

        r = client.get("/identify", params={"embedding": encode_embedding(emb)})
        assert r.json()["operating_point"]["reference"].startswith("lfw24")
