"""Erasure over the API: after DELETE the subject's embeddings, chips, metadata and image hashes
are gone from the store, the index and the bytes of every file in the data directory; the audit
log says who enrolled and who erased, and holds nothing biometric.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from service.gallery.gallery import Gallery
from tests.service.conftest import AppFactory, FakePipeline, fake_photo


class NoisyChips(FakePipeline):
    """Chips of seeded noise: their JPEG bytes are unique, so a leak of one can be found on disk.
    Pixel (0, 0) still carries the identity the fake embedder reads."""

    def align(self, image: np.ndarray, faces: Any) -> np.ndarray:
        chips = super().align(image, faces)
        for j in range(len(chips)):
            seed = int(chips[j, 0, 0, 0]) * 65536 + int(chips[j, 0, 0, 1]) * 256
            noise = np.random.default_rng(seed + j).integers(0, 256, chips[j].shape, np.uint8)
            noise[0, 0] = chips[j, 0, 0]
            chips[j] = noise
        return chips


def disk(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}


def enroll(client: TestClient, token: str, subject: str, person: int, variant: int,
           **fields: str) -> str:
    r = client.post("/enroll", data={"subject_id": subject, **fields},
                    files={"image": ("p.png", fake_photo(person, variant=variant), "image/png")},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return r.json()["face_id"]


def test_delete_erases_every_byte_and_the_audit_log_says_who(
    make_client: AppFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "g"
    client = make_client(NoisyChips(), data_dir=data_dir, rate_limit_per_s=0)
    services = client.app.state.services
    gallery: Gallery = services.gallery
    _, kiosk = services.keys.create("kiosk-7", ["enroll"])
    _, ops = services.keys.create("dpo-office", ["read", "erase", "audit", "recognize"])
    admin = {"Authorization": f"Bearer {ops}"}

    victim = [enroll(client, kiosk, "erase-me", 11, v, metadata='{"note": "erase-me-meta"}')
              for v in (1, 2)]
    kept = enroll(client, kiosk, "kept", 12, 1)
    gallery.snapshot()  # an index file on disk holding the victim's vectors too

    def needles() -> dict[str, bytes]:
        out: dict[str, bytes] = {"metadata": b"erase-me-meta"}
        for i, face_id in enumerate(victim):
            record = gallery.get_face(face_id)
            out[f"embedding {i}"] = record.embedding.astype("<f4").tobytes()
            out[f"sha256 {i}"] = record.image_sha256.encode()
            chip = gallery.get_chip(face_id)
            assert chip is not None and len(chip) > 2048
            # A chip spans several pages (each with a link header): look for its two ends.
            out[f"chip {i} head"], out[f"chip {i} tail"] = chip[200:712], chip[-512:]
        return out

    wanted = needles()
    # Its first 64 bytes only: a row bigger than a page keeps a varying share of itself on the
    # leaf (SQLite's local payload is 489 + (size - 489) mod 4092 bytes), so with some chip
    # sizes the embedding itself continues on an overflow page, behind a 4-byte page link.
    kept_vector = gallery.get_face(kept).embedding.astype("<f4").tobytes()[:64]
    before = b"".join(disk(data_dir).values())
    missing = [what for what, n in wanted.items() if n not in before]
    assert missing == []  # the search below can see every needle at all

    r = client.delete("/subjects/erase-me", headers=admin)
    assert r.status_code == 200 and r.json()["faces_deleted"] == 2, r.text

    # Store and index: gone, and no search can return them.
    assert client.get("/subjects/erase-me", headers=admin).status_code == 404
    for face_id in victim:
        assert client.get(f"/faces/{face_id}", headers=admin).status_code == 404
    probe = base64.urlsafe_b64encode(wanted["embedding 0"]).decode().rstrip("=")
    r = client.get("/identify", params={"embedding": probe, "k": 10}, headers=admin).json()
    assert [c["subject_id"] for c in r["candidates"]] == ["kept"]

    # Disk, right after the response (the store checkpoints and truncates its WAL on delete),
    # then after a clean shutdown (which writes a fresh index snapshot).
    for moment in ("after DELETE", "after shutdown"):
        files = disk(data_dir)
        assert "gallery.sqlite3" in files
        leaks = [(what, name) for what, n in wanted.items()
                 for name, content in files.items() if n in content]
        assert leaks == [], moment
        assert kept_vector in b"".join(files.values()), moment  # the search works
        if moment == "after DELETE":
            client.__exit__(None, None, None)

    # The audit log: who (key name), what, when; subject ids stay, nothing biometric does.
    with sqlite3.connect(data_dir / "gallery.sqlite3") as db:
        rows = db.execute(
            "SELECT key_name, action, subject_id, face_id, detail, at FROM audit ORDER BY id"
        ).fetchall()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("SELECT count(*) FROM subjects WHERE subject_id = 'erase-me'"
                          ).fetchone()[0] == 0
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("kiosk-7", "enroll", "erase-me", victim[0]),
        ("kiosk-7", "add_face", "erase-me", victim[1]),  # the subject existed
        ("kiosk-7", "enroll", "kept", kept),
        ("dpo-office", "delete_subject", "erase-me", None),
    ]
    assert rows[-1][4] == '{"faces_deleted":2}' and all(r[5].endswith("Z") for r in rows)
    assert {"api_keys", "audit"} <= tables


def test_delete_face_erases_that_template(make_client: AppFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "g"
    client = make_client(NoisyChips(), data_dir=data_dir)
    gallery: Gallery = client.app.state.services.gallery
    first = client.post("/enroll", data={"subject_id": "s"},
                        files={"image": ("a.png", fake_photo(21, variant=1), "image/png")})
    second = client.post("/enroll", data={"subject_id": "s"},
                         files={"image": ("b.png", fake_photo(22, variant=1), "image/png")})
    gone, stays = first.json()["face_id"], second.json()["face_id"]
    vector = gallery.get_face(gone).embedding.astype("<f4").tobytes()
    chip_tail = gallery.get_chip(gone)[-512:]
    assert client.delete(f"/faces/{gone}").status_code == 200
    files = b"".join(disk(data_dir).values())
    assert vector not in files and chip_tail not in files
    assert client.get("/subjects/s").json()["faces"][0]["face_id"] == stays
    events = client.get("/audit").json()["events"]
    assert [(e["action"], e["key_name"], e["face_id"]) for e in events][-1] == (
        "delete_face", "(no key)", gone)


def test_audit_pages_and_filters(client: TestClient) -> None:
    for i in range(5):
        r = client.post("/enroll", data={"subject_id": f"p{i}"},
                        files={"image": ("p.png", fake_photo(30 + i), "image/png")})
        assert r.status_code == 201
    client.delete("/subjects/p0")
    page = client.get("/audit", params={"limit": 2}).json()
    assert [e["subject_id"] for e in page["events"]] == ["p0", "p1"]
    page = client.get("/audit", params={"limit": 2, "after": page["next_after"]}).json()
    assert [e["subject_id"] for e in page["events"]] == ["p2", "p3"]
    last = client.get("/audit", params={"after": page["next_after"]}).json()
    assert [e["action"] for e in last["events"]] == ["enroll", "delete_subject"]
    assert last["next_after"] is None
    deletes = client.get("/audit", params={"action": "delete_subject"}).json()["events"]
    assert [e["subject_id"] for e in deletes] == ["p0"]
    assert client.get("/audit", params={"action": "steal"}).status_code == 422
    for event in client.get("/audit").json()["events"]:
        assert set(event) == {"id", "at", "key_id", "key_name", "action", "subject_id",
                              "face_id", "detail"}
        assert set(event["detail"]) <= {"created", "faces_deleted"}


def test_replaced_metadata_and_dropped_faces_leave_the_files(
    make_client: AppFactory, tmp_path: Path
) -> None:
    """PATCH (metadata, rename) and merge erase what they replace as a deletion does (SQLite:
    secure_delete, WAL truncated): the old metadata, a dropped duplicate face. (Subject ids,
    old ones included, stay in the audit log, by design: see README "Audit log".)"""
    data_dir = tmp_path / "g"
    client = make_client(NoisyChips(), data_dir=data_dir)
    gallery: Gallery = client.app.state.services.gallery
    client.post("/enroll", data={"subject_id": "old-name", "metadata": '{"n": "meta-19283"}'},
                files={"image": ("a.png", fake_photo(31, variant=1), "image/png")})
    r = client.patch("/subjects/old-name", json={"subject_id": "new-name",
                                                      "metadata": {"n": "other"}})
    assert r.status_code == 200, r.text
    files = b"".join(disk(data_dir).values())
    assert b"meta-19283" not in files
    # A merge whose source shares a photo with the target: that face is erased, not moved.
    same = fake_photo(32, variant=1)
    client.post("/enroll", data={"subject_id": "dup-src-5521"},
                files={"image": ("b.png", same, "image/png")})
    dropped = gallery.get_subject("dup-src-5521").faces[0].face_id  # type: ignore[union-attr]
    vector = gallery.get_face(dropped).embedding.astype("<f4").tobytes()  # type: ignore[union-attr]
    client.post("/enroll", data={"subject_id": "new-name"},
                files={"image": ("b.png", same, "image/png")})
    r = client.post("/subjects/dup-src-5521/merge", json={"into": "new-name"})
    assert r.json()["faces_dropped"] == 1
    files = b"".join(disk(data_dir).values())
    assert vector not in files
