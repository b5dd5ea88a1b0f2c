"""Face quality over HTTP: reported by every image endpoint, enforced only by POST /enroll.

The fake pipeline's faces are sharp, frontal and mid-grey (they pass the default limits), so
a poor face is made by tightening a limit; the real-photo tests at the end check that the
defaults let ordinary photos through and refuse a blurred one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from models.quality import DEFAULT_LIMITS, FaceQuality
from service.api.errors import PoorQuality
from service.config import Settings
from service.inference.quality import check_enroll_quality, enroll_limits
from tests.service.conftest import AppFactory, fake_photo
from tests.service.realdata import PEOPLE_ENROLL, lfw_people

QUALITY_FIELDS = {"verdict", "eye_distance", "sharpness", "yaw", "roll", "detection_confidence",
                  "brightness", "contrast", "dark_share", "bright_share"}


def png(photo: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("face.png", photo, "image/png")}


def check_quality(q: dict[str, Any]) -> None:
    assert set(q) == QUALITY_FIELDS
    assert q["verdict"] in ("low", "medium", "high")
    assert q["eye_distance"] > 0 and 0 <= q["sharpness"] <= 1
    for share in ("brightness", "contrast", "dark_share", "bright_share"):
        assert 0 <= q[share] <= 1


def face_quality(**changes: float) -> FaceQuality:
    fine = dict(eye_distance=45.0, sharpness=0.45, yaw=5.0, roll=2.0, detection_confidence=1.05,
                brightness=0.5, contrast=0.15, dark_share=0.0, bright_share=0.0)
    return FaceQuality(**{**fine, **changes})


# ---------------------------------------------------------------- the gate itself


def test_gate_names_every_broken_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    check_enroll_quality(face_quality(), settings)  # an ordinary face passes
    with pytest.raises(PoorQuality) as info:
        check_enroll_quality(face_quality(sharpness=0.05, yaw=-80.0), settings)
    err = info.value
    assert err.status == 422 and err.code == "poor_quality"
    assert err.details == [
        {"measure": "sharpness", "value": 0.05, "limit": DEFAULT_LIMITS.min_sharpness,
         "bound": "min"},
        {"measure": "yaw", "value": 80.0, "limit": DEFAULT_LIMITS.max_abs_yaw, "bound": "max"},
    ]
    assert "sharpness 0.05 < minimum" in err.message and "|yaw| 80 > maximum" in err.message
    check_enroll_quality(face_quality(sharpness=0.05, yaw=-80.0), settings, force=True)


def test_settings_default_to_the_documented_limits_and_can_turn_one_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert enroll_limits(Settings(data_dir=tmp_path)) == DEFAULT_LIMITS
    monkeypatch.setenv("FACESERVE_ENROLL_MIN_SHARPNESS", "none")
    monkeypatch.setenv("FACESERVE_ENROLL_MAX_ABS_ROLL", "25")
    settings = Settings(data_dir=tmp_path)
    assert settings.enroll_min_sharpness is None and settings.enroll_max_abs_roll == 25.0
    check_enroll_quality(face_quality(sharpness=0.0), settings)
    with pytest.raises(PoorQuality, match="roll"):
        check_enroll_quality(face_quality(roll=-30.0), settings)


# ---------------------------------------------------------------- HTTP, fake pipeline


def test_quality_is_reported_by_all_four_endpoints(client: TestClient) -> None:
    enrolled = client.post("/enroll", files=png(fake_photo(7)), data={"subject_id": "ann"})
    assert enrolled.status_code == 201, enrolled.text
    check_quality(enrolled.json()["quality"])
    assert enrolled.json()["quality"]["verdict"] != "low"

    embedded = client.post("/embed", files=png(fake_photo(7, faces=2, variant=1)))
    assert embedded.status_code == 200
    for face in embedded.json()["faces"]:
        check_quality(face["quality"])
    identified = client.post("/identify", files=png(fake_photo(7, variant=2)))
    assert identified.status_code == 200
    check_quality(identified.json()["faces"][0]["quality"])

    pair = client.post("/verify", files={
        "image_a": ("a.png", fake_photo(7, variant=3), "image/png"),
        "image_b": ("b.png", fake_photo(8, variant=4), "image/png")})
    assert pair.status_code == 200
    for face in pair.json()["faces"]:
        check_quality(face["quality"])
    single = client.post("/verify", files={"image": ("a.png", fake_photo(7, 1, 5), "image/png")},
                         data={"subject_id": "ann"})
    probe, template = single.json()["faces"]
    check_quality(probe["quality"])
    assert template["source"] == "template" and template["quality"] is None


def test_identify_and_verify_report_but_never_refuse_poor_quality(
    make_client: AppFactory,
) -> None:
    strict = make_client(enroll_min_sharpness=0.999)
    faces = strict.post("/identify", files=png(fake_photo(3))).json()["faces"]
    assert faces and faces[0]["quality"]["sharpness"] < 0.999
    r = strict.post("/verify", files={"image_a": ("a.png", fake_photo(3), "image/png"),
                                      "image_b": ("b.png", fake_photo(3, 1, 1), "image/png")})
    assert r.status_code == 200 and r.json()["match"] is True


def test_enroll_refuses_a_face_below_a_limit_unless_forced(make_client: AppFactory) -> None:
    strict = make_client(enroll_min_sharpness=0.999)
    r = strict.post("/enroll", files=png(fake_photo(5)), data={"subject_id": "bo"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "poor_quality" and "sharpness" in error["message"]
    [detail] = error["details"]
    assert detail["measure"] == "sharpness" and detail["limit"] == 0.999
    assert detail["bound"] == "min" and detail["value"] < 0.999
    assert strict.get("/subjects/bo").status_code == 404  # nothing stored

    forced = strict.post("/enroll", files=png(fake_photo(5)),
                         data={"subject_id": "bo", "force": "true"})
    assert forced.status_code == 201, forced.text
    assert forced.json()["quality"]["sharpness"] == pytest.approx(detail["value"])
    import base64
    as_json = strict.post("/enroll", json={
        "image": base64.b64encode(fake_photo(5, variant=1)).decode(), "subject_id": "bo",
        "force": True})
    assert as_json.status_code == 201, as_json.text
    assert strict.get("/subjects/bo").json()["face_count"] == 2


# ---------------------------------------------------------------- real photos, default limits


@pytest.fixture(scope="module")
def real_client(face_pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from service.api.app import create_app
    from tests.service.conftest import wait_ready

    settings = Settings(data_dir=tmp_path_factory.mktemp("quality-gallery"))
    app = create_app(settings, pipeline_factory=lambda s: face_pipeline)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_default_limits_let_ordinary_photos_through(
    real_client: TestClient, people: Path, lfw: Path
) -> None:
    lfw_enrolled, _ = lfw_people(lfw, 8, 0)
    photos = {s: people / rel for s, rel in PEOPLE_ENROLL.items()}
    photos.update({p.name: p.enroll for p in lfw_enrolled})
    for subject, path in photos.items():
        r = real_client.post("/enroll", files={"image": (path.name, path.read_bytes(),
                                                         "image/jpeg")},
                             data={"subject_id": subject})
        assert r.status_code == 201, (path, r.text)
        assert r.json()["quality"]["verdict"] in ("medium", "high"), (path, r.json())


def test_a_blurred_photo_is_refused_for_sharpness_and_force_enrolls_it(
    real_client: TestClient, people: Path
) -> None:
    path = people / PEOPLE_ENROLL["obama"]
    original = Image.open(path)
    probe = real_client.post("/embed", files={"image": (path.name, path.read_bytes(),
                                                        "image/jpeg")})
    eye = max(f["quality"]["eye_distance"] for f in probe.json()["faces"])
    # A Gaussian blur of a tenth of the eye distance: a 4 px blur at LFW's 41 px.
    blurred = jpeg_bytes(original.filter(ImageFilter.GaussianBlur(eye / 10)))
    files = {"image": ("blurred.jpg", blurred, "image/jpeg")}
    r = real_client.post("/enroll", files=files, data={"subject_id": "obama-blurred"})
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert r.json()["error"]["code"] == "poor_quality"
    assert [d["measure"] for d in details] == ["sharpness"]
    assert details[0]["value"] < details[0]["limit"] == DEFAULT_LIMITS.min_sharpness
    # Identify still answers for it (and reports the same poor quality).
    found = real_client.post("/identify", files=files).json()["faces"]
    assert found and found[0]["quality"]["verdict"] == "low"
    forced = real_client.post("/enroll", files=files,
                              data={"subject_id": "obama-blurred", "force": "true"})
    assert forced.status_code == 201 and forced.json()["quality"]["verdict"] == "low"


def test_a_dark_photo_is_refused_for_contrast(real_client: TestClient, people: Path) -> None:
    path = people / PEOPLE_ENROLL["biden"]
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    buf = io.BytesIO()
    # An eighth of the light: the face is drawn with a few grey levels (still detected).
    Image.fromarray((pixels * 0.12).astype(np.uint8)).save(buf, format="PNG")
    files = {"image": ("dark.png", buf.getvalue(), "image/png")}
    r = real_client.post("/enroll", files=files, data={"subject_id": "biden-dark"})
    assert r.status_code == 422, r.text
    details = {d["measure"]: d for d in r.json()["error"]["details"]}
    assert "contrast" in details and details["contrast"]["bound"] == "min"
    assert "sharpness" not in details and "eye_distance" not in details
