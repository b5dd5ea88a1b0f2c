"""A real server for client tests: the app under uvicorn on a free loopback port, in a thread.

Exactly what ``faceserve serve`` runs (``uvicorn_config``), over real TCP, so the client's
connection handling, headers and retries meet the real thing; the pipeline is handed in so
the tests of a session share one loaded model instead of starting a process each.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from service.api.app import create_app
from service.commands import uvicorn_config
from service.config import Settings
from service.security.keys import SCOPES

READY_TIMEOUT_S = 300.0


@dataclass
class LiveServer:
    url: str
    app: Any

    def create_key(self, name: str, scopes: tuple[str, ...] = SCOPES,
                   gallery: str | None = None) -> str:
        """A key made as `faceserve keys create` makes it (on the server's own store)."""
        _, token = self.app.state.services.keys.create(name, scopes, gallery)
        return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(
    pipeline: Any, data_dir: Path, *, load_delay_s: float = 0.0, wait: bool = True,
    **overrides: Any,
) -> Iterator[LiveServer]:
    """The server, once ready (``wait``); ``load_delay_s`` keeps it loading (503) that long."""
    port = free_port()
    overrides.setdefault("inference_threads", 2)
    settings = Settings(data_dir=data_dir, host="127.0.0.1", port=port, **overrides)

    def load(_: Settings) -> Any:
        time.sleep(load_delay_s)
        return pipeline

    app = create_app(settings, pipeline_factory=load)
    server = uvicorn.Server(uvicorn_config(app, settings, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while wait:
            try:
                r = httpx.get(f"{url}/readyz", timeout=5)
                if r.status_code == 200:
                    break
                assert r.json()["error"]["code"] == "not_ready", r.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            assert thread.is_alive(), "server thread died"
            time.sleep(0.05)
        yield LiveServer(url, app)
    finally:
        server.should_exit = True
        thread.join(60)
