"""Detection worker processes (``service.inference.workers``): the same answers as the
inference threads, a lost worker costs at most the photos it held, and the pool is what the
server runs by default on a multi-core CPU.

The API tests run the worker path in this process (``InlineWorkers``: what a worker computes,
through a pickle round trip) over the fake pipeline and compare every answer with the threads'
path; the real pool runs over the real models (LFW photos).
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import signal
import threading
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from models.cpu_share import CoreShare
from models.photo_faces import PhotoFaces, PhotoJob, photo_faces
from models.photo_worker import alive
from service.api.app import create_app
from service.api.errors import WorkerLost
from service.config import Settings
from service.inference.workers import DetectionWorkers, shared_counter
from tests.service.conftest import FakePipeline, TestClient, fake_photo, wait_ready


class InlineWorkers:
    """``DetectionWorkers.faces`` in this process: ``photo_faces`` of the server's pipeline,
    sent through pickle as a worker's answer is."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.jobs: list[PhotoJob] = []

    async def faces(self, job: PhotoJob, release: Any = None) -> PhotoFaces:
        self.jobs.append(pickle.loads(pickle.dumps(job)))
        try:
            return pickle.loads(pickle.dumps(photo_faces(self.pipeline, job)))
        finally:
            if release is not None:
                release()

    def close(self) -> None:
        pass


VOLATILE = {"face_id", "created_at", "updated_at", "request_id", "enrolled_at", "id"}


def _stable(body: Any) -> Any:
    """A response body without the ids and times that differ between two galleries."""
    if isinstance(body, dict):
        return {k: _stable(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


def _requests() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, files, form) of requests that exercise every choice of faces."""
    three = fake_photo(person=7, faces=3)
    return [
        ("/v1/enroll", {"image": ("a.png", fake_photo(person=1, faces=1))},
         {"subject_id": "one"}),
        ("/v1/enroll", {"image": ("b.png", three)}, {"subject_id": "three"}),  # primary face
        ("/v1/enroll", {"image": ("c.png", fake_photo(person=8, faces=3))},
         {"subject_id": "by-index", "face": '{"index": 0}'}),
        ("/v1/enroll", {"image": ("d.png", fake_photo(person=9, faces=2))},
         {"subject_id": "refused", "on_multiple": "reject"}),
        ("/v1/embed", {"image": ("e.png", three)}, {}),
        ("/v1/embed", {"image": ("e.png", three)}, {"max_faces": "2"}),
        ("/v1/embed", {"image": ("e.png", three)}, {"min_face_px": "70"}),
        ("/v1/embed", {"image": ("f.png", fake_photo(person=2, faces=0))}, {}),
        ("/v1/embed", {"image": ("g.png", fake_photo(person=2, faces=0))},
         {"face_crop": "true"}),  # 422 not_a_face
        ("/v1/embed", {"image": ("h.png", fake_photo(person=2, faces=2))},
         {"face_crop": "true"}),
        ("/v1/embed", {"image": ("x.png", b"not an image")}, {}),  # 415
        ("/v1/identify", {"image": ("i.png", fake_photo(person=7, faces=3, variant=1))}, {}),
        ("/v1/identify", {"image": ("j.png", fake_photo(person=1, variant=2))},
         {"max_faces": "1"}),
        ("/v1/verify", {"image": ("k.png", fake_photo(person=1, variant=3))},
         {"subject_id": "one"}),
        ("/v1/verify", {"image_a": ("l.png", three),
                        "image_b": ("m.png", fake_photo(person=7, faces=3, variant=4))}, {}),
    ]


def test_worker_path_answers_as_the_threads(make_client: Any) -> None:
    threads = make_client()
    pipe = FakePipeline()
    workers = make_client(pipe)
    inline = InlineWorkers(pipe)
    workers.app.state.services.inference.workers = inline
    workers.app.state.services.inference.inline_when_idle = False
    for path, files, form in _requests():
        a = threads.post(path, files=files, data=form)
        b = workers.post(path, files=files, data=form)
        assert a.status_code == b.status_code, (path, form, a.text, b.text)
        assert _stable(a.json()) == _stable(b.json()), (path, form)
    # Every photo went to the workers but the one that is not an image (refused from its
    # header), and the requests' answers are not all alike.
    assert len(inline.jobs) == sum(len(f) for _, f, _ in _requests()) - 1
    statuses = {threads.post(p, files=f, data=d).status_code for p, f, d in _requests()}
    assert {200, 415, 422} <= statuses


def test_worker_path_holds_and_returns_the_pixel_budget(make_client: Any) -> None:
    """The budget is taken from the header before the photo leaves and given back after;
    one photo over the budget alone is admitted, a second while it is held is 429."""
    pipe = FakePipeline()
    client = make_client(pipe, decoded_pixels_in_flight=60_000)  # a fake photo: 48,000 px
    inference = client.app.state.services.inference
    seen: list[int] = []

    class HeldWorkers(InlineWorkers):
        async def faces(self, job: PhotoJob, release: Any = None) -> PhotoFaces:
            seen.append(inference.pixel_budget.held)
            return await super().faces(job, release)

    inference.workers = HeldWorkers(pipe)
    inference.inline_when_idle = False
    r = client.post("/v1/embed", files={"image": ("a.png", fake_photo(faces=1))})
    assert r.status_code == 200, r.text
    assert seen == [400 * 120] and inference.pixel_budget.held == 0

    inference.pixel_budget.take(30_000)  # another request's photo, still held
    try:
        r = client.post("/v1/embed", files={"image": ("a.png", fake_photo(faces=1))})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded"
    finally:
        inference.pixel_budget.give(30_000)


def test_a_photo_alone_stays_in_the_server(make_client: Any) -> None:
    """With nothing else running a photo is detected in the server's own threads (no hand-over
    to pay); while another stage runs or another request is admitted, it goes to a worker."""
    pipe = FakePipeline()
    client = make_client(pipe)
    inference = client.app.state.services.inference
    inference.workers = inline = InlineWorkers(pipe)
    photo = {"image": ("a.png", fake_photo(faces=1))}
    assert client.post("/v1/embed", files=photo).status_code == 200
    assert inline.jobs == []
    with inference.cores.stage():  # another request's photo or embedding batch
        assert client.post("/v1/embed", files=photo).status_code == 200
    assert len(inline.jobs) == 1
    gate = client.app.state.inference_gate
    assert gate.try_enter()  # another request admitted, reading its upload
    try:
        assert client.post("/v1/embed", files=photo).status_code == 200
    finally:
        gate.leave()
    assert len(inline.jobs) == 2
    # The two photos of a verify: the first stays, the second (dispatched while the first is
    # still on its way) goes to a worker, so both run at once.
    r = client.post("/v1/verify", files={"image_a": ("a.png", fake_photo(person=3)),
                                         "image_b": ("b.png", fake_photo(person=3, variant=1))})
    assert r.status_code == 200, r.text
    assert len(inline.jobs) == 3


def test_a_mid_sized_photo_alone_in_the_server_takes_every_core(make_client: Any) -> None:
    """Kept inline because nothing else runs, a 640x480 photo is detected on every core (its
    stage has the process to itself: ``PARALLEL_PIXELS_ALONE``); with no workers at all,
    where the server's threads detect every photo, it gets one thread."""
    pipe = FakePipeline()
    threads: list[int] = []
    detect = pipe.detect

    def recording(image: np.ndarray, min_face_px: int | None = None) -> list[Any]:
        threads.append(torch.get_num_threads())
        return detect(image, min_face_px)

    pipe.detect = recording  # type: ignore[method-assign]
    client = make_client(pipe)
    inference = client.app.state.services.inference
    inference.cores = CoreShare(4)
    pixels = np.zeros((480, 640, 3), np.uint8)
    pixels[0, 0] = (1, 0, 7)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    photo = {"image": ("a.png", buf.getvalue())}
    inference.workers = inline = InlineWorkers(pipe)
    assert client.post("/v1/embed", files=photo).status_code == 200
    assert inline.jobs == [] and threads == [4]
    inference.workers = None
    assert client.post("/v1/embed", files=photo).status_code == 200
    assert threads == [4, 1]


# ----------------------------------------------------------------------- the process pool


def _start_nothing(pipeline_kwargs: dict[str, Any], cores: int, counter: Any, server: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pid() -> int:
    return os.getpid()


def _die(job: PhotoJob) -> PhotoFaces:
    os._exit(3)  # as a worker killed by the kernel's OOM killer


def _empty(job: PhotoJob) -> PhotoFaces:
    return PhotoFaces([], np.zeros((0, 150, 150, 3), np.uint8), [], 1, 1, "x")


def _pool(task: Any) -> DetectionWorkers:
    return DetectionWorkers(1, {}, 1, shared_counter(),
                            initializer=_start_nothing, ready=_pid, task=task)


_share: CoreShare | None = None


def _start_counting(pipeline_kwargs: dict[str, Any], cores: int, counter: Any,
                    server: int) -> None:
    global _share
    _share = CoreShare(cores, counter=counter)


def _stages_seen(job: PhotoJob) -> PhotoFaces:
    """A stage in the worker; answers how many stages ran then, in all processes, and how
    many threads it got for a large photo (as width and height)."""
    assert _share is not None
    with _share.stage(large=True) as threads:
        return PhotoFaces([], np.zeros((0, 150, 150, 3), np.uint8), [], _share.running,
                          threads, "x")


def test_the_server_and_its_workers_count_stages_together() -> None:
    """A large photo in a worker gets the cores no stage of the server uses: the count of
    stages running is one, across the processes."""
    counter = shared_counter()
    server = CoreShare(4, counter=counter)
    workers = DetectionWorkers(1, {}, 4, counter, initializer=_start_counting, ready=_pid,
                               task=_stages_seen)
    try:
        workers.start()
        alone = asyncio.run(workers.faces(PhotoJob(b"x", 100)))
        assert (alone.width, alone.height) == (1, 4)
        with server.stage():  # an embedding batch in the server
            beside = asyncio.run(workers.faces(PhotoJob(b"x", 100)))
        assert (beside.width, beside.height) == (2, 2)
        assert counter.value == 0
    finally:
        workers.close()


def test_a_worker_dying_with_a_photo_is_503_and_the_pool_is_replaced() -> None:
    workers = _pool(_die)
    try:
        workers.start()
        with pytest.raises(WorkerLost) as lost:
            asyncio.run(workers.faces(PhotoJob(b"x", 100)))
        assert lost.value.status == 503 and lost.value.headers == {"Retry-After": "1"}
        assert workers.restarts == 1
        workers._task = _empty  # the next photo is fine: the new pool answers it
        assert asyncio.run(workers.faces(PhotoJob(b"x", 100))).faces == []
        assert workers.restarts == 1
    finally:
        workers.close()


def _held_until_told(job: PhotoJob) -> PhotoFaces:
    """Says it has the photo (a file ``started`` in the directory ``job.data`` names), then
    holds it until told (a file ``go``)."""
    folder = Path(job.data.decode())
    (folder / "started").touch()
    deadline = time.monotonic() + 30
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _empty(job)


def test_a_request_cancelled_while_a_worker_has_its_photo_releases_it_after(
    tmp_path: Path,
) -> None:
    """A request that goes away (client gone, timeout) while a worker decodes its photo
    keeps the photo's reservation (``release``) until the worker is done with it, since the
    photo is still in memory there; a request answered releases it at once."""
    workers = _pool(_held_until_told)
    released = threading.Event()
    try:
        workers.start()

        async def cancel_while_held() -> None:
            request = asyncio.ensure_future(
                workers.faces(PhotoJob(str(tmp_path).encode(), 100), released.set))
            deadline = time.monotonic() + 30
            while not (tmp_path / "started").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

        asyncio.run(cancel_while_held())
        assert (tmp_path / "started").exists()
        assert not released.is_set()  # the worker still has the photo
        (tmp_path / "go").touch()
        assert released.wait(30)
        answered = threading.Event()
        assert asyncio.run(workers.faces(PhotoJob(str(tmp_path).encode(), 100),
                                         answered.set)).faces == []
        assert answered.is_set()
    finally:
        workers.close()


def test_a_pool_broken_between_requests_is_replaced_without_an_error() -> None:
    """A worker killed while idle costs no request: the next one goes to a new pool."""
    workers = _pool(_empty)
    try:
        (pid,) = workers.start()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not workers._executor._broken and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert workers._executor._broken  # type: ignore[attr-defined]
        assert asyncio.run(workers.faces(PhotoJob(b"x", 100))).faces == []
        assert workers.restarts == 1
    finally:
        workers.close()


def _start_watching(pipeline_kwargs: dict[str, Any], cores: int, counter: Any,
                    server: int) -> None:
    from models.photo_worker import watch_server

    watch_server(server, interval_s=0.05)


def _server_with_a_worker(conn: Any) -> None:
    """A stand-in for the server: starts one worker, reports its pid, waits to be killed."""
    workers = DetectionWorkers(1, {}, 1, shared_counter(), initializer=_start_watching,
                               ready=_pid, task=_empty)
    conn.send(workers.start()[0])
    time.sleep(600)


def _gone(pid: int) -> bool:
    return not alive(pid)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_the_server_is_killed() -> None:
    """SIGKILL gives the server no shutdown: its workers notice it is gone and exit, rather
    than wait forever on their queue, each holding a copy of the models."""
    context = get_context("spawn")
    here, there = context.Pipe()
    server = context.Process(target=_server_with_a_worker, args=(there,))
    server.start()
    try:
        assert here.poll(120), "the stand-in server did not start its worker"
        worker = here.recv()
        assert not _gone(worker)
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker), "the worker outlived its server"
    finally:
        server.kill()
        server.join(10)


def test_closed_workers_start_no_new_pool() -> None:
    workers = _pool(_empty)
    workers.start()
    workers.close()
    with pytest.raises(RuntimeError):
        asyncio.run(workers.faces(PhotoJob(b"x", 100)))
    assert workers.restarts == 0


@pytest.fixture(scope="module")
def lfw_photos(shared_data: Path) -> list[bytes]:
    root = shared_data / "lfw" / "lfw-deepfunneled"
    paths = sorted(root.glob("*/*_0001.jpg"))[:6]
    if not paths:
        pytest.skip(f"LFW not found at {root}")
    return [p.read_bytes() for p in paths]


def test_real_workers_answer_as_the_threads(tmp_path: Path, lfw_photos: list[bytes]) -> None:
    """The default server on a multi-core CPU: two worker processes with the real models give
    the same boxes, landmarks, quality and embeddings as the server's own threads."""
    answers, errors = [], []
    for processes in (0, 2):
        settings = Settings(data_dir=tmp_path / f"g{processes}", device="cpu",
                            detection_processes=processes)
        with TestClient(create_app(settings)) as client:
            ready = wait_ready(client)
            assert ready["detection_processes"] == processes
            inference = client.app.state.services.inference
            inference.inline_when_idle = False  # one request at a time would stay inline
            answers.append([
                client.post("/v1/embed", files={"image": ("p.jpg", photo)}).json()
                for photo in lfw_photos
            ])
            if processes:
                assert inference.workers.photos == len(lfw_photos)
            # A JPEG cut short passes the header check and fails in the decoder, in the
            # worker: the error comes back as the threads' would.
            cut = client.post("/v1/embed", files={"image": ("c.jpg", lfw_photos[0][:3000])})
            errors.append((cut.status_code, cut.json()["error"]["code"]))
    assert errors[0] == errors[1] == (400, "truncated_image")
    threads, workers = answers
    assert [len(a["faces"]) for a in threads] == [len(a["faces"]) for a in workers]
    assert sum(len(a["faces"]) for a in threads) >= len(lfw_photos)
    for a, b in zip(threads, workers, strict=True):
        for fa, fb in zip(a["faces"], b["faces"], strict=True):
            assert fa["bbox"] == fb["bbox"] and fa["landmarks"] == fb["landmarks"]
            assert fa["quality"] == fb["quality"]
            assert np.allclose(fa["embedding"], fb["embedding"], atol=1e-6)


def test_the_default_is_one_worker_per_core_on_the_cpu(tmp_path: Path, monkeypatch: Any) -> None:
    from service.api import app as app_module

    monkeypatch.setattr(app_module, "available_cores", lambda: 3)
    settings = Settings(data_dir=tmp_path)
    cpu = type("P", (), {"device": __import__("torch").device("cpu")})()
    gpu = type("P", (), {"device": __import__("torch").device("cuda")})()
    default = app_module.default_pipeline
    assert app_module._detection_processes(settings, cpu, default) == 3
    assert app_module._detection_processes(settings, gpu, default) == 0
    monkeypatch.setattr(app_module, "available_cores", lambda: 16)
    assert app_module._detection_processes(settings, gpu, default) == 0  # the operator's choice
    assert app_module._detection_processes(settings, cpu, default) == 16
    monkeypatch.setattr(app_module, "available_cores", lambda: 3)
    assert app_module._detection_processes(settings, cpu, lambda s: cpu) == 0  # a fake
    monkeypatch.setattr(app_module, "available_cores", lambda: 1)
    assert app_module._detection_processes(settings, cpu, default) == 0
    two = Settings(data_dir=tmp_path, detection_processes=2)
    assert app_module._detection_processes(two, cpu, default) == 2
    assert app_module._detection_processes(two, gpu, default) == 2  # asked for: honoured
    assert app_module._detection_processes(two, cpu, lambda s: cpu) == 0


def test_workers_that_cannot_start_leave_detection_to_the_threads(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """By default a machine where worker processes cannot start still serves (in threads, with
    an error in the log); workers the operator asked for must start, or the server does not."""
    def broken(self: DetectionWorkers) -> list[int]:
        raise OSError("no /dev/shm here")

    monkeypatch.setattr(DetectionWorkers, "start", broken)
    from service.api import app as app_module

    monkeypatch.setattr(app_module, "available_cores", lambda: 2)
    with TestClient(create_app(Settings(data_dir=tmp_path / "auto", device="cpu"))) as client:
        assert wait_ready(client)["detection_processes"] == 0
        r = client.post("/v1/embed", files={"image": ("a.png", fake_photo(faces=0))})
        assert r.status_code == 200, r.text
    assert "could not start" in caplog.text and "no /dev/shm here" in caplog.text

    asked = Settings(data_dir=tmp_path / "asked", device="cpu", detection_processes=2)
    with TestClient(create_app(asked)) as client:
        deadline = time.monotonic() + 300
        while (r := client.get("/readyz")).status_code == 503 and time.monotonic() < deadline:
            if r.json()["error"]["code"] == "startup_failed":
                break
            time.sleep(0.05)
        assert r.json()["error"]["code"] == "startup_failed", r.text
        assert "FACESERVE_DETECTION_PROCESSES=2" in r.json()["error"]["message"]
