"""One shape for the whole API (issue 20): versioned paths with unversioned aliases, unknown
query parameters refused like unknown body fields, one name per concept, opaque cursors,
request ids and access logs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import fake_photo
from tests.service.test_api_errors import assert_error
from tests.service.test_api_ops import metric


def enroll(client: TestClient, subject_id: str, person: int, prefix: str = "/v1") -> dict:
    r = client.post(f"{prefix}/enroll", data={"subject_id": subject_id},
                    files={"image": ("p.png", fake_photo(person), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------- /v1 and its aliases


def test_every_operation_answers_under_v1_and_at_its_old_path(client: TestClient) -> None:
    new = enroll(client, "ada", 1, prefix="/v1")
    old = enroll(client, "bob", 2, prefix="")
    assert set(new) == set(old)
    for prefix in ("/v1", ""):
        assert client.get(f"{prefix}/healthz").json() == {"status": "ok"}
        listed = client.get(f"{prefix}/subjects").json()["subjects"]
        assert [s["subject_id"] for s in listed] == ["ada", "bob"]
        assert client.get(f"{prefix}/subjects/ada").json()["faces"][0]["face_id"] == (
            new["face_id"])
        assert client.get(f"{prefix}/faces/{old['face_id']}").json()["subject_id"] == "bob"
    assert_error(client.get("/v2/subjects"), 404, "not_found")


def test_metrics_label_both_paths_by_their_own_template(client: TestClient) -> None:
    client.get("/v1/subjects/nobody")
    client.get("/subjects/nobody")
    client.get("/subjects/nobody")
    text = client.get("/v1/metrics").text
    assert metric(text, "faceserve_http_requests_total", route="/v1/subjects/{subject_id}",
                  status="404") == 1
    assert metric(text, "faceserve_http_requests_total", route="/subjects/{subject_id}",
                  status="404") == 2
    assert "nobody" not in text


def test_requests_refused_before_routing_are_labelled_by_their_prefix(make_client) -> None:
    """A 413 from the body-size limit never reaches the router: the template is found by
    matching the app's routes, inside the included routers, for each prefix."""
    client = make_client(max_upload_bytes=200_000)
    big = {"image": ("p.jpg", b"\xff\xd8" + bytes(300_000), "image/jpeg")}
    for prefix in ("/v1", "", "/v1"):
        assert_error(client.post(f"{prefix}/embed", files=big), 413, "payload_too_large")
    text = client.get("/v1/metrics").text
    assert metric(text, "faceserve_http_requests_total", route="/v1/embed", status="413") == 2
    assert metric(text, "faceserve_http_requests_total", route="/embed", status="413") == 1


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_a_wrong_method_lists_every_allowed_one_under_each_prefix(
    client: TestClient, prefix: str
) -> None:
    r = client.options(f"{prefix}/subjects/x")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH"
    assert client.put(f"{prefix}/identify").headers["allow"] == "GET, POST"


def test_the_openapi_document_lists_each_operation_once(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert all(path.startswith("/v1/") for path in schema["paths"])


# ---------------------------------------------------------------- unknown query parameters


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_unknown_query_parameters_are_422_like_unknown_fields(
    client: TestClient, prefix: str
) -> None:
    error = assert_error(client.get(f"{prefix}/subjects?limt=5&zeta=1"), 422, "invalid_field")
    assert [d["field"] for d in error["details"]] == ["query.limt", "query.zeta"]
    assert {d["type"] for d in error["details"]} == {"extra_forbidden"}
    assert "limit" in error["details"][0]["message"]  # says what the operation takes
    # The body check says the same about an unknown form field.
    r = client.post(f"{prefix}/embed", data={"max_face": "2"},
                    files={"image": ("p.png", fake_photo(1), "image/png")})
    body_error = assert_error(r, 422, "invalid_field")
    assert body_error["details"][0]["type"] == "extra_forbidden"
    # On an operation without query parameters, and on an image operation.
    assert_error(client.get(f"{prefix}/healthz?verbose=1"), 422, "invalid_field")
    r = client.post(f"{prefix}/embed?max_faces=1",
                    files={"image": ("p.png", fake_photo(1), "image/png")})
    assert assert_error(r, 422, "invalid_field")["details"][0]["field"] == "query.max_faces"
    # Known parameters still work.
    assert client.get(f"{prefix}/subjects?limit=5").status_code == 200


# ---------------------------------------------------------------- one name per concept


def test_matched_is_the_decision_everywhere_and_match_the_candidate(client: TestClient) -> None:
    face = enroll(client, "ada", 1)
    photo = {"image": ("p.png", fake_photo(1, variant=1), "image/png")}
    verify = client.post("/v1/verify", data={"subject_id": "ada"}, files=photo).json()
    assert verify["matched"] is True and verify["match"] is True  # deprecated alias, same value
    stranger = client.post("/v1/verify", data={"subject_id": "ada"},
                           files={"image": ("p.png", fake_photo(9), "image/png")}).json()
    assert stranger["matched"] is False and stranger["match"] is False
    found = client.post("/v1/identify", files=photo).json()["faces"][0]
    assert found["matched"] is True and found["match"]["subject_id"] == "ada"
    unknown = client.post("/v1/identify", files={"image": ("p.png", fake_photo(9), "image/png")})
    assert unknown.json()["faces"][0] == {**unknown.json()["faces"][0], "matched": False,
                                          "match": None}
    stored = client.get("/v1/identify", params={"face_id": face["face_id"]}).json()
    assert stored["matched"] is False and stored["match"] is None  # its own face is left out
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["VerifyResponse"]["properties"]["match"]["deprecated"] is True


def test_verify_reports_landmarks_of_both_faces(client: TestClient) -> None:
    enroll(client, "ada", 1)
    r = client.post("/v1/verify", files={
        "image_a": ("a.png", fake_photo(1), "image/png"),
        "image_b": ("b.png", fake_photo(1, variant=2), "image/png")})
    assert all(len(f["landmarks"]) == 5 for f in r.json()["faces"])
    r = client.post("/v1/verify", data={"subject_id": "ada"},
                    files={"image": ("p.png", fake_photo(1, variant=3), "image/png")})
    probe, template = r.json()["faces"]
    assert template["source"] == "template" and len(template["landmarks"]) == 5
    assert len(probe["landmarks"]) == 5


def test_the_client_reads_answers_of_servers_without_matched() -> None:
    from faceserve_client import models as m

    old = {"match": True, "similarity": 0.95, "distance": 0.1, "threshold": 0.9,
           "operating_point": {"threshold": 0.9, "source": "setting"}, "faces": [],
           "model": "x"}
    assert m.VerifyResponse.model_validate(old).matched is True
    new = {**old, "matched": False}
    del new["match"]
    with pytest.warns(DeprecationWarning):
        assert m.VerifyResponse.model_validate(new).match is False


# ---------------------------------------------------------------- pagination


def _pages(client: TestClient, path: str, key: str, limit: int = 2) -> tuple[list, list[str]]:
    items, cursors, cursor = [], [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        body = client.get(path, params=params).json()
        items += body[key]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, cursors
        cursors.append(cursor)


def test_subjects_and_audit_page_with_the_same_opaque_cursor(make_client) -> None:
    client = make_client()
    for i, name in enumerate(["ann", "bob", "cy", "dee", "eve"]):
        enroll(client, name, i + 1)
    subjects, cursors = _pages(client, "/v1/subjects", "subjects")
    assert [s["subject_id"] for s in subjects] == ["ann", "bob", "cy", "dee", "eve"]
    events, audit_cursors = _pages(client, "/v1/audit", "events")
    assert [e["subject_id"] for e in events] == ["ann", "bob", "cy", "dee", "eve"]
    for cursor in cursors + audit_cursors:
        assert "\x1f" not in cursor and cursor.isascii()
        assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789-_")
    # The deprecated audit pair still works, beside the cursor.
    page = client.get("/v1/audit", params={"limit": 2}).json()
    assert page["next_after"] == page["events"][-1]["id"]
    rest = client.get("/v1/audit", params={"after": page["next_after"]}).json()["events"]
    assert [e["subject_id"] for e in rest] == ["cy", "dee", "eve"]
    assert_error(client.get("/v1/audit", params={"after": 1, "cursor": audit_cursors[0]}),
                 422, "invalid_field")


def _respell(cursor: str, **changes: object) -> str:
    import base64
    import json

    body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    text = json.dumps({**body, **changes}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_tampered_cursors_are_422_invalid_cursor(make_client) -> None:
    client = make_client()
    for i, name in enumerate(["ann", "bob", "cy"]):
        enroll(client, name, i + 1)
    [subjects_cursor] = _pages(client, "/v1/subjects", "subjects")[1]
    [audit_cursor] = _pages(client, "/v1/audit", "events")[1]
    # The untouched cursor is accepted, and a re-encoding of the same content too.
    assert client.get("/v1/subjects", params={"cursor": subjects_cursor}).status_code == 200
    assert _respell(subjects_cursor) == subjects_cursor
    bad = [
        "garbage", subjects_cursor[:-2], subjects_cursor + "A", subjects_cursor + "==",
        audit_cursor,  # another list's
        _respell(subjects_cursor, g="000000000000"),  # another gallery's
        _respell(subjects_cursor, a=7), _respell(subjects_cursor, v=2),
        _respell(subjects_cursor, a="a\x1fb"), _respell(subjects_cursor, x=1),
    ]
    for cursor in bad:
        assert_error(client.get("/v1/subjects", params={"cursor": cursor}), 422,
                     "invalid_cursor")
    for cursor in ("garbage", subjects_cursor, _respell(audit_cursor, a="3"),
                   _respell(audit_cursor, a=True), _respell(audit_cursor, a=-1)):
        assert_error(client.get("/v1/audit", params={"cursor": cursor}), 422, "invalid_cursor")


# ---------------------------------------------------------------- request ids and access log


def test_access_log_lines_carry_time_request_id_and_key_id_never_the_key(
    make_client, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import re

    from service.config import Settings
    from service.security.keys import SCOPES, KeyRing, open_security_store

    client = make_client()
    settings: Settings = client.app.state.settings
    store = open_security_store(settings)
    record, token = KeyRing(store).create("desk", list(SCOPES))
    store.close()
    caplog.set_level(logging.INFO, logger="faceserve.access")
    ok = client.get("/v1/subjects", headers={"Authorization": f"Bearer {token}",
                                             "X-Request-ID": "trace-0042-abc"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-0042-abc"
    denied = client.get("/subjects/someone")  # no key: 401, and an id made up for it
    assert denied.status_code == 401
    made_up = denied.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made_up)
    hostile = client.get("/v1/healthz", headers={"X-Request-ID": "x y\nforged line"})
    assert hostile.headers["x-request-id"] != "x y\nforged line"  # replaced, not echoed
    lines = [r.getMessage() for r in caplog.records if r.name == "faceserve.access"]
    text = "\n".join(lines)
    assert token not in text and "someone" not in text and "forged" not in text
    [mine] = [line for line in lines if "id=trace-0042-abc" in line]
    assert mine.startswith("GET /v1/subjects 200 ")
    assert f" key={record.key_id} " in mine
    stamp = re.search(r" at=(\S+)$", mine).group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    [anonymous] = [line for line in lines if f"id={made_up}" in line]
    assert anonymous.startswith("GET /subjects/{subject_id} 401 ") and " key=- " in anonymous
