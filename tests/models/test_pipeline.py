"""The whole pipeline against dlib's whole pipeline (cnn detector -> 5 points -> descriptor).

This is the property users rely on: our embedding of a face in a photo is dlib's embedding of
that face, so dlib's published accuracy carries over.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest

from models.faces import Box
from models.imageio import decode_image
from models.pipeline import FacePipeline
from models.weights import dlib_model_path


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(device="cpu")


@pytest.fixture(scope="module")
def dlib_models():
    return (
        dlib.cnn_face_detection_model_v1(str(dlib_model_path("detector"))),
        dlib.shape_predictor(str(dlib_model_path("landmarks"))),
        dlib.face_recognition_model_v1(str(dlib_model_path("embedder"))),
    )


def _iou(a: Box, b: dlib.rectangle) -> float:
    il, it = max(a.left, b.left()), max(a.top, b.top())
    ir, ib = min(a.right, b.right()), min(a.bottom, b.bottom())
    inter = max(0, ir - il + 1) * max(0, ib - it + 1)
    union = a.area + (b.width() * b.height()) - inter
    return inter / union


def _dlib_faces(img: np.ndarray, dlib_models) -> list[tuple[dlib.rectangle, np.ndarray]]:
    det, sp, rec = dlib_models
    out = []
    for d in det(img, 0):
        shape = sp(img, d.rect)
        v = np.asarray(rec.compute_face_descriptor(img, shape), dtype=np.float64)
        out.append((d.rect, v / np.linalg.norm(v)))
    return out


def _assert_same_faces(img: np.ndarray, pipeline: FacePipeline, dlib_models) -> int:
    """Every dlib face is found by us (IoU >= 0.9) with embedding cosine >= 0.99."""
    ours = pipeline.embed_image(img)
    theirs = _dlib_faces(img, dlib_models)
    assert len(ours) == len(theirs)
    for rect, ref in theirs:
        best = max(ours, key=lambda f: _iou(f.box, rect))
        assert _iou(best.box, rect) >= 0.9
        assert best.embedding is not None
        assert float(best.embedding @ ref) >= 0.99
    return len(theirs)


def test_astronaut_matches_dlib_pipeline(astronaut, pipeline, dlib_models):
    assert _assert_same_faces(astronaut, pipeline, dlib_models) == 1


def _real_photos(root: Path) -> list[Path]:
    people = sorted((root / "people").glob("*/**/*.jpg"))
    detect = sorted((root / "detect").glob("2008_*.jpg"))[:3]
    lfw = sorted((root / "lfw" / "lfw-deepfunneled").glob("A*/*_0001.jpg"))[:8]
    return people + detect + lfw


def test_real_photos_match_dlib_pipeline(shared_data, pipeline, dlib_models):
    total = 0
    photos = _real_photos(shared_data)
    assert len(photos) >= 15
    for path in photos:
        img = decode_image(path.read_bytes())
        if max(img.shape[:2]) > pipeline.max_side:
            continue  # we shrink huge photos before detection; dlib does not
        total += _assert_same_faces(img, pipeline, dlib_models)
    assert total >= 20, "the photos should hold at least 20 faces between them"


def test_embed_batches_across_images(astronaut, pipeline):
    """Embedding two images at once gives the same vectors as one at a time."""
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    together = pipeline.embed([astronaut, mirrored])
    alone = [pipeline.embed_image(astronaut), pipeline.embed_image(mirrored)]
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b) == 1
        assert np.allclose(a[0].embedding, b[0].embedding, atol=1e-5)
        assert a[0].model == "dlib-resnet-v1"
        assert a[0].chip is not None and a[0].chip.shape == (150, 150, 3)


def test_no_face_gives_empty_list(pipeline):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    assert pipeline.embed_image(noise) == []
    assert pipeline.embed([]) == []


def test_max_faces_keeps_most_confident(shared_data, pipeline):
    img = decode_image((shared_data / "people" / "test" / "obama_and_biden.jpg").read_bytes())
    faces = pipeline.embed_image(img)
    assert len(faces) >= 2  # Obama, Biden (and a face in the background)
    confidences = [f.confidence for f in faces]
    assert confidences == sorted(confidences, reverse=True)
    top = pipeline.embed_image(img, max_faces=2)
    assert [f.box for f in top] == [f.box for f in faces[:2]]


def test_greyscale_input_is_accepted(astronaut, pipeline):
    grey = astronaut.mean(axis=2).astype(np.uint8)
    faces = pipeline.embed_image(grey)
    assert len(faces) == 1
    colour = pipeline.embed_image(astronaut)[0]
    # Same person, different rendering: still far above any impostor similarity.
    assert float(faces[0].embedding @ colour.embedding) > 0.9


def test_rejects_wrong_input(pipeline):
    with pytest.raises(ValueError):
        pipeline.embed_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        pipeline.embed_chips(np.zeros((2, 100, 100, 3), dtype=np.uint8))
