"""A real ``faceserve serve`` process on a free local port: enroll, identify, restart, still there.

The real pipeline on real photos: the named people of ../shared/data/people and a few LFW
people with two or more photos, plus LFW strangers who are never enrolled. Three server
processes in all: one served, stopped with SIGTERM and restarted on the same data directory,
and one that must refuse to start on a gallery of another model. Every process is killed in
a ``finally``, whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.realdata import PEOPLE_ENROLL, LfwPerson, central_face, lfw_people

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 300.0


def faceserve_bin() -> str:
    here = Path(sys.executable).parent / "faceserve"
    return str(here if here.exists() else REPO / ".venv" / "bin" / "faceserve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(data_dir: Path, port: int, log: Path, *extra: str) -> Iterator[subprocess.Popen]:
    env = dict(os.environ)
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [faceserve_bin(), "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir.parent,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_ready(base: str, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"server not ready after {READY_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


# A subset of the TestClient acceptance test's LFW picks (same people, same strangers), so the
# two tests make one claim about accuracy; this one is about the process and its disk.
LFW_ENROLLED = 6
LFW_STRANGERS = 4


def post_photo(client: httpx.Client, path: str, photo: Path, **fields: str) -> httpx.Response:
    return client.post(path, data=fields,
                       files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})


def identify(client: httpx.Client, photo: Path, lfw: bool = False) -> list[str | None]:
    """The matched subject of each face (LFW: of the central face only)."""
    r = post_photo(client, "/identify", photo)
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    if lfw:
        face = central_face(faces)
        faces = [face] if face is not None else []
    return [f["match"]["subject_id"] if f["match"] else None for f in faces]


def check_gallery(client: httpx.Client, people: Path, lfw_people_: list[LfwPerson],
                  strangers: list[Path]) -> None:
    """What must hold before and after a restart (alex_lacamoire has been deleted)."""
    assert identify(client, people / "test/obama1.jpg") == ["obama"]
    assert sorted(identify(client, people / "test/kit_with_rose.jpg")) == [
        "kit_harington", "rose_leslie"]
    # Three faces: Obama, Biden and a small bystander who is nobody enrolled.
    faces = identify(client, people / "test/obama_and_biden.jpg")
    assert sorted(faces, key=str) == [None, "biden", "obama"]
    assert identify(client, people / "test/alex_lacamoire1.jpg") == [None]
    for person in lfw_people_:
        for probe in person.probes[:1]:
            assert identify(client, probe, lfw=True) == [person.name], probe.name
    for photo in strangers:
        assert identify(client, photo, lfw=True) in ([None], []), photo.name
    r = post_photo(client, "/verify", people / "test/johnsnow_test1.jpg",
                   subject_id="kit_harington")
    assert r.status_code == 200 and r.json()["match"] is True, r.text
    r = post_photo(client, "/verify", people / "test/alex_lacamoire1.jpg",
                   subject_id="alex_lacamoire")
    assert r.status_code == 404 and r.json()["error"]["code"] == "subject_not_found"


def test_a_real_server_keeps_its_gallery_across_restarts(
    people: Path, lfw: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    lfw_enrolled, strangers = lfw_people(lfw, LFW_ENROLLED, LFW_STRANGERS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    with serve(data_dir, port, log) as proc:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, timeout=120) as client:
            enrolled = {}
            for subject, rel in PEOPLE_ENROLL.items():
                r = post_photo(client, "/enroll", people / rel, subject_id=subject)
                assert r.status_code == 201, r.text
                enrolled[subject] = r.json()["face_id"]
            for person in lfw_enrolled:
                r = post_photo(client, "/enroll", person.enroll, subject_id=person.name)
                assert r.status_code == 201, r.text
                enrolled[person.name] = r.json()["face_id"]
            # Idempotent: the same bytes again give the same face, and nothing new.
            r = post_photo(client, "/enroll", people / PEOPLE_ENROLL["obama"], subject_id="obama")
            assert r.status_code == 200 and r.json()["face_id"] == enrolled["obama"]
            # Verify, two photos: same person, and two different people.
            files = {"image_a": ("a.jpg", (people / "train/obama/obama2.jpg").read_bytes()),
                     "image_b": ("b.jpg", (people / "test/obama1.jpg").read_bytes())}
            assert client.post("/verify", files=files).json()["match"] is True
            files["image_b"] = ("b.jpg", (people / "train/biden/biden2.jpg").read_bytes())
            assert client.post("/verify", files=files).json()["match"] is False
            assert identify(client, people / "test/alex_lacamoire1.jpg") == ["alex_lacamoire"]
            assert client.delete("/subjects/alex_lacamoire").json()["faces_deleted"] == 1
            check_gallery(client, people, lfw_enrolled, strangers)

        # 413 from the declared length alone: the body is never sent.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                b"boundary=b\r\nContent-Length: 1000000000\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(4096):  # the server closes the connection after the 413
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"payload_too_large" in reply

        # A graceful stop: uvicorn finishes the lifespan (the gallery writes its snapshot),
        # then re-raises the signal, so the status is "terminated by SIGTERM".
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert (data_dir / "index.faiss").is_file() and "Traceback" not in log.read_text()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    expected = len(enrolled) - 1
    with serve(data_dir, port, log) as proc:
        ready = wait_ready(base, proc, log)
        assert ready["gallery_faces"] == expected and ready["gallery_subjects"] == expected
        assert ready["index_source"] == "snapshot"  # validated against the database, reused
        with httpx.Client(base_url=base, timeout=120) as client:
            subjects = client.get("/subjects", params={"limit": 4})
            listed, body = [], subjects.json()
            while True:
                listed += [s["subject_id"] for s in body["subjects"]]
                if body["next_cursor"] is None:
                    break
                body = client.get("/subjects", params={"limit": 4,
                                                       "cursor": body["next_cursor"]}).json()
            assert sorted(listed) == sorted(set(enrolled) - {"alex_lacamoire"})
            for subject, face_id in enrolled.items():
                status = client.get(f"/faces/{face_id}").status_code
                assert status == (404 if subject == "alex_lacamoire" else 200)
            check_gallery(client, people, lfw_enrolled, strangers)
            # A stored face searches the gallery too (itself left out): its subject has no
            # other template, so the best candidate is someone else, below the threshold.
            r = client.get("/identify", params={"face_id": enrolled["obama"], "k": 3})
            assert r.status_code == 200 and r.json()["match"] is None, r.text
            assert client.get("/metrics").status_code == 200


def test_serve_help_and_refusals(tmp_path: Path) -> None:
    out = subprocess.run([faceserve_bin(), "serve", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for word in ("--port", "--data-dir", "--workers", "/readyz", "FACESERVE_"):
        assert word in out.stdout
    out = subprocess.run([faceserve_bin(), "serve", "--workers", "2", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "workers must be 1" in out.stderr
    out = subprocess.run([faceserve_bin(), "serve", "--threshold", "7"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "threshold" in out.stderr
    out = subprocess.run([faceserve_bin(), "serve", "--settings-table"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "| `FACESERVE_THRESHOLD` |" in out.stdout
    # Keys are not enforced in this version: refusing beats pretending to protect.
    out = subprocess.run([faceserve_bin(), "serve", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FACESERVE_API_KEYS": "secret"})
    assert out.returncode == 2 and "not implemented" in out.stderr


def test_a_server_refuses_a_gallery_of_another_model(tmp_path: Path) -> None:
    from service.gallery.gallery import Gallery

    data_dir = tmp_path / "data"
    old = Gallery.open(data_dir, model_version="older-model-v0")
    vector = [1.0] + [0.0] * 127
    old.enroll("someone", vector, bbox=(0, 0, 9, 9), landmarks=[[0.0, 0.0]] * 5,
               detection_confidence=1.0, image_sha256="0" * 64)
    old.close()
    log = tmp_path / "server.log"
    with serve(data_dir, free_port(), log) as proc:
        assert proc.wait(READY_TIMEOUT_S) == 1
    text = log.read_text()
    assert "older-model-v0" in text and "faceserve reembed" in text, text[-2000:]
    reopened = Gallery.open(data_dir, model_version="older-model-v0")
    assert reopened.size == 1  # refused, not modified
    reopened.close()
