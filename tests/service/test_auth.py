"""API keys and scopes: every protected endpoint with no key, a wrong key, a revoked key, a key
of the wrong scope, a key of another gallery, and the right key; galleries never see each other.

The fake pipeline keeps these fast; keys are created on the running app's key ring, exactly as
`faceserve keys create` does on the database.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import API_PREFIX
from service.security.keys import SCOPES, KeyRing, Namespace, hash_token, validate_gallery
from tests.service.conftest import AppFactory, fake_embedding, fake_photo

PHOTO = fake_photo(person=7)


def files(data: bytes = PHOTO, name: str = "image") -> dict[str, Any]:
    return {name: ("p.png", data, "image/png")}


@dataclass
class World:
    client: TestClient
    ring: KeyRing
    tokens: dict[str, str]  # role -> token
    key_ids: dict[str, str]
    alice_face: str  # a face of subject "alice" in the default gallery
    bob_face: str  # a face of subject "bob" in gallery "b"
    clusters: list[dict[str, Any]]  # of the default gallery's unknown-face pool, largest first


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(make_client: AppFactory) -> World:
    # Rate limits have their own tests; the pool is on for the /clusters endpoints.
    client = make_client(rate_limit_per_s=0, remember_unknown=True)
    ring: KeyRing = client.app.state.services.keys
    tokens, key_ids = {}, {}
    roles: dict[str, tuple[tuple[str, ...], str | None]] = {
        "all": (SCOPES, None),
        **{scope: ((scope,), None) for scope in SCOPES},  # one key per scope, that alone
        "revoked": (SCOPES, None),
        "other": (SCOPES, "b"),  # every scope, but gallery "b"
    }
    for role, (scopes, gallery) in roles.items():
        record, token = ring.create(role, scopes, gallery)
        tokens[role], key_ids[role] = token, record.key_id
    ring.revoke(key_ids["revoked"])
    r = client.post("/enroll", data={"subject_id": "alice"}, files=files(fake_photo(1)),
                    headers=bearer(tokens["all"]))
    assert r.status_code == 201, r.text
    alice = r.json()["face_id"]
    r = client.post("/enroll", data={"subject_id": "bob"}, files=files(fake_photo(2)),
                    headers=bearer(tokens["other"]))
    assert r.status_code == 201, r.text
    bob = r.json()["face_id"]
    # The pool: three photos of person 20 and two of 21, clustered into two groups.
    for person, variants in ((20, 3), (21, 2)):
        for v in range(variants):
            r = client.post("/identify", files=files(fake_photo(person, variant=v)),
                            data={"remember_unknown": "true"}, headers=bearer(tokens["all"]))
            assert r.status_code == 200, r.text
    r = client.post("/clusters", json={}, headers=bearer(tokens["all"]))
    assert [c["size"] for c in r.json()["clusters"]] == [3, 2], r.text
    return World(client, ring, tokens, key_ids, alice, bob, r.json()["clusters"])


def b64(vector: Any) -> str:
    return base64.urlsafe_b64encode(vector.astype("<f4").tobytes()).decode().rstrip("=")


def merge_dave_into_alice(w: World, h: dict[str, str]) -> Any:
    """POST /subjects/dave/merge into alice, dave enrolled first with the all-scopes key."""
    w.client.post("/enroll", data={"subject_id": "dave"}, files=files(fake_photo(11)),
                  headers=bearer(w.tokens["all"]))
    return w.client.post("/subjects/dave/merge", json={"into": "alice"}, headers=h)


def new_negative(w: World) -> str:
    """A negative of alice, made with the all-scopes key (for the DELETE's own call)."""
    r = w.client.post("/negatives", json={"subject_id": "alice",
                                          "embedding": b64(fake_embedding(5))},
                      headers=bearer(w.tokens["all"]))
    assert r.status_code == 201, r.text
    return str(r.json()["negative_id"])


# Each protected endpoint: (name, scope, request). The request must succeed (2xx) with a key
# of the default gallery holding the scope.
Request = Callable[[World, dict[str, str]], Any]
ENDPOINTS: list[tuple[str, str, Request]] = [
    ("POST /enroll", "enroll", lambda w, h: w.client.post(
        "/enroll", data={"subject_id": "carol"}, files=files(), headers=h)),
    ("POST /verify", "recognize", lambda w, h: w.client.post(
        "/verify", data={"subject_id": "alice"}, files=files(fake_photo(1, variant=3)),
        headers=h)),
    ("GET /identify", "recognize", lambda w, h: w.client.get(
        "/identify", params={"face_id": w.alice_face}, headers=h)),
    ("POST /identify", "recognize", lambda w, h: w.client.post(
        "/identify", files=files(), headers=h)),
    ("POST /embed", "recognize", lambda w, h: w.client.post("/embed", files=files(), headers=h)),
    ("POST /identify/search", "recognize", lambda w, h: w.client.post(
        "/identify/search", json={"face_id": w.alice_face}, headers=h)),
    ("GET /subjects", "read", lambda w, h: w.client.get("/subjects", headers=h)),
    ("GET /subjects/{id}", "read", lambda w, h: w.client.get("/subjects/alice", headers=h)),
    ("DELETE /subjects/{id}", "erase", lambda w, h: w.client.delete(
        "/subjects/alice", headers=h)),
    ("GET /subjects/{id}/faces", "read", lambda w, h: w.client.get(
        "/subjects/alice/faces", headers=h)),
    ("PATCH /subjects/{id}", "enroll", lambda w, h: w.client.patch(
        "/subjects/alice", json={"metadata": {"desk": 4}}, headers=h)),
    ("POST /subjects/{id}/merge", "enroll", lambda w, h: merge_dave_into_alice(w, h)),
    ("GET /faces/{id}", "read", lambda w, h: w.client.get(f"/faces/{w.alice_face}", headers=h)),
    ("GET /faces/{id}/chip", "read", lambda w, h: w.client.get(
        f"/faces/{w.alice_face}/chip", headers=h)),
    ("DELETE /faces/{id}", "erase", lambda w, h: w.client.delete(
        f"/faces/{w.alice_face}", headers=h)),
    ("GET /clusters", "read", lambda w, h: w.client.get("/clusters", headers=h)),
    ("GET /clusters/faces/{id}/chip", "read", lambda w, h: w.client.get(
        f"/clusters/faces/{w.clusters[0]['representative_face_id']}/chip", headers=h)),
    ("POST /clusters", "enroll", lambda w, h: w.client.post("/clusters", json={}, headers=h)),
    ("POST /clusters/{id}/name", "enroll", lambda w, h: w.client.post(
        f"/clusters/{w.clusters[0]['cluster_id']}/name", json={"subject_id": "twenty"},
        headers=h)),
    ("POST /clusters/{id}/merge", "enroll", lambda w, h: w.client.post(
        f"/clusters/{w.clusters[1]['cluster_id']}/merge",
        json={"into": w.clusters[0]["cluster_id"]}, headers=h)),
    ("POST /clusters/{id}/split", "enroll", lambda w, h: w.client.post(
        f"/clusters/{w.clusters[0]['cluster_id']}/split",
        json={"face_ids": [w.clusters[0]["faces"][0]["face_id"]]}, headers=h)),
    ("DELETE /clusters/{id}", "erase", lambda w, h: w.client.delete(
        f"/clusters/{w.clusters[1]['cluster_id']}", headers=h)),
    ("GET /audit", "audit", lambda w, h: w.client.get("/audit", headers=h)),
    ("GET /metrics", "metrics", lambda w, h: w.client.get("/metrics", headers=h)),
    ("GET /keys", "admin", lambda w, h: w.client.get("/keys", headers=h)),
    ("POST /keys", "admin", lambda w, h: w.client.post(
        "/keys", json={"name": "new", "scopes": ["enroll"]}, headers=h)),
    ("DELETE /keys/{id}", "admin", lambda w, h: w.client.delete(
        f"/keys/{w.key_ids['enroll']}", headers=h)),
    ("POST /negatives", "enroll", lambda w, h: w.client.post(
        "/negatives", json={"subject_id": "alice", "embedding": b64(fake_embedding(5))},
        headers=h)),
    ("GET /negatives", "read", lambda w, h: w.client.get(
        "/negatives", params={"subject_id": "alice"}, headers=h)),
    ("DELETE /negatives/{id}", "erase", lambda w, h: w.client.delete(
        f"/negatives/{new_negative(w)}", headers=h)),
    ("POST /faces/{id}/move", "enroll", lambda w, h: w.client.post(
        f"/faces/{w.alice_face}/move", json={"subject_id": "alice-2"}, headers=h)),
    ("GET /clusters?include=chips", "read", lambda w, h: w.client.get(
        "/clusters", params={"include": "chips"}, headers=h)),
    ("GET /galleries", "admin", lambda w, h: w.client.get("/galleries", headers=h)),
    ("POST /galleries", "admin", lambda w, h: w.client.post(
        "/galleries", json={"name": "new-one"}, headers=h)),
    ("DELETE /galleries/{name}", "admin", lambda w, h: w.client.delete(
        "/galleries/b", params={"force": "true"}, headers=h)),
]
IDS = [e[0] for e in ENDPOINTS]


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


@pytest.mark.parametrize(("name", "scope", "call"), ENDPOINTS, ids=IDS)
def test_no_key_is_401(world: World, name: str, scope: str, call: Request) -> None:
    r = call(world, {})
    assert_error(r, 401, "missing_api_key")
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("name", "scope", "call"), ENDPOINTS, ids=IDS)
def test_a_wrong_key_is_401(world: World, name: str, scope: str, call: Request) -> None:
    forged = world.tokens["all"][:-4] + "AAAA"
    assert_error(call(world, bearer(forged)), 401, "invalid_api_key")
    assert_error(call(world, {"X-API-Key": "not-a-key"}), 401, "invalid_api_key")
    # The hash of a valid key is not a key.
    assert_error(call(world, bearer(hash_token(world.tokens["all"]))), 401, "invalid_api_key")


@pytest.mark.parametrize(("name", "scope", "call"), ENDPOINTS, ids=IDS)
def test_a_revoked_key_is_401(world: World, name: str, scope: str, call: Request) -> None:
    assert_error(call(world, bearer(world.tokens["revoked"])), 401, "revoked_api_key")


@pytest.mark.parametrize(("name", "scope", "call"), ENDPOINTS, ids=IDS)
def test_a_key_without_the_scope_is_403(
    world: World, name: str, scope: str, call: Request
) -> None:
    """Every endpoint against every other scope: each key holds that one scope alone."""
    for other in SCOPES:
        if other != scope:
            assert_error(call(world, bearer(world.tokens[other])), 403, "insufficient_scope")
    # Nothing was done: the request still succeeds with the right key afterwards.
    assert 200 <= call(world, bearer(world.tokens[scope])).status_code < 300


def test_every_scope_has_an_endpoint_and_a_test() -> None:
    assert {scope for _, scope, _ in ENDPOINTS} == set(SCOPES)


def test_every_protected_route_is_in_the_table(world: World) -> None:
    """A route added without a row here would go untested against the scopes."""
    schema = world.client.get("/openapi.json").json()
    # The table calls the unversioned aliases: the same routes as the documented /v1 paths.
    protected = {f"{method.upper()} {path.removeprefix(API_PREFIX)}"
                 for path, ops in schema["paths"].items()
                 for method, op in ops.items() if op.get("security")}
    table = {re.sub(r"\{[^}]+\}", "{}", name) for name in IDS}
    missing = {op for op in protected if re.sub(r"\{[^}]+\}", "{}", op) not in table}
    assert not missing, sorted(missing)


@pytest.mark.parametrize(("name", "scope", "call"), ENDPOINTS, ids=IDS)
def test_the_right_scope_is_let_in_by_either_header(
    world: World, name: str, scope: str, call: Request
) -> None:
    header = {"X-API-Key": world.tokens[scope]} if "GET" in name else bearer(world.tokens[scope])
    r = call(world, header)
    assert 200 <= r.status_code < 300, r.text


# ---------------------------------------------------------------- identify's subject metadata


def test_identify_adds_subject_metadata_only_for_keys_that_may_read(world: World) -> None:
    c = world.client
    r = c.post("/enroll", data={"subject_id": "carol", "metadata": '{"name": "Carol C."}'},
               files=files(fake_photo(3)), headers=bearer(world.tokens["all"]))
    assert r.status_code == 201, r.text
    _, both = world.ring.create("app", ["recognize", "read"])
    calls: list[Callable[[dict[str, str], bool], Any]] = [
        lambda h, m: c.post("/identify", files=files(fake_photo(3, variant=2)),
                            data={"include_metadata": str(m).lower(), "k": "2"}, headers=h),
        lambda h, m: c.post("/identify", json={
            "image": base64.b64encode(fake_photo(3, variant=2)).decode(),
            "include_metadata": m, "k": 2}, headers=h),
        lambda h, m: c.get("/identify", params={"embedding": b64(fake_embedding(3)), "k": 2,
                                                "include_metadata": str(m).lower()}, headers=h),
        lambda h, m: c.post("/identify/search", json={  # every face but alice's: carol's
            "face_id": world.alice_face, "k": 2, "include_metadata": m}, headers=h),
    ]
    for call in calls:
        r = call(bearer(both), True)
        assert r.status_code == 200, r.text
        body = r.json()
        candidates = body["faces"][0]["candidates"] if "faces" in body else body["candidates"]
        found = {cand["subject_id"]: cand["metadata"] for cand in candidates}
        assert found["carol"] == {"name": "Carol C."}, body
        assert all(meta == {} for subject, meta in found.items() if subject != "carol")
        assert "bob" not in found  # another gallery's, never
        if "faces" in body and body["faces"][0].get("match"):
            assert body["faces"][0]["match"]["metadata"] == found[
                body["faces"][0]["match"]["subject_id"]]
        # Without the request: no metadata, for any key.
        r = call(bearer(both), False)
        assert r.status_code == 200, r.text
        assert "metadata" not in r.text
        # recognize alone: asking is refused, before anything is searched.
        r = call(bearer(world.tokens["recognize"]), True)
        assert_error(r, 403, "insufficient_scope")
        assert "read" in r.json()["error"]["message"]
        assert call(bearer(world.tokens["recognize"]), False).status_code == 200
        assert_error(call(bearer(world.tokens["read"]), True), 403, "insufficient_scope")


# ---------------------------------------------------------------- galleries


def test_a_key_of_another_gallery_never_sees_this_gallerys_subjects(world: World) -> None:
    c, other = world.client, bearer(world.tokens["other"])
    # Reads by id: 404, exactly as for an id that does not exist.
    assert_error(c.get("/subjects/alice", headers=other), 404, "subject_not_found")
    assert_error(c.get(f"/faces/{world.alice_face}", headers=other), 404, "face_not_found")
    assert_error(c.get("/identify", params={"face_id": world.alice_face}, headers=other),
                 404, "face_not_found")
    assert_error(c.post("/verify", data={"subject_id": "alice"},
                        files=files(fake_photo(1, variant=3)), headers=other),
                 404, "subject_not_found")
    # Erasure by id: 404, and nothing erased.
    assert_error(c.delete("/subjects/alice", headers=other), 404, "subject_not_found")
    assert_error(c.delete(f"/faces/{world.alice_face}", headers=other), 404, "face_not_found")
    mine = bearer(world.tokens["all"])
    assert c.get("/subjects/alice", headers=mine).json()["face_count"] == 1
    # Search: alice's own photo and vector find nobody from gallery b's point of view...
    r = c.post("/identify", files=files(fake_photo(1, variant=5)), headers=other).json()
    assert [cand["subject_id"] for cand in r["faces"][0]["candidates"]] == ["bob"]
    r = c.get("/identify", params={"embedding": b64(fake_embedding(1)), "k": 10},
              headers=other).json()
    assert [cand["subject_id"] for cand in r["candidates"]] == ["bob"]
    # ... and the same from the default gallery: bob is invisible there.
    r = c.get("/identify", params={"embedding": b64(fake_embedding(2)), "k": 10},
              headers=mine).json()
    assert [cand["subject_id"] for cand in r["candidates"]] == ["alice"]
    # Listings.
    assert [s["subject_id"] for s in c.get("/subjects", headers=other).json()["subjects"]] == [
        "bob"]
    assert [s["subject_id"] for s in c.get("/subjects", headers=mine).json()["subjects"]] == [
        "alice"]
    # Enrolling the same subject id in two galleries makes two different subjects.
    r = c.post("/enroll", data={"subject_id": "alice"}, files=files(fake_photo(9)),
               headers=other)
    assert r.status_code == 201 and r.json()["subject_id"] == "alice"
    assert c.get("/subjects/alice", headers=mine).json()["faces"][0]["face_id"] == (
        world.alice_face)
    assert c.get("/subjects/alice", headers=other).json()["faces"][0]["face_id"] == (
        r.json()["face_id"])
    # Audit and keys: each gallery its own.
    acts = {(e["action"], e["subject_id"]) for e in c.get("/audit", headers=other).json()[
        "events"]}
    assert acts == {("enroll", "bob"), ("enroll", "alice")}
    assert {k["name"] for k in c.get("/keys", headers=other).json()["keys"]} == {"other"}
    assert_error(c.delete(f"/keys/{world.key_ids['all']}", headers=other), 404, "key_not_found")
    assert c.get("/subjects", headers=mine).status_code == 200  # still valid


def test_another_gallerys_subject_cannot_be_renamed_merged_or_paged(world: World) -> None:
    c, other, mine = world.client, bearer(world.tokens["other"]), bearer(world.tokens["all"])
    assert_error(c.get("/subjects/alice/faces", headers=other), 404, "subject_not_found")
    assert_error(c.patch("/subjects/alice", json={"subject_id": "eve"}, headers=other),
                 404, "subject_not_found")
    assert_error(c.post("/subjects/alice/merge", json={"into": "bob"}, headers=other),
                 404, "subject_not_found")
    assert_error(c.post("/subjects/bob/merge", json={"into": "alice"}, headers=other),
                 404, "target_not_found")  # alice is not in gallery b
    assert_error(c.post("/subjects/alice/merge", json={"into": "bob"}, headers=mine),
                 404, "target_not_found")  # nor bob in the default one
    # A rename stays in the key's gallery: "bob" is free in the default gallery.
    r = c.patch("/subjects/alice", json={"subject_id": "bob"}, headers=mine)
    assert r.status_code == 200, r.text
    assert c.get("/subjects/bob", headers=other).json()["faces"][0]["face_id"] == world.bob_face
    assert c.get("/subjects/bob", headers=mine).json()["faces"][0]["face_id"] == (
        world.alice_face)


def test_corrections_never_reach_another_gallery(world: World) -> None:
    c, mine, other = world.client, bearer(world.tokens["all"]), bearer(world.tokens["other"])
    vector = {"subject_id": "alice", "embedding": b64(fake_embedding(5))}
    assert_error(c.post("/negatives", json=vector, headers=other), 404, "subject_not_found")
    assert_error(c.post("/negatives", json={"subject_id": "bob", "face_id": world.alice_face},
                        headers=other), 404, "face_not_found")
    mine_negative = new_negative(world)
    assert_error(c.delete(f"/negatives/{mine_negative}", headers=other), 404,
                 "negative_not_found")
    assert_error(c.get("/negatives", params={"subject_id": "alice"}, headers=other), 404,
                 "subject_not_found")
    assert c.delete(f"/negatives/{mine_negative}", headers=mine).status_code == 200
    assert_error(c.post(f"/faces/{world.alice_face}/move", json={"subject_id": "x"},
                        headers=other), 404, "face_not_found")
    # Within its own gallery a move works, and the new subject is that gallery's.
    r = c.post(f"/faces/{world.bob_face}/move", json={"subject_id": "bobby"}, headers=other)
    assert r.status_code == 200 and r.json()["from_subject_id"] == "bob"
    assert_error(c.get("/subjects/bobby", headers=mine), 404, "subject_not_found")
    assert c.get("/subjects/bobby", headers=other).json()["face_count"] == 1


def test_control_characters_cannot_reach_another_gallery(world: World) -> None:
    """Stored ids of gallery b are "\\x1fb\\x1fbob": a client cannot spell them."""
    c, mine = world.client, bearer(world.tokens["all"])
    for path in ("/subjects/%1Fb%1Fbob", "/subjects/b%1Fbob"):
        assert c.get(path, headers=mine).status_code in (404, 422)
        assert c.delete(path, headers=mine).status_code in (404, 422)
    r = c.post("/verify", data={"subject_id": "\x1fb\x1fbob"},
               files=files(fake_photo(2, variant=3)), headers=mine)
    assert_error(r, 422, "invalid_field")
    assert c.get("/subjects/bob", headers=bearer(world.tokens["other"])).status_code == 200


def test_listing_walks_only_its_gallery_even_between_neighbours(
    make_client: AppFactory,
) -> None:
    """Galleries "a" and "ab" sort next to each other; pages of one never step into the other."""
    client = make_client(rate_limit_per_s=0)
    ring: KeyRing = client.app.state.services.keys
    tokens = {g: ring.create(f"k-{g}", SCOPES, g)[1] for g in ("", "a", "ab", "b")}
    people = {"": ["0", "a", "zz"], "a": ["a1", "a2", "a3"], "ab": ["x", "y"], "b": ["q"]}
    n = 0
    for gallery, subjects in people.items():
        for s in subjects:
            n += 1
            r = client.post("/enroll", data={"subject_id": s}, files=files(fake_photo(n)),
                            headers=bearer(tokens[gallery]))
            assert r.status_code == 201, r.text
    for gallery, subjects in people.items():
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            body = client.get("/subjects", params=params, headers=bearer(tokens[gallery])).json()
            seen += [s["subject_id"] for s in body["subjects"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(subjects), gallery
    # A cursor from gallery "a" is not valid for gallery "b".
    first = client.get("/subjects", params={"limit": 1}, headers=bearer(tokens["a"])).json()
    r = client.get("/subjects", params={"cursor": first["next_cursor"]},
                   headers=bearer(tokens["b"]))
    assert_error(r, 422, "invalid_cursor")


def test_namespace_mapping() -> None:
    default, b = Namespace(), Namespace("b")
    assert default.internal("x") == "x" and b.internal("x") == "\x1fb\x1fx"
    assert b.external("\x1fb\x1fx") == "x" and b.external("x") is None
    assert default.external("\x1fb\x1fx") is None and default.external("x") == "x"
    assert not Namespace("a").owns(Namespace("ab").internal("x"))
    with pytest.raises(ValueError):
        default.internal("\x1fb\x1fx")
    for bad in ("-x", "a b", "x" * 65, "ü", "a/b"):
        with pytest.raises(ValueError):
            validate_gallery(bad)


# ---------------------------------------------------------------- keys


def test_tokens_are_random_256_bit_and_stored_only_as_hashes(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(data_dir=tmp_path / "g")
    ring: KeyRing = client.app.state.services.keys
    record, token = ring.create("k", ["admin"])
    _, token2 = ring.create("k2", ["admin"])
    raw = base64.urlsafe_b64decode(token.removeprefix("fsk_") + "=")
    assert len(raw) == 32 and token != token2
    assert record.key_hash == hashlib.sha256(token.encode()).hexdigest()
    listed = client.get("/keys", headers=bearer(token)).json()["keys"]
    assert all("token" not in k for k in listed)
    client.__exit__(None, None, None)  # checkpoint: everything is in the main file
    disk = b"".join(p.read_bytes() for p in (tmp_path / "g").glob("gallery.sqlite3*"))
    assert token.encode() not in disk and token2.encode() not in disk
    assert record.key_hash.encode() in disk


def test_keys_created_at_run_time_are_enforced_at_once_and_revoking_all_keeps_them(
    client: TestClient,
) -> None:
    assert client.get("/subjects").status_code == 200  # no keys yet: the operator
    ring: KeyRing = client.app.state.services.keys
    record, token = ring.create("late", ["read"])
    assert_error(client.get("/subjects"), 401, "missing_api_key")
    assert client.get("/subjects", headers=bearer(token)).status_code == 200
    ring.revoke(record.key_id)
    assert_error(client.get("/subjects", headers=bearer(token)), 401, "revoked_api_key")
    assert_error(client.get("/subjects"), 401, "missing_api_key")  # not reopened


def test_an_admin_creates_and_revokes_keys_of_its_gallery(world: World) -> None:
    c, admin = world.client, bearer(world.tokens["admin"])
    r = c.post("/keys", json={"name": "kiosk-2", "scopes": ["enroll", "recognize"]},
               headers=admin)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["gallery"] is None and new["scopes"] == ["enroll", "recognize"]
    assert c.post("/embed", files=files(), headers=bearer(new["token"])).status_code == 200
    assert c.delete(f"/keys/{new['key_id']}", headers=admin).json()["revoked_at"]
    assert_error(c.post("/embed", files=files(), headers=bearer(new["token"])), 401,
                 "revoked_api_key")
    audit = bearer(world.tokens["audit"])
    actions = [e["action"] for e in c.get("/audit", headers=audit).json()["events"]]
    assert actions[-2:] == ["create_key", "revoke_key"]
    assert_error(c.post("/keys", json={"name": "x", "scopes": ["root"]}, headers=admin),
                 422, "invalid_field")


def test_open_endpoints_need_no_key(world: World) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert world.client.get(path).status_code == 200, path


def test_the_openapi_schema_declares_both_key_headers(world: World) -> None:
    schema = world.client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {"type": "http", "scheme": "bearer",
                                    "description": schemes["BearerKey"]["description"]}
    assert schemes["HeaderKey"]["in"] == "header" and schemes["HeaderKey"]["name"] == "X-API-Key"
    enroll = schema["paths"]["/v1/enroll"]["post"]
    assert {"BearerKey": []} in enroll["security"] and "401" in enroll["responses"]
    assert "security" not in schema["paths"]["/v1/healthz"]["get"]


def test_every_credential_sent_must_be_valid(world: World) -> None:
    """Found by schemathesis: a stray Authorization header was ignored when X-API-Key was
    valid. Now any malformed or conflicting credential is refused."""
    c, good = world.client, world.tokens["read"]
    for headers in ({"Authorization": "Basic dXNlcjpwdw==", "X-API-Key": good},
                    {"Authorization": good},  # no scheme
                    {"Authorization": f"Bearer {good}", "X-API-Key": world.tokens["all"]}):
        assert_error(c.get("/subjects", headers=headers), 401, "invalid_api_key")
    both = {"Authorization": f"Bearer {good}", "X-API-Key": good}
    assert c.get("/subjects", headers=both).status_code == 200
    assert c.get("/subjects", headers={"authorization": f"bearer {good}"}).status_code == 200


# ---------------------------------------------------------------- hardening (issue 19)


def test_a_second_value_of_a_credential_header_is_refused(world: World) -> None:
    """Only the first of two X-API-Key (or Authorization) headers used to be checked: a valid
    key followed by a bogus one, or by another gallery's key, got in."""
    c, good = world.client, world.tokens["read"]
    for second in ("bogus", world.tokens["other"], good):
        for name, value in (("X-API-Key", good), ("Authorization", f"Bearer {good}")):
            other = second if name == "X-API-Key" else f"Bearer {second}"
            r = c.get("/subjects", headers=[(name, value), (name, other)])
            assert_error(r, 401, "invalid_api_key")
    assert c.get("/subjects", headers=[("X-API-Key", good)]).status_code == 200


@pytest.mark.parametrize("name", ["   ", "\u00a0", "\u3000", "\u2028", " \t "])
def test_a_blank_key_name_is_422_not_500(world: World, name: str) -> None:
    r = world.client.post("/keys", json={"name": name, "scopes": ["enroll"]},
                          headers=bearer(world.tokens["admin"]))
    assert_error(r, 422, "invalid_field")
    assert "name" in r.json()["error"]["message"]
    # The connection is still good for the next request.
    assert world.client.get("/keys", headers=bearer(world.tokens["admin"])).status_code == 200


# Characters that spoof logs and the audit view: C1 controls, line/paragraph separators,
# bidi overrides and isolates, zero-width characters.
SPOOFING = ["\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\u202a", "\u2066", "\u2069",
            "\u200b", "\u200d", "\u2060", "\ufeff"]


@pytest.mark.parametrize("char", SPOOFING, ids=[f"U+{ord(c):04X}" for c in SPOOFING])
def test_identifiers_refuse_invisible_and_reordering_characters(world: World, char: str) -> None:
    c, mine = world.client, bearer(world.tokens["all"])
    code = f"U+{ord(char):04X}"
    r = c.post("/enroll", data={"subject_id": f"ali{char}ce"}, files=files(fake_photo(5)),
               headers=mine)
    assert_error(r, 422, "invalid_field")
    assert code in r.json()["error"]["message"], r.text
    r = c.post("/enroll", json={"subject_id": f"{char}x",
                                "image": base64.b64encode(fake_photo(5)).decode()},
               headers=mine)
    assert_error(r, 422, "invalid_field")
    r = c.post("/keys", json={"name": f"kiosk{char}", "scopes": ["enroll"]}, headers=mine)
    assert_error(r, 422, "invalid_field")
    assert code in r.json()["error"]["message"], r.text
    with pytest.raises(ValueError, match=re.escape(code)):  # as `faceserve keys create`
        world.ring.create(f"kiosk{char}", ["enroll"])
    assert {s["subject_id"] for s in c.get("/subjects", headers=mine).json()["subjects"]} == {
        "alice"}


def test_ordinary_unicode_identifiers_are_still_accepted(world: World) -> None:
    c, mine = world.client, bearer(world.tokens["all"])
    for n, subject in enumerate(["José Ñúñez", "李小龙", "עברית", "a b", "ü-42"]):
        r = c.post("/enroll", data={"subject_id": subject}, files=files(fake_photo(30 + n)),
                   headers=mine)
        assert r.status_code == 201 and r.json()["subject_id"] == subject, r.text
    r = c.post("/keys", json={"name": "Büro (Empfang)", "scopes": ["enroll"]}, headers=mine)
    assert r.status_code == 201, r.text


def test_the_command_lines_audit_label_is_not_a_key_name(world: World) -> None:
    r = world.client.post("/keys", json={"name": "(command line)", "scopes": ["admin"]},
                          headers=bearer(world.tokens["admin"]))
    assert_error(r, 422, "invalid_field")
    assert "(command line)" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="command line"):
        world.ring.create(" (command line) ", ["admin"])


def test_invalid_utf8_in_a_multipart_subject_id_is_422(world: World) -> None:
    """It used to be decoded as Latin-1 and stored under another id than the client meant."""
    boundary = "xXbOuNdArYXx"
    photo = fake_photo(6)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"subject_id\"\r\n\r\n".encode()
        + b"caf\xe9\r\n"
        + f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
        f"filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n".encode()
        + photo + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
               **bearer(world.tokens["all"])}
    r = world.client.post("/enroll", content=body, headers=headers)
    assert_error(r, 422, "invalid_field")
    assert "UTF-8" in r.json()["error"]["message"] and "subject_id" in r.json()["error"]["message"]
    # The same id correctly encoded is fine.
    good = body.replace(b"caf\xe9\r\n", "café\r\n".encode())
    r = world.client.post("/enroll", content=good, headers=headers)
    assert r.status_code == 201 and r.json()["subject_id"] == "café", r.text


def test_readyz_shows_totals_only_to_the_servers_metrics_keys(world: World) -> None:
    """Anyone may ask whether the server is ready; only a `metrics` key of the default gallery
    (the operator's) sees how many faces and subjects the whole server holds."""
    c = world.client
    for headers in ({}, bearer("fsk_not-a-key"), bearer(world.tokens["recognize"]),
                    bearer(world.tokens["other"]), bearer(world.tokens["revoked"])):
        r = c.get("/readyz", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        assert "gallery_faces" not in r.json() and "gallery_subjects" not in r.json(), headers
    assert "gallery_faces" not in c.get("/readyz", headers=bearer(world.tokens["admin"])).json()
    body = c.get("/readyz", headers=bearer(world.tokens["metrics"])).json()
    assert body["gallery_faces"] == 2 and body["gallery_subjects"] == 2


# ---------------------------------------------------------------- keyless mode on loopback


def loopback_client(client: TestClient) -> TestClient:
    """The same running app, reached as a browser on this machine would: the server's local
    address is 127.0.0.1 (scope["server"]), as under uvicorn bound to the loopback."""
    return TestClient(client.app, base_url="http://127.0.0.1:8000")


def test_keyless_loopback_refuses_other_host_names(client: TestClient) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends
    `Host: evil.example:8000`. Without keys, only loopback names are served."""
    local = loopback_client(client)
    assert local.get("/subjects").status_code == 200
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST:8000", "127.0.0.2"):
        r = local.get("/subjects", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    for host in ("evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example",
                 "", "evil.example"):
        r = local.get("/subjects", headers={"Host": host})
        assert_error(r, 403, "host_not_allowed")
        assert local.get("/healthz", headers={"Host": host}).status_code == 403


def test_keyless_loopback_refuses_cross_site_requests(client: TestClient) -> None:
    """A web page open on this machine can POST a multipart form to localhost without any
    preflight; its Origin names its own site, and that is refused without keys."""
    local = loopback_client(client)
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example:8000"):
        r = local.post("/enroll", data={"subject_id": "planted"}, files=files(fake_photo(40)),
                       headers={"Origin": origin})
        assert_error(r, 403, "cross_origin")
        assert_error(local.get("/subjects", headers={"Origin": origin}), 403, "cross_origin")
    assert local.get("/subjects/planted").status_code == 404
    for n, origin in enumerate(("http://127.0.0.1:8000", "http://localhost:3000")):
        r = local.post("/enroll", data={"subject_id": f"own-{n}"}, files=files(fake_photo(41)),
                       headers={"Origin": origin})
        assert r.status_code == 201, r.text


def test_with_keys_the_host_and_origin_are_not_checked(world: World) -> None:
    """Keys are what protects a server that has them (a browser cannot attach one to a
    cross-site request without a CORS preflight); a proxy may use any host name."""
    local = loopback_client(world.client)
    headers = {"Host": "faces.example.org", "Origin": "https://console.example.org",
               **bearer(world.tokens["read"])}
    assert local.get("/subjects", headers=headers).status_code == 200
    assert_error(local.get("/subjects", headers={"Host": "faces.example.org"}), 401,
                 "missing_api_key")


def test_keyless_on_another_address_is_not_host_checked(client: TestClient) -> None:
    """`--insecure` on a network address: clients use whatever name reaches the server."""
    lan = TestClient(client.app, base_url="http://192.168.1.5:8000")
    assert lan.get("/subjects", headers={"Host": "faces.lan:8000"}).status_code == 200


# ---------------------------------------------------------------- faces added to a subject


def test_adding_a_face_to_an_existing_subject_is_its_own_audited_action(world: World) -> None:
    """An enroll-only key adds someone else's face to ``alice`` and replaces her metadata: the
    audit says ``add_face``, by which key, and which metadata keys were replaced."""
    c, enroll_key = world.client, bearer(world.tokens["enroll"])
    admin = bearer(world.tokens["audit"])
    r = c.post("/enroll", data={"subject_id": "alice", "metadata": '{"badge": "x"}',
                                "replace_metadata": "true"},
               files=files(fake_photo(99)), headers=enroll_key)
    assert r.status_code == 201, r.text
    events = c.get("/audit", headers=admin).json()["events"]
    first, last = events[0], events[-1]
    assert first["action"] == "enroll" and first["subject_id"] == "alice"
    assert last["action"] == "add_face" and last["key_name"] == "enroll"
    assert last["subject_id"] == "alice" and last["face_id"] == r.json()["face_id"]
    assert last["detail"] == {"created": True, "metadata_replaced": True,
                              "metadata_keys_before": [], "metadata_keys_after": ["badge"]}
    # A replay replaces the metadata again: audited again, with the keys before and after.
    r = c.post("/enroll", data={"subject_id": "alice", "metadata": '{"name": "y"}',
                                "replace_metadata": "true"},
               files=files(fake_photo(99)), headers=enroll_key)
    assert r.status_code == 200, r.text
    last = c.get("/audit", headers=admin).json()["events"][-1]
    assert last["action"] == "add_face" and last["detail"] == {
        "created": False, "metadata_replaced": True,
        "metadata_keys_before": ["badge"], "metadata_keys_after": ["name"]}
    assert [e["action"] for e in c.get("/audit", params={"action": "add_face"},
                                       headers=admin).json()["events"]] == ["add_face"] * 2


def test_a_deployment_can_require_admin_to_add_faces_to_a_subject(
    make_client: AppFactory,
) -> None:
    client = make_client(add_faces_scope="admin", rate_limit_per_s=0)
    ring: KeyRing = client.app.state.services.keys
    _, kiosk = ring.create("kiosk", ["enroll"])
    _, operator = ring.create("operator", ["enroll", "read", "admin"])
    r = client.post("/enroll", data={"subject_id": "obama"}, files=files(fake_photo(5)),
                    headers=bearer(kiosk))
    assert r.status_code == 201, r.text  # a new subject: enroll suffices
    r = client.post("/enroll", data={"subject_id": "obama"}, files=files(fake_photo(6)),
                    headers=bearer(kiosk))
    assert_error(r, 403, "insufficient_scope")
    assert "already exists" in r.json()["error"]["message"]
    assert client.get("/subjects/obama", headers=bearer(operator)).json()["face_count"] == 1
    r = client.post("/enroll", data={"subject_id": "obama"}, files=files(fake_photo(6)),
                    headers=bearer(operator))
    assert r.status_code == 201, r.text


def test_metrics_are_the_default_gallerys_metrics_keys_only(world: World) -> None:
    """Server-wide counts and every tenant's traffic: not for another gallery's admin."""
    c = world.client
    r = c.get("/metrics", headers=bearer(world.tokens["other"]))  # every scope, gallery "b"
    assert_error(r, 403, "insufficient_scope")
    assert "faceserve_gallery_faces" not in r.text
    assert_error(c.get("/metrics", headers=bearer(world.tokens["admin"])), 403,
                 "insufficient_scope")  # admin is keys and galleries now
    r = c.get("/metrics", headers=bearer(world.tokens["metrics"]))
    assert r.status_code == 200 and "faceserve_gallery_faces 2.0" in r.text


def test_a_tenants_audit_ids_have_no_gaps_for_other_galleries(world: World) -> None:
    c = world.client
    other, default = bearer(world.tokens["other"]), bearer(world.tokens["all"])
    for i in range(3):  # the default gallery acts between the tenant's events
        assert c.post("/enroll", data={"subject_id": f"d{i}"}, files=files(fake_photo(40 + i)),
                      headers=default).status_code == 201
        assert c.post("/enroll", data={"subject_id": f"t{i}"}, files=files(fake_photo(50 + i)),
                      headers=other).status_code == 201
    events = c.get("/audit", headers=other).json()["events"]
    assert [e["subject_id"] for e in events] == ["bob", "t0", "t1", "t2"]
    assert [e["id"] for e in events] == [1, 2, 3, 4]
    page = c.get("/audit", params={"after": 2, "limit": 1}, headers=other).json()
    assert [e["subject_id"] for e in page["events"]] == ["t1"] and page["next_after"] == 3


def test_naming_a_cluster_into_an_existing_subject_follows_add_faces_scope(
    make_client: AppFactory,
) -> None:
    """Naming enrolls the cluster's faces: into a subject that exists, it is adding faces to
    it, which such a deployment reserves to another scope, as POST /enroll does."""
    client = make_client(add_faces_scope="admin", rate_limit_per_s=0, remember_unknown=True)
    ring: KeyRing = client.app.state.services.keys
    _, kiosk = ring.create("kiosk", ["enroll", "recognize"])
    _, operator = ring.create("operator", ["enroll", "admin"])
    r = client.post("/enroll", data={"subject_id": "obama"}, files=files(fake_photo(5)),
                    headers=bearer(kiosk))
    assert r.status_code == 201, r.text
    for v in range(2):
        r = client.post("/identify", files=files(fake_photo(6, variant=v)),
                        data={"remember_unknown": "true", "threshold": "0.99"},
                        headers=bearer(kiosk))
        assert r.json()["faces"][0]["unknown_face_id"], r.text
    [cluster] = client.post("/clusters", json={}, headers=bearer(kiosk)).json()["clusters"]
    path = f"/clusters/{cluster['cluster_id']}/name"
    r = client.post(path, json={"subject_id": "obama"}, headers=bearer(kiosk))
    assert_error(r, 403, "insufficient_scope")
    assert "already exists" in r.json()["error"]["message"]
    r = client.post(path, json={"subject_id": "obama"}, headers=bearer(operator))
    assert r.status_code == 200 and len(r.json()["face_ids"]) == 2, r.text


def test_an_admin_of_the_default_gallery_revokes_any_gallerys_key(world: World) -> None:
    c = world.client
    other_key = world.key_ids["other"]  # gallery b
    r = c.delete(f"/keys/{other_key}", headers=bearer(world.tokens["admin"]))
    assert r.status_code == 200 and r.json()["gallery"] == "b", r.text
    assert_error(c.get("/subjects", headers=bearer(world.tokens["other"])), 401,
                 "revoked_api_key")
    # The revocation is in gallery b's log, where its tenant reads its keys' history.
    events = c.get("/audit", params={"gallery": "b", "action": "revoke_key"},
                   headers=bearer(world.tokens["audit"])).json()["events"]
    assert [e["detail"]["key_id"] for e in events] == [other_key]
