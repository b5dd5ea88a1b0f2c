"""``faceserve reembed``: a gallery moves to another model from its stored chips, on both stores.

The library tests use synthetic chips and a deterministic stand-in model (a fixed random
projection of the chip), so each stored embedding can be checked against what the model gives
for the decoded chip. The acceptance test at the end uses real photos, the real pipeline and
the real CLI: enroll with dlib's model, see the service refuse an exported model, re-embed,
and find every enrolled person again under the new model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.gallery.gallery import SNAPSHOT_NAME, Gallery, GalleryLocked, ModelMismatch
from service.gallery.reembed import (
    ReembedError,
    decode_chip,
    exclusive_store,
    plan_reembed,
    reembed,
)
from service.gallery.store import StoreError, open_store
from service.inference.inference import encode_jpeg
from tests.service import postgres_util

pytestmark = pytest.mark.timeout(300)

OLD, NEW = "old-model-v1", "new-model-v2"
NEW_DIM = 32
_PROJECTION = np.random.default_rng(7).standard_normal((15 * 15 * 3, NEW_DIM))


def new_model(chips: np.ndarray) -> np.ndarray:
    """The stand-in "new model": a fixed projection of the chip, L2-normalised."""
    x = chips[:, ::10, ::10, :].reshape(len(chips), -1).astype(np.float64) / 255.0
    v = x @ _PROJECTION
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def chip(seed: int) -> np.ndarray:
    """A smooth synthetic 150x150 chip (JPEG keeps smooth images close to the original)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:150, 0:150] / 150.0
    planes = [np.sin(rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy + rng.uniform(0, 6))
              for _ in range(3)]
    return (127 + 100 * np.stack(planes, axis=2)).astype(np.uint8)


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class Place:
    """Where a test gallery lives: a data dir, and a PostgreSQL URL for the shared store."""

    def __init__(self, data_dir: Path, url: str | None) -> None:
        self.data_dir, self.url = data_dir, url

    def gallery(self, model: str, dim: int = 128, **kwargs: Any) -> Gallery:
        return Gallery.open(self.data_dir, model, dim=dim, database_url=self.url, follow=False,
                            **kwargs)

    def exclusive(self) -> Any:
        return exclusive_store(self.data_dir, self.url)


@pytest.fixture(params=["sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "sqlite":
        yield Place(tmp_path / "gallery", None)
        return
    with postgres_util.fresh_schema("fs_reembed") as (url, _):
        yield Place(tmp_path / "gallery", url)


def enroll_faces(place: Place, n: int, *, with_chips: bool = True) -> dict[str, np.ndarray]:
    """``n`` faces of ``OLD`` (two per subject), chips stored; face id -> original chip."""
    chips = {}
    gallery = place.gallery(OLD)
    try:
        for i in range(n):
            c = chip(i)
            record, _ = gallery.enroll(
                f"subject-{i // 2}", unit(i), bbox=(0, 0, 99, 99), landmarks=[[1.0, 2.0]] * 5,
                detection_confidence=0.9, image_sha256=f"{i:064x}",
                chip_jpeg=encode_jpeg(c) if with_chips else None,
            )
            chips[record.face_id] = c
    finally:
        gallery.close()
    return chips


def stored(place: Place, model: str, dim: int) -> dict[str, Any]:
    """face id -> FaceRecord (with embedding) of a gallery that must open with ``model``."""
    gallery = place.gallery(model, dim)
    try:
        faces, cursor = {}, None
        while True:
            subjects, cursor = gallery.list_subjects(cursor, 100)
            for subject in subjects:
                faces.update({f.face_id: f for f in gallery.subject_faces(subject.subject_id)})
            if cursor is None:
                return faces
    finally:
        gallery.close()


# ---------------------------------------------------------------- the library, both stores


def test_every_embedding_is_recomputed_from_its_chip(place: Place) -> None:
    originals = enroll_faces(place, 7)
    with place.exclusive() as store:
        plan = plan_reembed(store, NEW)
        assert (plan.faces, plan.to_do, plan.without_chip) == (7, 7, [])
        result = reembed(store, new_model, NEW, dim=NEW_DIM, batch_size=3, progress=False)
    assert (result.reembedded, result.already) == (7, 0)
    assert result.models_before == {OLD: 7} and result.models_after == {NEW: 7}

    faces = stored(place, NEW, NEW_DIM)
    assert set(faces) == set(originals)
    with place.exclusive() as store:
        chips = {face_id: decode_chip(store.get_chip(face_id)) for face_id in faces}
    for face_id, record in faces.items():
        assert record.model == NEW
        expected = new_model(chips[face_id][None])[0]
        np.testing.assert_allclose(record.embedding, expected, atol=1e-6)
        # The stored JPEG (quality 95) is close to the chip that was enrolled.
        diff = np.abs(chips[face_id].astype(int) - originals[face_id].astype(int))
        assert diff.mean() < 2.0, diff.mean()

    # The re-embedded gallery serves the new model (and finds each face by its new vector)...
    gallery = place.gallery(NEW, NEW_DIM)
    try:
        for face_id, record in faces.items():
            assert gallery.search(record.embedding[None], 1)[0][0].face_id == face_id
    finally:
        gallery.close()
    # ... and refuses the old one.
    with pytest.raises(ModelMismatch, match=NEW):
        place.gallery(OLD)


def test_an_interrupted_run_is_refused_by_the_service_and_resumed(place: Place) -> None:
    enroll_faces(place, 6)

    class Crash(Exception):
        pass

    def crash_after_first(done: int) -> None:
        raise Crash(done)

    with place.exclusive() as store, pytest.raises(Crash):
        reembed(store, new_model, NEW, batch_size=2, progress=False,
                after_batch=crash_after_first)
    with place.exclusive() as store:
        # One committed batch, nothing of the next one.
        assert store.state().model_counts == {NEW: 2, OLD: 4}
    for model, dim in ((NEW, NEW_DIM), (OLD, 128)):
        with pytest.raises(ModelMismatch, match=r"interrupted `faceserve reembed`.*run it again"):
            place.gallery(model, dim)

    with place.exclusive() as store:
        result = reembed(store, new_model, NEW, batch_size=4, progress=False)
    assert (result.already, result.reembedded) == (2, 4)
    assert result.models_after == {NEW: 6}
    assert len(stored(place, NEW, NEW_DIM)) == 6


def test_faces_without_chips_are_refused_unless_deleted(place: Place) -> None:
    enroll_faces(place, 4)
    gallery = place.gallery(OLD, store_chips=False)
    try:
        bare, _ = gallery.enroll("no-chip", unit(99), bbox=(0, 0, 9, 9),
                                 landmarks=[[0.0, 0.0]] * 5, detection_confidence=0.5,
                                 image_sha256="f" * 64, chip_jpeg=encode_jpeg(chip(99)))
    finally:
        gallery.close()

    with place.exclusive() as store:
        with pytest.raises(ReembedError, match=rf"1 of the 5 faces .* {bare.face_id}"):
            reembed(store, new_model, NEW, progress=False)
        assert store.state().model_counts == {OLD: 5}  # nothing changed
        result = reembed(store, new_model, NEW, delete_without_chip=True, progress=False)
        assert (result.deleted_without_chip, result.reembedded) == (1, 4)
        assert store.get_face(bare.face_id) is None
        assert store.state().model_counts == {NEW: 4}


def test_a_bad_chip_names_its_face_and_commits_nothing_of_its_batch(place: Place) -> None:
    originals = enroll_faces(place, 4)
    victim = list(originals)[3]
    with place.exclusive() as store:
        store.set_embeddings([], NEW)  # a no-op write is fine
        # Damage one stored chip behind the store's back.
        if place.url is None:
            import sqlite3

            conn = sqlite3.connect(place.data_dir / "gallery.sqlite3")
            conn.execute("UPDATE faces SET chip = ? WHERE face_id = ?", (b"\xff\xd8junk", victim))
            conn.commit()
            conn.close()
        else:
            import psycopg

            with psycopg.connect(place.url) as conn:
                conn.execute("UPDATE faces SET chip = %s WHERE face_id = %s",
                             (b"\xff\xd8junk", victim))
        with pytest.raises(ReembedError, match=f"face {victim}: stored chip cannot be decoded"):
            reembed(store, new_model, NEW, batch_size=2, progress=False)
        assert store.state().model_counts == {NEW: 2, OLD: 2}


def test_the_gallery_is_held_exclusively(place: Place) -> None:
    enroll_faces(place, 2)
    serving = place.gallery(OLD)
    try:
        with pytest.raises((GalleryLocked, StoreError)), place.exclusive():
            pass
    finally:
        serving.close()
    if place.url is not None:
        # Another process's store (a replica elsewhere, no data-dir lock to meet) keeps it out...
        other = open_store(place.data_dir, place.url)
        try:
            with pytest.raises(StoreError, match="open in another faceserve process"):
                open_store(place.data_dir, place.url, exclusive=True)
        finally:
            other.close()
        # ... and while it runs, no replica can open the gallery.
        with place.exclusive(), pytest.raises(StoreError, match="being re-embedded"):
            open_store(place.data_dir, place.url)
        open_store(place.data_dir, place.url).close()
    else:
        with place.exclusive(), pytest.raises(GalleryLocked):
            place.gallery(OLD)


def test_a_missing_gallery_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ReembedError, match="no gallery in"), exclusive_store(tmp_path / "x", None):
        pass
    assert not (tmp_path / "x").exists()


def test_the_old_index_snapshot_is_removed(tmp_path: Path) -> None:
    place = Place(tmp_path / "gallery", None)
    enroll_faces(place, 3)
    assert (place.data_dir / SNAPSHOT_NAME).is_file()  # written at close
    with place.exclusive() as store:
        reembed(store, new_model, NEW, snapshot_dir=place.data_dir, progress=False)
    assert not (place.data_dir / SNAPSHOT_NAME).exists()
    gallery = place.gallery(NEW, NEW_DIM)
    try:
        assert gallery.index_source == "store" and gallery.size == 3
    finally:
        gallery.close()


# ---------------------------------------------------------------- real photos, real CLI


@pytest.mark.slow
def test_reembed_moves_a_real_gallery_to_an_exported_model(
    face_pipeline: Any, people: Path, lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from service.api.app import create_app
    from service.cli import main
    from service.config import Settings
    from tests.model_files import dlib_copy
    from tests.service.conftest import wait_ready
    from tests.service.realdata import PEOPLE_ENROLL, PEOPLE_PROBES, central_face, lfw_people

    def jpeg(path: Path) -> tuple[str, bytes, str]:
        return (path.name, path.read_bytes(), "image/jpeg")

    data_dir = tmp_path / "gallery"
    lfw_enrolled, strangers = lfw_people(lfw, 8, 6)
    app = create_app(Settings(data_dir=data_dir), pipeline_factory=lambda s: face_pipeline)
    with TestClient(app) as client:
        wait_ready(client)
        for subject, rel in PEOPLE_ENROLL.items():
            r = client.post("/enroll", files={"image": jpeg(people / rel)},
                            data={"subject_id": subject})
            assert r.status_code == 201, r.text
        for person in lfw_enrolled:
            r = client.post("/enroll", files={"image": jpeg(person.enroll)},
                            data={"subject_id": person.name})
            assert r.status_code == 201, r.text
    before = stored(Place(data_dir, None), "dlib-resnet-v1", 128)
    assert len(before) == len(PEOPLE_ENROLL) + len(lfw_enrolled)

    model = dlib_copy(tmp_path / "dlib-copy.safetensors")
    # identify_fpir off: identify decides at the model's own operating point, the one under
    # test here (with the default, identify holds its FPIR instead; tests/service/
    # test_identify_fpir.py).
    settings = Settings(data_dir=data_dir, model=str(model), device="cpu", identify_fpir="off")

    # The service refuses the gallery under the new model, and says what to do.
    refused = create_app(settings)
    with TestClient(refused) as client:
        for _ in range(600):
            r = client.get("/readyz")
            if r.json().get("error", {}).get("code") == "startup_failed":
                break
            __import__("time").sleep(0.05)
        message = r.json()["error"]["message"]
        assert "faceserve reembed --model" in message and "test-dlib-copy-v1" in message

    capsys.readouterr()
    assert main(["reembed", "--model", "missing.safetensors", "--data-dir", str(data_dir),
                 "--quiet"]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["reembed", "--model", str(model), "--data-dir", str(data_dir), "--quiet",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reembedded"] == len(before)
    assert summary["models_after"] == {"test-dlib-copy-v1": len(before)}
    assert not (data_dir / SNAPSHOT_NAME).exists()  # it held dlib's vectors

    # Same weights, so the only change is the chip's round trip through JPEG quality 95.
    after = stored(Place(data_dir, None), "test-dlib-copy-v1", 128)
    cosines = [float(before[f].embedding @ after[f].embedding) for f in before]
    print(f"cosine(original chip, stored JPEG-95 chip) over {len(cosines)} faces: "
          f"min {min(cosines):.5f}, mean {np.mean(cosines):.5f}")
    assert min(cosines) > 0.99, cosines

    served = create_app(settings)  # the real default pipeline, loading the model by path
    with TestClient(served) as client:
        ready = wait_ready(client)
        assert ready["model"] == "test-dlib-copy-v1"
        probes = {people / rel: expected for rel, expected in PEOPLE_PROBES.items()}
        probes.update({photo: [p.name] for p in lfw_enrolled for photo in p.probes})
        failures = []
        for photo, expected in probes.items():
            body = client.post("/identify", files={"image": jpeg(photo)}).json()
            assert body["operating_point"]["source"] == "model", body["operating_point"]
            faces = body["faces"]
            if photo.parent.parent == lfw:
                face = central_face(faces)
                faces = [] if face is None else [face]
            got = sorted(f["match"]["subject_id"] for f in faces if f["match"])
            if faces and got != sorted(expected):
                failures.append((photo.name, expected, got))
        assert not failures, failures
        for photo in strangers:
            faces = client.post("/identify", files={"image": jpeg(photo)}).json()["faces"]
            assert all(f["match"] is None for f in faces), photo.name


def test_negatives_and_pool_faces_are_reembedded_from_their_chips(place: Place) -> None:
    from service.gallery.store.negatives import NegativeRecord
    from service.gallery.store.unknown import UnknownFace

    enroll_faces(place, 2)
    with place.exclusive() as store:
        for i, with_chip in enumerate((True, False)):
            store.add_negative(NegativeRecord(  # type: ignore[attr-defined]
                negative_id=f"n{i}", subject_id="subject-0", source="face", source_id=None,
                model=OLD, created_at="2026-01-01T00:00:00.000Z", embedding=unit(50 + i),
                chip_jpeg=encode_jpeg(chip(50 + i)) if with_chip else None))
        store.add_unknown([UnknownFace(  # type: ignore[attr-defined]
            face_id="u0", gallery="", photo="p", source=None, bbox=(0, 0, 9, 9),
            landmarks=[[0.0, 0.0]] * 5, detection_confidence=0.9, model=OLD,
            created_at="2026-01-01T00:00:00.000Z", embedding=unit(60),
            chip_jpeg=encode_jpeg(chip(60)))])
        result = reembed(store, new_model, NEW, dim=NEW_DIM, batch_size=1, progress=False)
        assert (result.negatives_reembedded, result.negatives_without_chip) == (1, 1)
        assert (result.unknown_reembedded, result.unknown_without_chip) == (1, 0)
        n0, n1 = store.negatives(["subject-0"])  # type: ignore[attr-defined]
        assert (n0.model, n1.model) == (NEW, OLD)  # the chipless one is left (and ignored)
        expected = new_model(decode_chip(encode_jpeg(chip(50)))[None])[0]
        np.testing.assert_allclose(n0.embedding, expected, atol=1e-6)
        [u0] = store.unknown_faces("")  # type: ignore[attr-defined]
        assert u0.model == NEW and u0.embedding.shape == (NEW_DIM,)
