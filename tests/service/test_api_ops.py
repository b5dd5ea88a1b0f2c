"""Operations: health, readiness, Prometheus metrics, the OpenAPI contract, settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.config import DEFAULT_THRESHOLD, ProfileError, Settings, resolve_operating_point
from service.security.keys import SCOPES
from tests.service.conftest import fake_photo


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/readyz").json()
    assert body == {
        "status": "ready", "model": "fake-v1", "embedding_size": 128, "device": "cpu",
        "index_kind": "flat",
        "index_source": "store", "gallery_faces": 0, "gallery_subjects": 0, "batching": True,
        "detection_processes": 0,  # a fake pipeline runs on the inference threads
        "operating_point": {"threshold": 0.915, "source": "setting"},
        "identify_operating_point": {"threshold": 0.915, "source": "setting"},
        # A keyless server acts as the operator, with every scope (the console reads this).
        "caller": {"name": "(no key)", "scopes": list(SCOPES)},
    }


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    for i in range(3):
        r = client.post("/enroll", files={"image": ("p.png", fake_photo(i), "image/png")},
                        data={"subject_id": f"m{i}"})
        assert r.status_code == 201
    client.get("/subjects/m0")
    client.get("/subjects/nobody")
    client.post("/embed", files={"image": ("p.png", fake_photo(1, faces=3), "image/png")})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "faceserve_http_requests_total", route="/enroll", status="201") == 3
    assert metric(text, "faceserve_http_requests_total", route="/subjects/{subject_id}",
                  status="404") == 1
    assert metric(text, "faceserve_http_request_duration_seconds_count", route="/enroll") == 3
    assert metric(text, "faceserve_faces_embedded_total") == 3 + 3  # warm-up not counted
    assert metric(text, "faceserve_gallery_faces") == 3
    assert metric(text, "faceserve_gallery_subjects") == 3
    assert metric(text, "faceserve_index_info", kind="flat") == 1
    assert metric(text, "faceserve_embed_batch_faces_count") >= 4


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    for i in range(3):
        client.get(f"/random/{i}")
    text = client.get("/metrics").text
    assert metric(text, "faceserve_http_requests_total", route="<unmatched>", status="404") == 3
    assert "/random/1" not in text


def test_openapi_documents_both_encodings_and_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    # Every path is versioned; the unversioned aliases are not documented.
    assert all(p.startswith("/v1/") for p in paths)
    assert {"/v1/enroll", "/v1/verify", "/v1/identify", "/v1/embed", "/v1/subjects",
            "/v1/subjects/{subject_id}", "/v1/faces/{face_id}", "/v1/healthz", "/v1/readyz",
            "/v1/metrics"} <= set(paths)
    assert set(paths["/v1/identify"]) == {"get", "post"}
    for path in ("/v1/enroll", "/v1/verify", "/v1/embed"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
    components = schema["components"]["schemas"]
    for name in ("EnrollForm", "EnrollJSON", "VerifyJSON", "IdentifyForm", "EmbedJSON",
                 "ErrorResponse", "EnrollResponse"):
        assert name in components
    # image (one photo) or images (several): each optional, exactly one given.
    form, body = components["EnrollForm"]["properties"], components["EnrollJSON"]["properties"]
    assert form["image"]["anyOf"][0]["format"] == "binary"
    assert form["images"]["anyOf"][0]["items"]["format"] == "binary"
    assert body["image"]["anyOf"][0]["contentEncoding"] == "base64"
    assert body["images"]["anyOf"][0]["items"]["contentEncoding"] == "base64"
    assert "EnrollBatchResponse" in components
    assert paths["/v1/enroll"]["post"]["responses"]["422"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/ErrorResponse")
    # Every $ref resolves.
    text = json.dumps(schema)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in components, ref
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------- settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACESERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACESERVE_THRESHOLD", "0.61")
    monkeypatch.setenv("FACESERVE_BATCHING", "false")
    monkeypatch.setenv("FACESERVE_API_KEYS", "a, b")
    s = Settings()
    assert s.data_dir == tmp_path and s.threshold == 0.61 and s.batching is False
    assert s.api_keys == ["a", "b"]
    monkeypatch.setenv("FACESERVE_THRESHOLD", "FAR=1e-3")
    assert Settings().threshold == "far=0.001"


def test_settings_are_read_from_a_dotenv_file(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FACESERVE_PORT=9123\nFACESERVE_MAX_FACES=3\n")
    s = Settings()
    assert s.port == 9123 and s.max_faces == 3


@pytest.mark.parametrize("bad", ["1.5", "-2", "far=0", "far=2", "far=x", "strict", "nan"])
def test_bad_thresholds_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(threshold=bad)


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 10, name
    from service.config import settings_table

    table = settings_table()
    assert "`FACESERVE_DATA_DIR`" in table and "`FACESERVE_MAX_UPLOAD_BYTES`" in table
    assert f"`{DEFAULT_THRESHOLD}`" in table


def test_operating_point_resolution(tmp_path: Path) -> None:
    assert resolve_operating_point(Settings(threshold=0.7), "m").model_dump(
        exclude_none=True) == {"threshold": 0.7, "source": "setting"}
    profile = tmp_path / "p.json"
    settings = Settings(threshold="far=1e-2", profile=profile)
    with pytest.raises(ProfileError, match="does not exist"):
        resolve_operating_point(settings, "m")
    profile.write_text(json.dumps({"model": "m", "metric": "cosine", "operating_points": [
        {"far": 0.01, "threshold": 0.55, "tar": 0.98}], "notes": ["1e-4: too few pairs"]}))
    point = resolve_operating_point(settings, "m")
    assert (point.threshold, point.source, point.far) == (0.55, "profile", 0.01)
    with pytest.raises(ProfileError, match="calibrated for model 'm'"):
        resolve_operating_point(settings, "other-model")
    with pytest.raises(ProfileError, match=r"no operating point for FAR 0\.0001.*too few"):
        resolve_operating_point(Settings(threshold="far=1e-4", profile=profile), "m")


MANIFEST = {
    "version": "ft-mine-20261203-0123abcd",
    "data": {"val_identities": 32},
    "validation": {"far": 1e-3, "tar": 0.894, "tar_threshold": 0.842},
}


def test_an_exported_model_brings_its_own_operating_point(tmp_path: Path) -> None:
    # Unset threshold: the manifest's validated point, never dlib's default number.
    point = resolve_operating_point(Settings(), "ft-mine", MANIFEST)
    assert (point.threshold, point.source, point.far, point.tar) == (0.842, "model", 1e-3, 0.894)
    assert "32 identities held out" in (point.dataset or "")
    # A threshold set by the operator wins, whether from the environment or the command line.
    assert resolve_operating_point(Settings(threshold=0.9), "ft-mine", MANIFEST).source == (
        "setting")
    # No validated point (exported mid-epoch): refuse rather than guess.
    bare = {**MANIFEST, "validation": {"far": 1e-3, "tar_threshold": None}}
    with pytest.raises(ProfileError, match="no validated operating point"):
        resolve_operating_point(Settings(), "ft-mine", bare)
    assert resolve_operating_point(Settings(threshold=0.8), "ft-mine", bare).threshold == 0.8
    # dlib's model (no manifest) keeps the default number.
    assert resolve_operating_point(Settings(), "dlib-resnet-v1").threshold == DEFAULT_THRESHOLD


def test_the_service_reports_the_models_operating_point(make_client) -> None:  # type: ignore[no-untyped-def]
    from tests.service.conftest import FakePipeline, fake_photo

    pipeline = FakePipeline()
    pipeline.model_manifest = MANIFEST  # type: ignore[attr-defined]
    client = make_client(pipeline)
    assert client.post("/enroll", files={"image": ("a.png", fake_photo(5), "image/png")},
                       data={"subject_id": "five"}).status_code == 201
    body = client.post("/identify", files={"image": ("b.png", fake_photo(5, variant=1),
                                                     "image/png")}).json()
    assert body["threshold"] == 0.842 and body["operating_point"]["source"] == "model"
    assert body["faces"][0]["match"]["subject_id"] == "five"


def test_the_readme_settings_table_is_the_generated_one() -> None:
    """The README's table is pasted from ``faceserve serve --settings-table``: keep it so."""
    from service.config import settings_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, "regenerate: faceserve serve --settings-table"


def test_client_chosen_methods_share_one_label(client: TestClient) -> None:
    """Issue 19: random methods (`MXYZ /healthz`) each made new series; /metrics grew without
    bound. Unknown methods now count under one label."""
    for i in range(40):
        client.request(f"M{i:03d}X", "/healthz")
        client.request(f"M{i:03d}X", "/subjects/x")
    text = client.get("/metrics").text
    assert "M001X" not in text
    assert metric(text, "faceserve_http_requests_total", method="other", route="/healthz") == 40
    methods = {line.split('method="', 1)[1].split('"', 1)[0]
               for line in text.splitlines() if 'method="' in line}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    size = len(client.get("/metrics").text)  # with the series of GET /metrics itself
    for i in range(40, 200):
        client.request(f"Q{i:04d}", "/healthz")
    assert len(client.get("/metrics").text) < size + 200  # flat, not 160 more series


def test_the_served_access_log_names_routes_not_ids_or_queries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: uvicorn's access log wrote `GET /identify?embedding=<a face template>` and
    `DELETE /subjects/<id>` after the erasure. The app under uvicorn exactly as `faceserve serve`
    configures it: its log holds method, route template, status and a request id, no more."""
    import base64
    import logging
    import socket
    import threading

    import httpx
    import uvicorn

    from service.api.app import create_app
    from service.commands import uvicorn_config
    from tests.service.conftest import FakePipeline, fake_embedding

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(data_dir=tmp_path / "g", host="127.0.0.1", port=port)
    app = create_app(settings, pipeline_factory=lambda _: FakePipeline())
    caplog.set_level(logging.INFO)
    server = uvicorn.Server(uvicorn_config(app, settings, "info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    subject = "erased-person-5150"
    probe = base64.urlsafe_b64encode(fake_embedding(3).astype("<f4").tobytes()).decode()
    probe = probe.rstrip("=")
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as c:
            for _ in range(200):
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            r = c.post("/enroll", data={"subject_id": subject},
                       files={"image": ("p.png", fake_photo(3), "image/png")})
            assert r.status_code == 201, r.text
            r = c.get("/identify", params={"embedding": probe})
            assert r.status_code == 200, r.text
            deleted = c.delete(f"/subjects/{subject}")
            assert deleted.status_code == 200, deleted.text
    finally:
        server.should_exit = True
        thread.join(30)
    out = capfd.readouterr()
    records = [r for r in caplog.records if not r.name.startswith("httpx")]  # the test's own
    logged = "\n".join([out.out, out.err, *(r.getMessage() for r in records)])
    assert subject not in logged and probe[:24] not in logged
    assert "embedding=" not in logged
    request_id = deleted.headers["x-request-id"]
    lines = [line for line in logged.splitlines() if request_id in line]
    assert len(lines) == 1 and "DELETE /subjects/{subject_id} 200" in lines[0], logged
    assert "GET /identify 200" in logged
