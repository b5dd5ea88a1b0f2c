"""Unknown faces over HTTP (issue 17): remember_unknown, POST/GET /clusters, name, discard, TTL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service import postgres_util
from tests.service.conftest import AppFactory, fake_photo


@pytest.fixture(params=["sqlite", "postgres"])
def pool_client(request: pytest.FixtureRequest, make_client: AppFactory) -> Iterator[TestClient]:
    """An app that remembers unknown faces, on SQLite or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield make_client(remember_unknown=True)
        return
    with postgres_util.fresh_schema() as (url, _):
        client = make_client(remember_unknown=True, database_url=url)
        yield client
        client.__exit__(None, None, None)  # before the schema is dropped


def png(data: bytes) -> tuple[str, bytes, str]:
    return ("p.png", data, "image/png")


def identify(client: TestClient, person: int, variant: int = 0, **fields: Any) -> Any:
    data = {"remember_unknown": "true", "source": f"album/{person}-{variant}.png", **fields}
    r = client.post("/identify", files={"image": png(fake_photo(person, variant=variant))},
                    data=data)
    assert r.status_code == 200, r.text
    return r.json()


def sizes(listing: dict[str, Any]) -> list[int]:
    return [c["size"] for c in listing["clusters"]]


def test_remember_unknown_is_refused_unless_the_server_allows_it(client: TestClient) -> None:
    r = client.post("/identify", files={"image": png(fake_photo(7))},
                    data={"remember_unknown": "true"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "remember_unknown_off"


def test_unknown_faces_are_clustered_named_and_discarded(pool_client: TestClient) -> None:
    client = pool_client
    r = client.post("/enroll", files={"image": png(fake_photo(1))}, data={"subject_id": "one"})
    assert r.status_code in (200, 201), r.text
    ids7 = [identify(client, 7, v)["faces"][0]["unknown_face_id"] for v in range(3)]
    ids8 = [identify(client, 8, v)["faces"][0]["unknown_face_id"] for v in range(2)]
    assert all(ids7 + ids8)
    known = identify(client, 1, 4)["faces"][0]
    assert known["match"]["subject_id"] == "one" and known.get("unknown_face_id") is None
    identify(client, 9)

    assert client.get("/clusters").json()["pending"] == 6
    listing = client.post("/clusters", json={}).json()
    assert sizes(listing) == [3, 2] and listing["unclustered"] == 1 and listing["pending"] == 0
    seven, eight = listing["clusters"]
    assert sorted(f["face_id"] for f in seven["faces"]) == sorted(ids7)
    assert {f["source"] for f in eight["faces"]} == {"album/8-0.png", "album/8-1.png"}
    assert client.get("/clusters").json()["clusters"] == listing["clusters"]
    chip = client.get(f"/clusters/faces/{seven['representative_face_id']}/chip")
    assert chip.status_code == 200 and chip.headers["content-type"] == "image/jpeg"

    # Incremental: a new photo of 8 joins 8's cluster, which keeps its id.
    identify(client, 8, 5)
    again = client.post("/clusters", json={"mode": "incremental"}).json()
    assert sizes(again) == [3, 3]
    assert {c["cluster_id"] for c in again["clusters"]} == {seven["cluster_id"],
                                                            eight["cluster_id"]}

    # Naming enrolls exactly the cluster's faces, and identify then finds the person.
    r = client.post(f"/clusters/{seven['cluster_id']}/name", json={"subject_id": "seven"})
    assert r.status_code == 200, r.text
    assert len(r.json()["face_ids"]) == 3
    subject = client.get("/subjects/seven").json()
    assert sorted(f["face_id"] for f in subject["faces"]) == sorted(r.json()["face_ids"])
    r = client.post("/identify", files={"image": png(fake_photo(7, variant=9))})
    assert r.json()["faces"][0]["match"]["subject_id"] == "seven"
    assert [c["cluster_id"] for c in client.get("/clusters").json()["clusters"]] == [
        eight["cluster_id"]]

    # Discarding erases the faces; the cluster is then gone.
    r = client.delete(f"/clusters/{eight['cluster_id']}")
    assert r.status_code == 200 and r.json()["faces_deleted"] == 3
    assert client.delete(f"/clusters/{eight['cluster_id']}").status_code == 404
    assert client.post(f"/clusters/{eight['cluster_id']}/name",
                       json={"subject_id": "x"}).status_code == 404
    left = client.get("/clusters").json()
    assert left["clusters"] == [] and left["unclustered"] == 1


def test_full_recluster_matches_incremental(make_client: AppFactory) -> None:
    client = make_client(remember_unknown=True)
    for person in (20, 21, 22):
        for v in range(2):
            identify(client, person, v)
    incremental = client.post("/clusters").json()
    full = client.post("/clusters", json={"mode": "full"}).json()
    assert sizes(incremental) == sizes(full) == [2, 2, 2]
    # Ids are kept: a full recluster finding the same groups changes nothing visible.
    assert incremental["clusters"] == full["clusters"]


def test_pool_faces_expire_after_the_retention_limit(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(remember_unknown=True, unknown_ttl_days=1,
                         data_dir=tmp_path / "pool")
    identify(client, 30)
    identify(client, 31)
    db = tmp_path / "pool" / "gallery.sqlite3"
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE unknown_faces SET created_at = '2000-01-01T00:00:00.000Z' "
                     "WHERE source = 'album/30-0.png'")
        conn.commit()
    finally:
        conn.close()
    assert client.get("/clusters").json()["pending"] == 1
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT source FROM unknown_faces").fetchall() == [
            ("album/31-0.png",)]
    finally:
        conn.close()


def test_a_cluster_of_another_models_faces_is_not_enrolled(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(remember_unknown=True, data_dir=tmp_path / "old")
    identify(client, 40, 0)
    identify(client, 40, 1)
    [cluster] = client.post("/clusters").json()["clusters"]
    conn = sqlite3.connect(tmp_path / "old" / "gallery.sqlite3")
    try:
        conn.execute("UPDATE unknown_faces SET model = 'retired-model'")
        conn.commit()
    finally:
        conn.close()
    r = client.post(f"/clusters/{cluster['cluster_id']}/name", json={"subject_id": "forty"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"
    assert client.get("/subjects/forty").status_code == 404


def test_merge_and_split_stick_through_reclustering(pool_client: TestClient) -> None:
    client = pool_client
    for person in (50, 51):
        for v in range(2):
            identify(client, person, v)
    a, b = client.post("/clusters").json()["clusters"]
    merged = client.post(f"/clusters/{a['cluster_id']}/merge",
                         json={"into": b["cluster_id"]}).json()
    assert sizes(merged) == [4] and merged["clusters"][0]["cluster_id"] == b["cluster_id"]
    # A full recluster would separate 50 and 51; the user said they are one person.
    assert sizes(client.post("/clusters", json={"mode": "full"}).json()) == [4]

    out = a["faces"][0]["face_id"]
    split = client.post(f"/clusters/{b['cluster_id']}/split", json={"face_ids": [out]}).json()
    assert sizes(split) == [3] and split["unclustered"] == 1
    for mode in ("full", "incremental"):
        again = client.post("/clusters", json={"mode": mode}).json()
        assert sizes(again) == [3] and again["unclustered"] == 1
        assert out not in {f["face_id"] for f in again["clusters"][0]["faces"]}
    # The face split out stays alone even beside a new face of the same person; the new one
    # (the fake pipeline's 50 and 51 are unalike, so the merged group's mean similarity to
    # it is below the threshold) stays alone too.
    identify(client, 51, 7)
    latest = client.post("/clusters").json()
    assert sizes(latest) == [3] and latest["unclustered"] == 2

    r = client.post(f"/clusters/{b['cluster_id']}/split",
                    json={"face_ids": [f["face_id"] for f in split["clusters"][0]["faces"]]})
    assert r.status_code == 422  # not all of them
    assert client.post(f"/clusters/{b['cluster_id']}/merge",
                       json={"into": b["cluster_id"]}).status_code == 422


def test_clusters_sharing_a_photo_cannot_be_merged(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(remember_unknown=True, data_dir=tmp_path / "cl")
    body = client.post("/identify", files={"image": png(fake_photo(60, faces=2))},
                       data={"remember_unknown": "true"}).json()
    assert len(body["faces"]) == 2
    for v in (1, 2):
        client.post("/identify", files={"image": png(fake_photo(60, faces=2, variant=v))},
                    data={"remember_unknown": "true"})
    a, b = client.post("/clusters").json()["clusters"]  # face 0 and face 1 of person 60
    r = client.post(f"/clusters/{a['cluster_id']}/merge", json={"into": b["cluster_id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "cannot_link"
