"""A real server process (uvicorn, as ``faceserve serve`` configures it) against the sockets
an attacker opens: half a request line, nothing at all, an idle keep-alive connection, more
connections than the cap, headers larger than the limit. Every one is closed by the server.

The fake pipeline (``tests.service.fake_server``): what is tested is the connection handling,
not the models. No timing is asserted: each check waits (with a generous bound) for the
server to close the socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.commands import MAX_HEADER_BYTES

REPO = Path(__file__).resolve().parents[2]
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8
CLOSE_WAIT_S = 30.0  # only reached when the server never closes the socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port()
    data = tmp_path_factory.mktemp("conn")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               FACESERVE_PORT=str(port), FACESERVE_DATA_DIR=str(data / "gallery"),
               FACESERVE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), FACESERVE_KEEP_ALIVE_S="1",
               FACESERVE_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.service.fake_server"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


def connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr, timeout=CLOSE_WAIT_S)
    return s


def closed_by_server(s: socket.socket) -> bytes:
    """Reads until the server closes the socket; returns what it sent. Fails on a timeout."""
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {CLOSE_WAIT_S} s")
    finally:
        s.close()
    return got


def test_half_a_request_line_is_closed_after_the_header_timeout(server) -> None:
    s = connect(server)
    s.sendall(b"GET /healthz HTT")
    assert closed_by_server(s) == b""


def test_a_connection_that_sends_nothing_is_closed(server) -> None:
    assert closed_by_server(connect(server)) == b""


def test_headers_trickled_a_byte_at_a_time_are_closed(server) -> None:
    """Data arriving does not reset the header timeout (it would with a plain idle timer)."""
    s = connect(server)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    try:
        for byte in request:
            s.sendall(bytes([byte]))
            time.sleep(0.02)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while trickling: what the test wants
    assert closed_by_server(s) == b""


def test_an_idle_keep_alive_connection_is_closed(server) -> None:
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = closed_by_server(s)
    assert got.startswith(b"HTTP/1.1 200") and b"connection: close" not in got.lower()


def test_an_incomplete_head_over_the_limit_is_refused_and_closed(server) -> None:
    s = connect(server)
    big = b"a" * (MAX_HEADER_BYTES + 10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big)
    got = closed_by_server(s)
    assert got.startswith(b"HTTP/1.1 431"), got[:100]  # h11 alone: 400


def test_connections_past_the_cap_are_503_and_closed(server) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        # Each is accepted (its header timer runs); one more is over the cap.
        got = closed_by_server(connect(server))
        assert got.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in got.lower()
    finally:
        for s in held:
            s.close()
    # The held ones gone, the server answers again (it may take a moment to see them close).
    deadline = time.monotonic() + CLOSE_WAIT_S
    while True:
        try:
            if httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never accepted connections again"
        time.sleep(0.1)


def test_a_normal_request_on_a_kept_alive_connection_is_served(server) -> None:
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}") as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200


def test_a_whole_head_over_the_limit_is_431_and_closed(server) -> None:
    """Sent in one piece, the head is complete when h11 sees it: h11 alone would parse it."""
    s = connect(server)
    big = b"a" * (MAX_HEADER_BYTES + 10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big + b"\r\n\r\n")
    got = closed_by_server(s)
    assert got.startswith(b"HTTP/1.1 431"), got[:100]


def test_a_large_body_sent_with_its_head_is_not_mistaken_for_a_large_head(server) -> None:
    body = b'{"image": "' + b"A" * (4 * MAX_HEADER_BYTES) + b'"}'
    s = connect(server)
    s.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
              + body)
    got = closed_by_server(s)
    assert got.startswith(b"HTTP/1.1 4") and not got.startswith(b"HTTP/1.1 431"), got[:200]
