"""Galleries over HTTP (issue 20): list with counts, create, delete (force erases as DELETE
/subjects does, and revokes the gallery's keys); only an admin of the default gallery manages
them; keys created for a gallery by that admin. On SQLite and PostgreSQL.

Also the scopes' backward compatibility through the HTTP API: a key stored before the scopes
were split keeps every power its ``admin`` gave it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.gallery.store.sqlite import FILENAME, MIGRATIONS
from service.security.keys import SCOPES, KeyRing, hash_token
from tests.service import postgres_util
from tests.service.conftest import AppFactory, fake_photo


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def photo(person: int, variant: int = 0) -> dict[str, Any]:
    return {"image": ("p.png", fake_photo(person, variant=variant), "image/png")}


def error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


@dataclass
class Server:
    client: TestClient
    ring: KeyRing
    operator: str  # every scope, default gallery
    admin: str  # admin alone, default gallery


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, make_client: AppFactory) -> Iterator[Server]:
    def make(**settings: Any) -> Server:
        client = make_client(rate_limit_per_s=0, remember_unknown=True, **settings)
        ring: KeyRing = client.app.state.services.keys
        return Server(client, ring, ring.create("operator", SCOPES)[1],
                      ring.create("admin", ["admin"])[1])

    if request.param == "sqlite":
        yield make()
        return
    with postgres_util.fresh_schema() as (url, _):
        made = make(database_url=url)
        yield made
        made.client.__exit__(None, None, None)  # before the schema is dropped


def galleries(s: Server) -> dict[str | None, dict[str, Any]]:
    r = s.client.get("/galleries", headers=bearer(s.admin))
    assert r.status_code == 200, r.text
    return {g.get("name"): g for g in r.json()["galleries"]}


def test_galleries_are_created_listed_and_given_keys(server: Server) -> None:
    c, admin = server.client, bearer(server.admin)
    assert list(galleries(server)) == [None]  # the default gallery only
    r = c.post("/galleries", json={"name": "acme"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "acme" and r.json()["subjects"] == 0 and r.json()["created_at"]
    error(c.post("/galleries", json={"name": "acme"}, headers=admin), 409, "gallery_exists")
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "ü"):
        error(c.post("/galleries", json={"name": bad}, headers=admin), 422, "invalid_field")
    error(c.post("/galleries", json={"name": "ok", "extra": 1}, headers=admin), 422,
          "invalid_field")

    # Its first key, from the default gallery's admin; then it enrolls there.
    r = c.post("/keys", json={"name": "acme-app", "scopes": ["enroll", "read", "admin"],
                              "gallery": "acme"}, headers=admin)
    assert r.status_code == 201 and r.json()["gallery"] == "acme", r.text
    acme = bearer(r.json()["token"])
    error(c.post("/keys", json={"name": "x", "scopes": ["enroll"], "gallery": "nowhere"},
                 headers=admin), 404, "gallery_not_found")
    for n in range(2):
        assert c.post("/enroll", data={"subject_id": f"p{n}"}, files=photo(n),
                      headers=acme).status_code == 201
    c.post("/enroll", data={"subject_id": "p0"}, files=photo(0, 1), headers=acme)
    assert c.post("/enroll", data={"subject_id": "home"}, files=photo(9),
                  headers=bearer(server.operator)).status_code == 201
    listed = galleries(server)
    assert list(listed) == [None, "acme"]
    assert (listed["acme"]["subjects"], listed["acme"]["faces"],
            listed["acme"]["active_keys"]) == (2, 3, 1)
    assert listed[None]["default"] is True and listed[None]["subjects"] == 1
    assert listed[None]["active_keys"] == 2
    assert [k["name"] for k in c.get("/keys", params={"gallery": "acme"},
                                     headers=admin).json()["keys"]] == ["acme-app"]

    # An admin bound to acme manages acme's keys, but no gallery and no other gallery's keys.
    error(c.get("/galleries", headers=acme), 403, "insufficient_scope")
    error(c.post("/galleries", json={"name": "mine"}, headers=acme), 403, "insufficient_scope")
    error(c.delete("/galleries/acme", headers=acme), 403, "insufficient_scope")
    error(c.post("/keys", json={"name": "x", "scopes": ["enroll"], "gallery": "other"},
                 headers=acme), 403, "insufficient_scope")
    error(c.get("/keys", params={"gallery": "other"}, headers=acme), 403, "insufficient_scope")
    r = c.post("/keys", json={"name": "acme-kiosk", "scopes": ["enroll"], "gallery": "acme"},
               headers=acme)
    assert r.status_code == 201, r.text
    events = [(e["action"], e["detail"].get("name")) for e in c.get(
        "/audit", params={"gallery": "acme"}, headers=bearer(server.operator)).json()["events"]]
    assert ("create_key", "acme-app") in events and ("create_key", "acme-kiosk") in events


def test_a_non_empty_gallery_is_deleted_only_with_force_which_erases_it(server: Server) -> None:
    c, admin, operator = server.client, bearer(server.admin), bearer(server.operator)
    _, token = server.ring.create("tenant", SCOPES, "t1")  # as `keys create --gallery t1`
    tenant = bearer(token)
    _, idle = server.ring.create("idle", ["recognize"], "t1")
    for n in range(3):
        assert c.post("/enroll", data={"subject_id": f"s{n}"}, files=photo(n),
                      headers=tenant).status_code == 201
    r = c.post("/identify", files=photo(40), data={"remember_unknown": "true", "threshold": "0.99"},
               headers=tenant)
    assert r.json()["faces"][0]["unknown_face_id"], r.text
    assert c.post("/enroll", data={"subject_id": "s0"}, files=photo(50),
                  headers=operator).status_code == 201  # same id, default gallery

    r = c.delete("/galleries/t1", headers=admin)
    error(r, 409, "gallery_not_empty")
    assert "3 subjects" in r.json()["error"]["message"]
    assert c.get("/subjects/s1", headers=tenant).status_code == 200  # nothing was touched
    error(c.delete("/galleries/nope", params={"force": "true"}, headers=admin), 404,
          "gallery_not_found")

    r = c.delete("/galleries/t1", params={"force": "true"}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["subjects_deleted"], body["faces_deleted"], body["unknown_faces_deleted"]) == (
        3, 3, 1)
    assert len(body["keys_revoked"]) == 2
    error(c.get("/subjects", headers=tenant), 401, "revoked_api_key")
    error(c.post("/embed", files=photo(1), headers=bearer(idle)), 401, "revoked_api_key")
    assert list(galleries(server)) == [None]
    # The default gallery's subject of the same id is untouched, and nobody finds the erased.
    assert c.get("/subjects/s0", headers=operator).json()["face_count"] == 1
    r = c.post("/identify", files=photo(1, 3), headers=operator).json()
    assert [cand["subject_id"] for cand in r["faces"][0]["candidates"]] == ["s0"]
    assert server.client.app.state.services.gallery.size == 1

    # The erasure trail: each subject in the gallery's own log (the operator reads it with
    # `gallery`), and the deletion in the default gallery's.
    events = c.get("/audit", params={"gallery": "t1"}, headers=operator).json()["events"]
    erased = sorted(e["subject_id"] for e in events if e["action"] == "delete_subject")
    assert erased == ["s0", "s1", "s2"]
    assert sum(e["action"] == "revoke_key" for e in events) == 2
    mine = c.get("/audit", params={"action": "delete_gallery"}, headers=operator).json()
    [event] = mine["events"]
    assert event["key_name"] == "admin" and event["detail"]["gallery"] == "t1"
    assert event["detail"]["subjects_deleted"] == 3

    # The name can be used again: an empty gallery.
    assert c.post("/galleries", json={"name": "t1"}, headers=admin).status_code == 201
    assert galleries(server)["t1"]["subjects"] == 0


def test_an_empty_gallery_is_deleted_and_its_keys_revoked(server: Server) -> None:
    c, admin = server.client, bearer(server.admin)
    assert c.post("/galleries", json={"name": "e"}, headers=admin).status_code == 201
    key = c.post("/keys", json={"name": "k", "scopes": ["recognize"], "gallery": "e"},
                 headers=admin).json()
    r = c.delete("/galleries/e", headers=admin)
    assert r.status_code == 200 and r.json()["keys_revoked"] == [key["key_id"]], r.text
    error(c.post("/embed", files=photo(1), headers=bearer(key["token"])), 401,
          "revoked_api_key")
    assert "e" not in galleries(server)


def test_only_the_default_gallerys_audit_keys_read_other_logs(server: Server) -> None:
    c = server.client
    _, tenant = server.ring.create("tenant-audit", ["audit"], "t2")
    error(c.get("/audit", params={"gallery": "other"}, headers=bearer(tenant)), 403,
          "insufficient_scope")
    assert c.get("/audit", params={"gallery": "t2"}, headers=bearer(tenant)).status_code == 200


# ---------------------------------------------------------------- keys stored before scopes split


def test_a_key_stored_with_the_old_admin_scope_still_does_everything_it_did(
    make_client: AppFactory, tmp_path: Path,
) -> None:
    """A gallery written before issue 20 (schema without the galleries table), whose `admin`
    key listed, erased, read the audit log and metrics: it still does, and may now also
    manage galleries; a new admin-only key cannot read subjects."""
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    upto = next(i for i, m in enumerate(MIGRATIONS) if any("galleries" in s for s in m))
    conn = sqlite3.connect(data_dir / FILENAME)
    for statement in [s for m in MIGRATIONS[:upto] for s in m]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (upto,))
    old = {"ops": ("fsk_old-admin-key", "admin"), "kiosk": ("fsk_old-kiosk-key", "enroll")}
    for name, (token, scopes) in old.items():
        conn.execute("INSERT INTO api_keys (key_id, name, key_hash, scopes, gallery, created_at)"
                     " VALUES (?, ?, ?, ?, '', '2025-01-01T00:00:00.000Z')",
                     (f"k_{name}", name, hash_token(token), scopes))
    conn.commit()
    conn.close()

    c = make_client(data_dir=data_dir, rate_limit_per_s=0)
    ops, kiosk = bearer(old["ops"][0]), bearer(old["kiosk"][0])
    r = c.post("/enroll", data={"subject_id": "alice"}, files=photo(1), headers=kiosk)
    assert r.status_code == 201, r.text
    face = r.json()["face_id"]
    assert c.get("/subjects", headers=ops).json()["subjects"][0]["subject_id"] == "alice"
    assert c.get(f"/faces/{face}", headers=ops).status_code == 200
    assert c.get("/audit", headers=ops).json()["events"][0]["action"] == "enroll"
    assert c.get("/metrics", headers=ops).status_code == 200
    assert c.get("/keys", headers=ops).status_code == 200
    assert c.get("/galleries", headers=ops).status_code == 200
    listed = {k["name"]: k["scopes"] for k in c.get("/keys", headers=ops).json()["keys"]}
    assert listed == {"ops": ["read", "erase", "metrics", "audit", "admin"], "kiosk": ["enroll"]}
    assert c.delete("/subjects/alice", headers=ops).status_code == 200
    error(c.get("/subjects", headers=kiosk), 403, "insufficient_scope")  # never had it

    new = c.post("/keys", json={"name": "new-admin", "scopes": ["admin"]}, headers=ops).json()
    assert new["scopes"] == ["admin"]
    error(c.get("/subjects", headers=bearer(new["token"])), 403, "insufficient_scope")
    assert c.get("/keys", headers=bearer(new["token"])).status_code == 200


def test_a_server_without_keys_acts_with_every_scope(client: TestClient) -> None:
    """No key configured (loopback only): the operator, who may do everything."""
    assert client.post("/galleries", json={"name": "local"}).status_code == 201
    assert [g.get("name") for g in client.get("/galleries").json()["galleries"]] == [
        None, "local"]
    r = client.post("/enroll", data={"subject_id": "ann", "metadata": '{"name": "Ann"}'},
                    files=photo(3))
    assert r.status_code == 201, r.text
    r = client.post("/identify", files=photo(3, 1), data={"include_metadata": "true"})
    assert r.json()["faces"][0]["candidates"][0]["metadata"] == {"name": "Ann"}
    for path in ("/subjects", "/audit", "/metrics", "/keys", "/clusters"):
        assert client.get(path).status_code == 200, path
    assert client.delete("/galleries/local").status_code == 200
