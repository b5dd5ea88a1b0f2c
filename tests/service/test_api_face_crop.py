"""``face_crop=true``: clients that send one face, already cropped or aligned.

The HTTP contract (both encodings, every image endpoint, validation, the 422 for an image that
is not a face) on the fake pipeline, whose ``detect_face_crop`` returns a photo's first face;
then the real pipeline on real LFW crops and a photo of dogs.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.evaluation.crops import crop_face
from models.imageio import decode_image
from tests.service.conftest import AppFactory, fake_photo


def png(photo: bytes) -> tuple[str, bytes, str]:
    return ("p.png", photo, "image/png")


def b64(photo: bytes) -> str:
    return base64.b64encode(photo).decode()


def post(client: TestClient, path: str, encoding: str, images: dict[str, bytes],
         **fields: Any) -> Any:
    """POST ``images`` and ``fields`` as multipart (form strings) or as JSON."""
    if encoding == "multipart":
        data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
        return client.post(path, files={k: png(v) for k, v in images.items()}, data=data)
    return client.post(path, json={**{k: b64(v) for k, v in images.items()}, **fields})


ENCODINGS = ["multipart", "json"]

# ---------------------------------------------------------------- contract (fake pipeline)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_embed_and_identify_take_the_image_as_one_face(client: TestClient, encoding: str) -> None:
    three = fake_photo(5, faces=3)
    for path in ("/embed", "/identify"):
        normal = post(client, path, encoding, {"image": three})
        cropped = post(client, path, encoding, {"image": three}, face_crop=True)
        assert normal.status_code == cropped.status_code == 200, cropped.text
        assert normal.json()["faces_detected"] == 3
        assert cropped.json()["faces_detected"] == 1
        assert len(cropped.json()["faces"]) == 1


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_enroll_with_face_crop(client: TestClient, encoding: str) -> None:
    r = post(client, "/enroll", encoding, {"image": fake_photo(6, faces=2)},
             subject_id="six", face_crop=True)
    assert r.status_code == 201, r.text
    assert r.json()["faces_detected"] == 1
    # the face enrolled is the crop's one face (the fake's first), not the photo's largest
    assert r.json()["bbox"]["right"] - r.json()["bbox"]["left"] + 1 == 40


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_verify_applies_face_crop_to_both_images(client: TestClient, encoding: str) -> None:
    # The fake's first face of person 1 is the same on both photos; the largest face of a
    # three-face photo is another face (another embedding): only face_crop makes them match.
    three, one = fake_photo(1, faces=3), fake_photo(1, faces=1, variant=2)
    normal = post(client, "/verify", encoding, {"image_a": three, "image_b": one})
    cropped = post(client, "/verify", encoding, {"image_a": three, "image_b": one},
                   face_crop=True)
    assert normal.status_code == cropped.status_code == 200, cropped.text
    assert normal.json()["match"] is False
    assert cropped.json()["match"] is True
    assert cropped.json()["similarity"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("path", ["/embed", "/identify", "/enroll", "/verify"])
def test_a_face_crop_without_a_face_is_422_not_a_face(
    client: TestClient, encoding: str, path: str
) -> None:
    empty = fake_photo(3, faces=0)
    images = {"image_a": empty, "image_b": empty} if path == "/verify" else {"image": empty}
    fields: dict[str, Any] = {"subject_id": "x"} if path == "/enroll" else {}
    r = post(client, path, encoding, images, face_crop=True, **fields)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "not_a_face"
    if path in ("/embed", "/identify"):  # without face_crop, no face is an empty answer
        assert post(client, path, encoding, images).status_code == 200


@pytest.mark.parametrize("value", ["maybe", "", "2", "tru"])
def test_invalid_face_crop_in_multipart_is_422(client: TestClient, value: str) -> None:
    r = client.post("/embed", files={"image": png(fake_photo(1))}, data={"face_crop": value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_field"
    assert r.json()["error"]["details"][0]["field"] == "body.face_crop"


@pytest.mark.parametrize("value", ["maybe", 2, [], {"x": 1}, None])
def test_invalid_face_crop_in_json_is_422(client: TestClient, value: Any) -> None:
    r = client.post("/identify", json={"image": b64(fake_photo(1)), "face_crop": value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_field"
    assert r.json()["error"]["details"][0]["field"] == "body.face_crop"


@pytest.mark.parametrize("value", ["false", "0", "False"])
def test_face_crop_false_in_multipart_detects_as_usual(client: TestClient, value: str) -> None:
    r = client.post("/embed", files={"image": png(fake_photo(1, faces=3))},
                    data={"face_crop": value})
    assert r.status_code == 200, r.text
    assert r.json()["faces_detected"] == 3


def test_face_crop_is_in_the_openapi_document(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("EmbedForm", "EmbedJSON", "EnrollForm", "EnrollJSON", "VerifyForm",
                 "VerifyJSON", "IdentifyForm", "IdentifyJSON"):
        field = schemas[name]["properties"]["face_crop"]
        assert field["type"] == "boolean" and field["default"] is False


# ---------------------------------------------------------------- real pipeline


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def lfw_crop(lfw: Path, face_pipeline: Any) -> tuple[bytes, bytes]:
    """(an LFW photo, its face cut like a phone app does: box + 35%, 100x100 JPEG)."""
    path = sorted(lfw.glob("Aaron_Peirsol/*.jpg"))[0]
    photo = path.read_bytes()
    image = decode_image(photo)
    faces = face_pipeline.detect(image)
    face = min(faces, key=lambda f: abs(f.box.left + f.box.right - 250))
    return photo, crop_face(image, face.box, 100)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_real_crop_with_face_crop_matches_its_original(
    make_client: AppFactory, face_pipeline: Any, lfw_crop: tuple[bytes, bytes], encoding: str
) -> None:
    client = make_client(pipeline=face_pipeline)
    photo, crop = lfw_crop
    r = post(client, "/enroll", encoding, {"image": photo}, subject_id="aaron")
    assert r.status_code == 201, r.text
    r = post(client, "/verify", encoding, {"image": crop}, subject_id="aaron", face_crop=True)
    assert r.status_code == 200, r.text
    assert r.json()["match"] is True and r.json()["similarity"] > 0.97
    r = post(client, "/identify", encoding, {"image": crop}, face_crop=True)
    assert r.status_code == 200, r.text
    [face] = r.json()["faces"]
    assert face["match"]["subject_id"] == "aaron"
    # the box is where the face is in the crop: its middle ~60%
    assert 10 <= face["bbox"]["left"] <= 30 and 70 <= face["bbox"]["right"] <= 90


@pytest.mark.slow
def test_a_real_crop_is_found_without_face_crop_by_the_retry(
    make_client: AppFactory, face_pipeline: Any, lfw_crop: tuple[bytes, bytes]
) -> None:
    client = make_client(pipeline=face_pipeline)
    r = client.post("/embed", files={"image": ("c.jpg", lfw_crop[1], "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["faces_detected"] == 1


@pytest.mark.slow
def test_dogs_and_noise_with_face_crop_are_422_not_a_face(
    make_client: AppFactory, face_pipeline: Any, shared_data: Path
) -> None:
    client = make_client(pipeline=face_pipeline)
    dogs = (shared_data / "detect" / "dogs.jpg").read_bytes()
    small_dogs = _jpeg(np.asarray(Image.open(io.BytesIO(dogs)).convert("RGB").resize((100, 100))))
    noise = _jpeg(np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8))
    for image in (dogs, small_dogs, noise):
        r = client.post("/embed", files={"image": ("x.jpg", image, "image/jpeg")},
                        data={"face_crop": "true"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "not_a_face"
        assert "not a face" in r.json()["error"]["message"]


@pytest.mark.slow
def test_the_retry_setting_reaches_the_pipeline() -> None:
    from service.api.app import default_pipeline
    from service.config import Settings

    assert Settings().small_image_retry_px == 300
    pipeline: Any = default_pipeline(Settings(small_image_retry_px=0, device="cpu"))
    assert pipeline.small_image_retry_px == 0
