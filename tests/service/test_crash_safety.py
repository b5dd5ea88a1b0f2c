"""Crash safety: a real `faceserve serve` process, concurrent enrollments, SIGKILL at random
moments, restart, and nothing acknowledged is lost while nothing unacknowledged half-exists.

Each round starts the server on the same data directory (with an API key, so the real process
also enforces keys), checks everything the previous rounds left, runs three enrolling clients
over LFW photos (one subject per photo) and kills the process with SIGKILL after a random delay
(seeded: a failure names its round). After the last round the server is started once more.
After every restart:

* every acknowledged enrollment (201/200 received) is in the database, readable by id and found
  first by a search with its own stored embedding;
* database and index agree: the index holds exactly the database's faces (count, and every
  face is found by its vector), every subject has its face and every face its chip;
* a request cut off by the kill either fully exists (subject, face, chip, searchable) or does
  not exist at all; re-sending it returns the stored face (200) or stores it once (201).
"""

from __future__ import annotations

import base64
import os
import queue
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.security.keys import SCOPES, KeyRing, open_security_store
from tests.service.test_server_process import free_port, serve, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 6
CLIENTS = 3
SEED = 20261129
PHOTOS = 2000  # more than the rounds use (~40 enrollments/s now); each photo is sent once


@dataclass
class Ledger:
    """What the clients know: acknowledged face ids, refusals, and requests with no answer."""

    acked: dict[str, str] = field(default_factory=dict)  # subject -> face_id
    refused: set[str] = field(default_factory=set)  # 4xx: e.g. no face in the photo
    unknown: dict[str, Path] = field(default_factory=dict)  # sent, no answer (killed)
    lock: threading.Lock = field(default_factory=threading.Lock)


def lfw_photos(lfw: Path, n: int) -> list[Path]:
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    photos = [p / f"{p.name}_0001.jpg" for p in people[:n]]
    return [p for p in photos if p.is_file()]


def enroll_worker(base: str, token: str, work: queue.Queue, ledger: Ledger,
                  stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": token}) as client:
        while not stop.is_set():
            try:
                photo = work.get_nowait()
            except queue.Empty:
                return
            subject = photo.stem
            with ledger.lock:
                ledger.unknown[subject] = photo
            try:
                r = client.post("/enroll", data={"subject_id": subject},
                                files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            except httpx.TransportError:
                return  # killed mid-request: stays "unknown"
            with ledger.lock:
                del ledger.unknown[subject]
                if r.status_code in (200, 201):
                    ledger.acked[subject] = r.json()["face_id"]
                else:
                    assert r.status_code == 422, r.text
                    ledger.refused.add(subject)


def database(data_dir: Path) -> dict[str, tuple[str, bytes, bool]]:
    """subject -> (face_id, embedding bytes, has chip), read beside the running server."""
    db = sqlite3.connect(f"file:{data_dir / 'gallery.sqlite3'}?mode=ro", uri=True)
    try:
        faces = db.execute(
            "SELECT s.subject_id, f.face_id, f.embedding, f.chip IS NOT NULL "
            "FROM subjects s LEFT JOIN faces f ON f.subject_id = s.subject_id"
        ).fetchall()
        orphans = db.execute(
            "SELECT count(*) FROM faces f WHERE NOT EXISTS "
            "(SELECT 1 FROM subjects s WHERE s.subject_id = f.subject_id)"
        ).fetchone()[0]
    finally:
        db.close()
    assert orphans == 0, "faces without their subject"
    out: dict[str, tuple[str, bytes, bool]] = {}
    for subject, face_id, embedding, chip in faces:
        assert face_id is not None, f"subject {subject!r} exists without its face"
        assert subject not in out, f"subject {subject!r} has several faces"
        out[subject] = (face_id, embedding, bool(chip))
    return out


def check_after_restart(base: str, token: str, data_dir: Path, ledger: Ledger) -> dict:
    """Every invariant of the module docstring; returns counts for the round's report."""
    with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": token}) as client:
        ready = client.get("/readyz").json()
        stored = database(data_dir)
        assert ready["gallery_faces"] == len(stored) == ready["gallery_subjects"]
        for subject, (face_id, embedding, chip) in stored.items():
            assert chip, f"{subject}: face without its chip"
            vector = base64.urlsafe_b64encode(embedding).decode().rstrip("=")
            r = client.get("/identify", params={"embedding": vector, "k": 1})
            assert r.status_code == 200, r.text
            [best] = r.json()["candidates"]
            assert (best["subject_id"], best["face_id"]) == (subject, face_id), subject
            assert best["similarity"] > 0.999
        for subject, face_id in ledger.acked.items():
            assert subject in stored, f"acknowledged enrollment of {subject} lost"
            assert stored[subject][0] == face_id
            assert client.get(f"/faces/{face_id}").status_code == 200
        for subject in ledger.refused:
            assert subject not in stored
        allowed = set(ledger.acked) | set(ledger.unknown)
        assert set(stored) <= allowed, f"faces nobody enrolled: {set(stored) - allowed}"
        present = sorted(s for s in ledger.unknown if s in stored)
        # Cut-off requests: re-sending is safe, the stored face comes back unchanged.
        for subject in list(ledger.unknown):
            photo = ledger.unknown.pop(subject)
            r = client.post("/enroll", data={"subject_id": subject},
                            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            if subject in stored:
                assert r.status_code == 200 and r.json()["face_id"] == stored[subject][0]
                ledger.acked[subject] = stored[subject][0]
            elif r.status_code in (200, 201):
                assert r.status_code == 201
                ledger.acked[subject] = r.json()["face_id"]
            else:
                assert r.status_code == 422, r.text
                ledger.refused.add(subject)
        return {"faces": len(stored), "cut_off_present": len(present),
                "index_source": ready["index_source"]}


def test_sigkill_during_concurrent_enrollments_loses_nothing_acknowledged(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACESERVE_RATE_LIMIT_PER_S", "0")  # the checks read every face
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    store = open_security_store(Settings(data_dir=data_dir))
    _, token = KeyRing(store).create("crash-test", list(SCOPES))
    store.close()
    work: queue.Queue[Path] = queue.Queue()
    for photo in lfw_photos(lfw, PHOTOS):
        work.put(photo)
    ledger = Ledger()
    rng = random.Random(SEED)
    report = []
    for round_ in range(ROUNDS + 1):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with serve(data_dir, port, log) as proc:
            wait_ready(base, proc, log)
            # Unauthenticated requests are refused by the real process too.
            assert httpx.get(f"{base}/subjects", timeout=30).status_code == 401
            acked, cut_off = len(ledger.acked), len(ledger.unknown)
            found = check_after_restart(base, token, data_dir, ledger)
            # After restart: acknowledged so far, all found; requests cut off by the kill, and
            # how many of them had committed (found whole) rather than left no trace.
            row = {"restart": round_, "acked": acked, "acked_found": acked,
                   "faces_in_db": found["faces"], "cut_off": cut_off,
                   "cut_off_committed": found["cut_off_present"],
                   "index": found["index_source"]}
            if round_ == ROUNDS:
                report.append(row)
                break
            acked_at_start = len(ledger.acked)
            stop = threading.Event()
            clients = [threading.Thread(target=enroll_worker,
                                        args=(base, token, work, ledger, stop))
                       for _ in range(CLIENTS)]
            for t in clients:
                t.start()
            delay = rng.uniform(0.5, 2.5)
            time.sleep(delay)  # the kill lands at a random moment of the enrollments
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            stop.set()
            for t in clients:
                t.join(90)
                assert not t.is_alive()
            row |= {"then_killed_after_s": round(delay, 2),
                    "acked_in_round": len(ledger.acked) - acked_at_start,
                    "in_flight_at_kill": len(ledger.unknown)}
            report.append(row)
        assert not work.empty(), "ran out of photos: raise PHOTOS"
    print("\ncrash rounds:")
    for row in report:
        print("  ", row)
    assert "Traceback" not in log.read_text()
    # Enough happened for the test to mean something.
    assert len(ledger.acked) >= 2 * ROUNDS
    assert sum(r.get("in_flight_at_kill", 0) for r in report) >= 1
