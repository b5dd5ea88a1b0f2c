"""Back-pressure and limits: a full inference queue (429 before the body is read), per-key rate
limits (429 with Retry-After), and the request timeout (503 for a slow server, 408 for a slow
client).

Upload size (413 from Content-Length and while streaming), the pixel limit before decoding and
the faces-per-image cap already have their tests in test_api_errors.py and
test_api_recognition.py. Nothing here depends on timing: the queue is filled by workers held
on an event, and the rate limiter's clock is stepped by hand.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.inference.batcher import AdmissionGate
from service.security.ratelimit import RateLimiter
from tests.service.conftest import AppFactory, FakePipeline, fake_photo
from tests.service.test_api_errors import _call_asgi

WAIT_S = 60.0  # only ever reached when something is broken


class HeldPipeline(FakePipeline):
    """Detection waits for ``release``: requests stay inside the inference stage."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list:
        self.entered.release()
        assert self.release.wait(WAIT_S), "test never released the pipeline"
        return super().detect(image, min_face_px)


def post_embed(client: Any, **kw: Any) -> Any:
    return client.post("/embed", files={"image": ("p.png", fake_photo(), "image/png")}, **kw)


def wait_until(predicate: Any) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("condition never became true")


# ---------------------------------------------------------------- inference queue


def test_a_full_inference_queue_is_429_before_the_body_is_read(make_client: AppFactory) -> None:
    pipe = HeldPipeline()
    client = make_client(pipe, inference_queue=3, inference_threads=2)
    gate: AdmissionGate = client.app.state.inference_gate
    pool = ThreadPoolExecutor(3)
    try:
        held: list[Future] = [pool.submit(post_embed, client) for _ in range(3)]
        # Two are in detection (two threads), the third waits for a thread: all three inside.
        wait_until(lambda: gate.inside == 3)
        for _ in range(2):
            assert pipe.entered.acquire(timeout=WAIT_S)

        r = post_embed(client)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
        # Refused without reading a byte of the body: no upload piles up in memory.
        headers = [(b"content-type", b"multipart/form-data; boundary=b"),
                   (b"content-length", b"1000")]
        status, body, pulled = _call_asgi(client.app, "/enroll", headers, [bytes(1000)])
        assert status == 429 and body["error"]["code"] == "overloaded" and pulled == 0
        # Reads of the gallery take no slot: they still answer.
        assert client.get("/subjects").status_code == 200

        pipe.release.set()
        assert [f.result(WAIT_S).status_code for f in held] == [200, 200, 200]
    finally:
        pipe.release.set()
        pool.shutdown(wait=True)
    assert gate.inside == 0
    assert post_embed(client).status_code == 200


def test_every_image_route_takes_a_slot(make_client: AppFactory) -> None:
    client = make_client(inference_queue=1)
    gate: AdmissionGate = client.app.state.inference_gate
    assert gate.try_enter()  # the only slot is taken
    try:
        photo = ("p.png", fake_photo(), "image/png")
        for path, data in [("/enroll", {"subject_id": "x"}), ("/verify", {"subject_id": "x"}),
                           ("/identify", {}), ("/embed", {})]:
            r = client.post(path, files={"image": photo}, data=data)
            assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded", path
    finally:
        gate.leave()
    r = client.post("/enroll", files={"image": ("p.png", fake_photo(), "image/png")},
                    data={"subject_id": "x"})
    assert r.status_code == 201


def test_the_gate_counts_and_refuses() -> None:
    gate = AdmissionGate(2)
    assert gate.try_enter() and gate.try_enter() and not gate.try_enter()
    gate.leave()
    assert gate.try_enter() and gate.inside == 2
    gate.leave()
    gate.leave()
    with pytest.raises(RuntimeError):
        gate.leave()
    with pytest.raises(ValueError):
        AdmissionGate(0)


# ---------------------------------------------------------------- rate limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token per 0.5 s
    assert limiter.acquire("b") == 0.0  # keys are independent
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0  # refills to the burst, no more
    assert RateLimiter.retry_after(0.01) == "1" and RateLimiter.retry_after(2.2) == "3"
    off = RateLimiter(rate=0, burst=1, clock=clock)
    assert all(off.acquire("a") == 0.0 for _ in range(100))


def test_a_key_over_its_rate_gets_429_with_retry_after(make_client: AppFactory) -> None:
    client = make_client(rate_limit_per_s=0.5, rate_limit_burst=2)
    clock = Clock()
    limiter = client.app.state.rate_limiter
    client.app.state.rate_limiter = RateLimiter(limiter.rate, limiter.burst, clock=clock)
    ring = client.app.state.services.keys
    _, fast = ring.create("fast", ["read"])
    _, other = ring.create("other", ["read"])
    h = {"Authorization": f"Bearer {fast}"}
    assert [client.get("/subjects", headers=h).status_code for _ in range(2)] == [200, 200]
    r = client.get("/subjects", headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert r.headers["retry-after"] == "2"  # 0.5/s: the next token in 2 s
    assert client.get("/subjects", headers={"X-API-Key": other}).status_code == 200
    clock.now += 2.0
    assert client.get("/subjects", headers=h).status_code == 200
    # Bad keys are refused before the limiter: they cannot drain a real key's bucket.
    for _ in range(5):
        assert client.get("/subjects", headers={"X-API-Key": "fsk_wrong"}).status_code == 401
    clock.now += 2.0
    assert client.get("/subjects", headers=h).status_code == 200


# ---------------------------------------------------------------- request timeout


def test_a_request_past_the_timeout_is_503_and_frees_its_slot(make_client: AppFactory) -> None:
    pipe = HeldPipeline()
    client = make_client(pipe, request_timeout_s=0.3, inference_threads=1)
    gate: AdmissionGate = client.app.state.inference_gate
    try:
        r = post_embed(client)  # held in detection until after the timeout
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "timeout" and r.headers["retry-after"] == "1"
        assert gate.inside == 0
    finally:
        pipe.release.set()
    assert post_embed(client).status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_408(make_client: AppFactory) -> None:
    client = make_client(request_timeout_s=0.3)
    sent: list[dict] = []
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled == 1:
            return {"type": "http.request", "body": b"--b\r\n", "more_body": True}
        await asyncio.sleep(3600)  # then the client goes silent
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/embed", "raw_path": b"/embed", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80), "state": {},
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"),
                    (b"content-length", b"100000")],
    }
    asyncio.run(asyncio.wait_for(client.app(scope, receive, send), WAIT_S))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert start["status"] == 408 and body["error"]["code"] == "request_timeout"
    assert (b"connection", b"close") in start["headers"]
    assert pulled == 2  # it was waiting for the second chunk when the timeout fired


class CountingHeldPipeline(HeldPipeline):
    """``HeldPipeline`` that also counts detections and alignments (per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.detected = 0
        self.aligned = 0

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list:
        self.detected += 1
        return super().detect(image, min_face_px)

    def align(self, image: np.ndarray, faces: Any) -> np.ndarray:
        self.aligned += 1
        return super().align(image, faces)


def test_timed_out_requests_leave_no_work_behind(make_client: AppFactory) -> None:
    """A burst of requests that time out: the queued ones are never decoded, and the one in
    detection stops there (no alignment, no embedding) once it is released."""
    pipe = CountingHeldPipeline()
    client = make_client(pipe, request_timeout_s=0.5, inference_threads=1, inference_queue=8)
    embeds_before = len(pipe.embed_calls)
    pool = ThreadPoolExecutor(4)
    try:
        answers = [pool.submit(post_embed, client) for _ in range(4)]
        statuses = [f.result(WAIT_S).status_code for f in answers]
        assert statuses == [503] * 4
        assert pipe.detected == 1  # one reached detection; three waited for the one thread
    finally:
        pipe.release.set()
        pool.shutdown(wait=True)
    # With one inference thread, this request runs after the held one has finished.
    assert post_embed(client).status_code == 200
    assert pipe.detected == 2
    assert pipe.aligned == 1  # only the last request's faces were aligned ...
    assert len(pipe.embed_calls) == embeds_before + 1  # ... and embedded


# ---------------------------------------------------------------- decoded memory


PHOTO_PIXELS = 120 * 400  # fake_photo's size


def test_decodes_past_the_pixel_budget_are_429_while_others_hold_it(
    make_client: AppFactory,
) -> None:
    """One image in detection holds its pixels; a second that would pass the budget is
    refused at once with Retry-After, and admitted once the first is done."""
    pipe = HeldPipeline()
    client = make_client(pipe, decoded_pixels_in_flight=int(PHOTO_PIXELS * 1.5))
    budget = client.app.state.services.inference.pixel_budget
    pool = ThreadPoolExecutor(1)
    try:
        held = pool.submit(post_embed, client)
        assert pipe.entered.acquire(timeout=WAIT_S)
        assert budget.held == PHOTO_PIXELS
        r = post_embed(client)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
        assert "pixels" in r.json()["error"]["message"]
        # An enrollment refused for memory fails as a whole (retry), not as a bad photo.
        r = client.post("/enroll", files={"image": ("p.png", fake_photo(), "image/png")},
                        data={"subject_id": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded", r.text
        pipe.release.set()
        assert held.result(WAIT_S).status_code == 200
    finally:
        pipe.release.set()
        pool.shutdown(wait=True)
    assert budget.held == 0
    assert post_embed(client).status_code == 200


def test_one_image_alone_is_decoded_whatever_the_budget(make_client: AppFactory) -> None:
    client = make_client(decoded_pixels_in_flight=1000)
    assert post_embed(client).status_code == 200
    assert client.app.state.services.inference.pixel_budget.held == 0


def test_a_reduced_jpeg_takes_only_its_decoded_pixels() -> None:
    """A JPEG decoded at 1/4 size (libjpeg's DCT scaling) holds a sixteenth of its pixels."""
    from models.imageio import decode_reduced

    buf = io.BytesIO()
    Image.new("RGB", (1600, 800), (90, 120, 150)).save(buf, format="JPEG")
    seen: list[int] = []
    decoded = decode_reduced(buf.getvalue(), reduction=lambda w, h: 4, admit=seen.append)
    assert seen == [400 * 200] and decoded.image.shape[:2] == (200, 400)
    seen.clear()
    decode_reduced(buf.getvalue(), admit=seen.append)
    assert seen == [1600 * 800]


# ---------------------------------------------------------------- one caller's share


def test_one_key_cannot_take_every_inference_slot(make_client: AppFactory) -> None:
    """Key A at its share of slots gets 429 ``rate_limited``; key B is still admitted."""
    pipe = HeldPipeline()
    client = make_client(pipe, inference_slots_per_key=2, inference_queue=32,
                         inference_threads=3)
    ring = client.app.state.services.keys
    _, a = ring.create("a", ["recognize"])
    _, b = ring.create("b", ["recognize"])
    pool = ThreadPoolExecutor(3)
    try:
        held = [pool.submit(post_embed, client, headers={"X-API-Key": a}) for _ in range(2)]
        for _ in range(2):
            assert pipe.entered.acquire(timeout=WAIT_S)
        r = post_embed(client, headers={"X-API-Key": a})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited" and "retry-after" in r.headers
        other = pool.submit(post_embed, client, headers={"X-API-Key": b})
        assert pipe.entered.acquire(timeout=WAIT_S)  # B's request reached detection
        pipe.release.set()
        assert [f.result(WAIT_S).status_code for f in [*held, other]] == [200, 200, 200]
    finally:
        pipe.release.set()
        pool.shutdown(wait=True)
    assert client.app.state.key_slots.inside(f"key:{ring.lookup(a).key_id}") == 0
    assert post_embed(client, headers={"X-API-Key": a}).status_code == 200


def test_without_keys_the_share_is_per_client_address(make_client: AppFactory) -> None:
    pipe = HeldPipeline()
    client = make_client(pipe, inference_slots_per_key=1)
    pool = ThreadPoolExecutor(1)
    try:
        held = pool.submit(post_embed, client)
        assert pipe.entered.acquire(timeout=WAIT_S)
        r = post_embed(client)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        pipe.release.set()
        assert held.result(WAIT_S).status_code == 200
    finally:
        pipe.release.set()
        pool.shutdown(wait=True)


def test_key_slots_count_per_key() -> None:
    from service.security.ratelimit import KeySlots

    slots = KeySlots(2)
    assert slots.try_enter("a") and slots.try_enter("a") and not slots.try_enter("a")
    assert slots.try_enter("b")
    slots.leave("a")
    assert slots.try_enter("a")
    for key in ("a", "a", "b"):
        slots.leave(key)
    assert slots.inside("a") == 0 and slots._inside == {}
    with pytest.raises(RuntimeError):
        slots.leave("a")


# ---------------------------------------------------------------- minimum upload rate


def test_a_trickled_body_is_408_once_it_falls_behind_the_minimum_rate(
    make_client: AppFactory,
) -> None:
    client = make_client(min_upload_bytes_per_s=1000, upload_grace_s=0.3)
    sent: list[dict] = []
    pulled = 0

    head = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")

    async def receive() -> dict:  # the part's head, then one byte every 50 ms: 20 bytes/s
        nonlocal pulled
        pulled += 1
        if pulled > 1:
            await asyncio.sleep(0.05)
        return {"type": "http.request", "body": head if pulled == 1 else b"x",
                "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/embed", "raw_path": b"/embed", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80), "state": {},
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"),
                    (b"content-length", b"100000")],
    }
    asyncio.run(asyncio.wait_for(client.app(scope, receive, send), WAIT_S))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert start["status"] == 408 and body["error"]["code"] == "request_timeout"
    assert "bytes/s" in body["error"]["message"]
    assert (b"connection", b"close") in start["headers"]
    assert client.app.state.inference_gate.inside == 0  # its slot is free again
    # A body that arrives at once is not affected.
    assert post_embed(client).status_code == 200
