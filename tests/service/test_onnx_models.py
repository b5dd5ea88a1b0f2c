"""The service on a random-weight ONNX pair: an ArcFace-style embedder behind an SCRFD-style
detector, added with ``faceserve models add`` and selected by settings.

The detector (``tests/onnx_nets.py``, ``bright=True``) finds a bright 32x32 square on the
32-pixel grid of a dark photo, with ArcFace's five points scaled into it, so each "person"
is a square's texture: the same texture in another photo is the same person. The embedder
has random weights: its vectors separate textures (cosine ~0.99 between people, 1 - 1e-5
for one texture in two photos), so the test threshold is 0.999, set explicitly: an ONNX
model has no calibrated threshold, which is itself checked.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

from service.api.app import create_app
from service.cli import main
from service.config import Settings
from tests.onnx_nets import export_embedder, export_scrfd
from tests.service.conftest import wait_ready

THRESHOLD = 0.999


def photo(person: int, background: int, cell: tuple[int, int] = (5, 7)) -> bytes:
    """A 640x640 PNG: dark noise and one person's texture in the 32x32 square ``cell``."""
    img = np.random.default_rng(1000 + background).integers(0, 40, (640, 640, 3), np.uint8)
    face = np.random.default_rng(person).integers(100, 256, (8, 8, 3), dtype=np.uint8)
    r, c = cell
    img[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = np.kron(face, np.ones((4, 4, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two embedders (other weights: other model versions) and the detector, added by the
    CLI as a user would."""
    src = tmp_path_factory.mktemp("onnx-src")
    out = tmp_path_factory.mktemp("onnx-models")
    export_embedder(src / "tiny_arc.onnx", embedding_size=48, seed=0)
    export_embedder(src / "tiny_arc2.onnx", embedding_size=48, seed=7)
    export_scrfd(src / "tiny_det.onnx", bright=True)
    (src / "LICENCE.txt").write_text("MIT (test weights)\n")
    for name, preset in (("tiny_arc", "arcface"), ("tiny_arc2", "arcface"),
                         ("tiny_det", "scrfd")):
        assert main(["models", "add", str(src / f"{name}.onnx"), "--preset", preset,
                     "--licence", str(src / "LICENCE.txt"), "--source",
                     "https://example.org/tests", "--model-dir", str(out)]) == 0
    return out


def settings(data_dir: Path, model_dir: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir, "model": "tiny_arc", "detector": "tiny_det",
        "model_dir": model_dir, "device": "cpu", "threshold": THRESHOLD,
        "identify_fpir": None, "inference_threads": 2,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def serve() -> Iterator[Any]:
    opened: list[TestClient] = []

    def start(s: Settings, ready: bool = True) -> TestClient:
        client = TestClient(create_app(s))
        client.__enter__()
        opened.append(client)
        if ready:
            wait_ready(client, timeout=120)
        return client

    yield start
    for client in reversed(opened):
        client.__exit__(None, None, None)


def startup_error(client: TestClient) -> str:
    for _ in range(2400):
        r = client.get("/readyz")
        error = r.json().get("error", {})
        if error.get("code") == "startup_failed":
            return str(error["message"])
        assert r.status_code != 200, "the service started"
        time.sleep(0.05)
    pytest.fail("no startup failure reported")


def enroll(client: TestClient, subject: str, data: bytes) -> dict[str, Any]:
    r = client.post("/enroll", data={"subject_id": subject, "force": "true"},
                    files={"image": ("p.png", data, "image/png")})
    assert r.status_code == 201, r.text
    return r.json()


def identify(client: TestClient, data: bytes) -> dict[str, Any]:
    r = client.post("/identify", files={"image": ("p.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_models_list_shows_what_was_added(model_dir: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    capsys.readouterr()
    assert main(["models", "list", "--model-dir", str(model_dir), "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"tiny_arc", "tiny_arc2", "tiny_det"}
    assert listed["tiny_arc"]["embedding_size"] == 48
    assert listed["tiny_arc"]["chip"]["size"] == 112
    assert listed["tiny_det"]["kind"] == "detector"
    assert listed["tiny_arc"]["licence"] == "MIT (test weights)"
    assert listed["tiny_arc"]["source"] == "https://example.org/tests"


def test_enroll_identify_restart_and_refusals(
    model_dir: Path, tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "gallery"
    # No threshold: the ONNX model has no calibration, and dlib's default is not reused.
    no_threshold = serve(Settings(data_dir=data_dir, model="tiny_arc", detector="tiny_det",
                                  model_dir=model_dir, device="cpu"), ready=False)
    message = startup_error(no_threshold)
    assert "no calibrated operating point" in message and "eval lfw --model" in message

    client = serve(settings(data_dir, model_dir))
    ready = client.get("/readyz").json()
    assert ready["model"].startswith("onnx-tiny_arc-")
    assert ready["embedding_size"] == 48
    assert ready["model_licence"] == "MIT (test weights)"
    assert ready["detector"].startswith("onnx-tiny_det-")
    assert ready["operating_point"]["threshold"] == THRESHOLD

    alice = enroll(client, "alice", photo(1, background=1))
    assert alice["model"] == ready["model"]
    enroll(client, "bob", photo(2, background=2))
    # Alice's texture in another photo, elsewhere on the grid: alice, not bob.
    body = identify(client, photo(1, background=3, cell=(3, 3)))
    assert body["faces_detected"] == 1
    face = body["faces"][0]
    assert face["match"]["subject_id"] == "alice", face
    assert face["bbox"]["left"] == 96 and face["bbox"]["top"] == 96
    assert identify(client, photo(3, background=4))["faces"][0]["match"] is None
    for other, same in ((1, True), (2, False)):  # 1:1 on two photos
        r = client.post("/verify", files={
            "image_a": ("a.png", photo(1, background=9), "image/png"),
            "image_b": ("b.png", photo(other, background=10, cell=(12, 4)), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["match"] is same, r.json()
    chip = client.get(f"/faces/{alice['face_id']}/chip")
    assert chip.status_code == 200
    assert Image.open(io.BytesIO(chip.content)).size == (112, 112)  # ArcFace chips stored
    client.__exit__(None, None, None)

    # Restart: the gallery and the model identity persist.
    again = serve(settings(data_dir, model_dir))
    assert identify(again, photo(2, background=5))["faces"][0]["match"]["subject_id"] == "bob"
    again.__exit__(None, None, None)

    # Another model's weights: the gallery is refused until re-embedded.
    other = serve(settings(data_dir, model_dir, model="tiny_arc2"), ready=False)
    assert "reembed" in startup_error(other)
    other.__exit__(None, None, None)

    # dlib's model cannot use 112x112 ArcFace chips: refused, naming what is needed.
    capsys.readouterr()
    assert main(["reembed", "--model", "dlib", "--data-dir", str(data_dir), "--model-dir",
                 str(model_dir), "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "112x112 arcface chips" in err and "150x150 dlib chips" in err
    assert "Re-enroll" in err

    # The same through an archive: refused into a dlib gallery, re-embedded into tiny_arc2's.
    archive = tmp_path / "gallery.fsa"
    assert main(["export-gallery", str(archive), "--data-dir", str(data_dir), "--model",
                 "tiny_arc", "--model-dir", str(model_dir), "--threshold", str(THRESHOLD),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["import-gallery", str(archive), "--data-dir", str(tmp_path / "dlib-copy"),
                 "--model", "dlib", "--reembed", "--device", "cpu", "--model-dir",
                 str(model_dir), "--quiet"]) == 2
    assert "112x112 arcface chips" in capsys.readouterr().err
    copy_dir = tmp_path / "arc2-copy"
    assert main(["import-gallery", str(archive), "--data-dir", str(copy_dir), "--model",
                 "tiny_arc2", "--reembed", "--device", "cpu", "--model-dir", str(model_dir),
                 "--quiet"]) == 0
    imported = serve(settings(copy_dir, model_dir, model="tiny_arc2"))
    body = identify(imported, photo(2, background=8, cell=(1, 1)))
    assert body["faces"][0]["match"]["subject_id"] == "bob"
    imported.__exit__(None, None, None)

    # An ArcFace-geometry model re-embeds the stored chips, and serves the gallery.
    assert main(["reembed", "--model", "tiny_arc2", "--data-dir", str(data_dir),
                 "--model-dir", str(model_dir), "--device", "cpu", "--quiet"]) == 0
    moved = serve(settings(data_dir, model_dir, model="tiny_arc2"))
    body = identify(moved, photo(1, background=6, cell=(10, 2)))
    assert body["faces"][0]["match"]["subject_id"] == "alice"


def test_an_onnx_file_without_manifest_and_a_changed_file_are_refused_at_start(
    model_dir: Path, tmp_path: Path, serve: Any
) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes((model_dir / "tiny_arc.onnx").read_bytes())
    client = serve(settings(tmp_path / "g1", model_dir, model=str(bare)), ready=False)
    assert "no manifest" in startup_error(client)

    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("tiny_arc.onnx.json", "tiny_det.onnx", "tiny_det.onnx.json"):
        (changed / name).write_bytes((model_dir / name).read_bytes())
    (changed / "tiny_arc.onnx").write_bytes((model_dir / "tiny_arc2.onnx").read_bytes())
    client = serve(settings(tmp_path / "g2", changed), ready=False)
    assert "hash mismatch" in startup_error(client)


def test_face_crop_with_scrfd(model_dir: Path, tmp_path: Path, serve: Any) -> None:
    """``face_crop=true`` behind SCRFD: the upload's one face is enrolled and found again;
    an upload without a face is 422 ``not_a_face``, as behind dlib's detector."""
    client = serve(settings(tmp_path / "gallery", model_dir))
    r = client.post("/enroll", data={"subject_id": "carol", "face_crop": "true", "force": "true"},
                    files={"image": ("c.png", photo(4, background=11, cell=(6, 2)), "image/png")})
    assert r.status_code == 201, r.text
    enrolled = r.json()
    chip = client.get(f"/faces/{enrolled['face_id']}/chip")
    assert Image.open(io.BytesIO(chip.content)).size == (112, 112)
    # The same texture in a full photo, found by plain detection: carol.
    body = identify(client, photo(4, background=12, cell=(9, 9)))
    assert body["faces"][0]["match"]["subject_id"] == "carol", body
    # face_crop on identify: one face, where the square is.
    r = client.post("/identify", data={"face_crop": "true"},
                    files={"image": ("c.png", photo(4, background=13, cell=(2, 11)), "image/png")})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == 1 and faces[0]["match"]["subject_id"] == "carol"
    assert (faces[0]["bbox"]["left"], faces[0]["bbox"]["top"]) == (11 * 32, 2 * 32)
    # Dark noise is not a face.
    noise = np.random.default_rng(5).integers(0, 40, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    r = client.post("/enroll", data={"subject_id": "nobody", "face_crop": "true"},
                    files={"image": ("n.png", buf.getvalue(), "image/png")})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "not_a_face"


def test_the_servers_minimum_face_is_kept_when_the_decode_is_reduced(
    model_dir: Path, tmp_path: Path, serve: Any
) -> None:
    """FACESERVE_MIN_FACE_PX=256 lets a 2048x1536 JPEG be decoded at half size; the
    minimum is the photo's pixels, so the detector must look for 128 px faces in the
    decoded image, and the 512 px face is found (scanned at 16/256, it is SCRFD's 32 px)."""
    img = np.full((1536, 2048, 3), 20, np.uint8)
    img[512:1024, 1024:1536] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    client = serve(settings(tmp_path / "gallery", model_dir, min_face_px=256))
    r = client.post("/identify", files={"image": ("big.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == 1, r.json()
    box = faces[0]["bbox"]
    assert (box["left"], box["top"]) == (1024, 512), box
