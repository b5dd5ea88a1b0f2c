"""Connection limits uvicorn lacks: a header-read timeout and a cap on open connections.

uvicorn closes a connection idle after a response (``timeout_keep_alive``), but one that never
completes its request line and headers (sends nothing, or half a line, or a byte every few
seconds) stays open for ever, and it accepts connections without bound: a thousand such
sockets hold a thousand file descriptors. ``guarded_h11`` is uvicorn's h11 protocol with:

* a header timeout: from the moment a connection opens, and again after each response, the
  next request's headers must be complete within ``header_timeout_s`` or the connection is
  closed (a request whose headers arrived is then bounded by the app's request timeout and
  minimum upload rate);
* a head size limit: a request line and headers over ``max_header_bytes`` are answered
  ``431`` and the connection closed, however they arrive;
* a connection cap: a connection beyond ``max_connections`` is answered
  ``503 Service Unavailable`` with ``Retry-After`` and closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_h11"]

log = logging.getLogger("faceserve.connections")

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
              b"connection: close\r\ncontent-length: 18\r\n\r\nheaders too large\n")
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
         b"retry-after: 1\r\nconnection: close\r\ncontent-length: 21\r\n\r\n"
         b"too many connections\n")


class _RefusalLog:
    """One warning per second at most, with the count since the last: a flood of
    connections must not become a flood of log lines."""

    def __init__(self) -> None:
        self.count = 0
        self.last = float("-inf")

    def note(self, now: float, cap: int) -> None:
        self.count += 1
        if now - self.last >= 1.0:
            log.warning("%d connection(s) refused: the cap of %d open connections is reached",
                        self.count, cap)
            self.count, self.last = 0, now


class _GuardedH11(H11Protocol):
    header_timeout_s: float = 10.0
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024
    refusals: _RefusalLog  # one per server (per ``guarded_h11`` class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the current request's head seen so far
        self._head_tail = b""  # its last 3 bytes: a CRLFCRLF may straddle two reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.refusals.note(self.loop.time(), self.max_connections)
            transport.write(_FULL)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # h11 bounds only a head that is still incomplete; one that arrives whole in a single
        # read (64 KB or more) would be parsed whatever its size. Count the head's bytes here,
        # up to the blank line that ends it, before h11 sees them.
        if self.conn.their_state is h11.IDLE and self.max_header_bytes > 0:
            joined = self._head_tail + data
            end = joined.find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4 - len(self._head_tail)
            if self._head_bytes + head > self.max_header_bytes:
                self._disarm_header_timer()
                self.transport.write(_TOO_LARGE)
                self.transport.close()
                return
            if end < 0:
                self._head_bytes += len(data)
                self._head_tail = joined[-3:]
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._head_bytes, self._head_tail = 0, b""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers, if the client sends one

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        if self.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                      self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        # IDLE: h11 has not seen a complete request line and headers for this cycle (a partial
        # one is buffered, not an event). Otherwise a request is under way: the app's limits
        # apply to it.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded_h11(
    header_timeout_s: float, max_connections: int, max_header_bytes: int = 16 * 1024
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with these limits (uvicorn takes a class, not an instance)."""
    return type("GuardedH11", (_GuardedH11,), {
        "header_timeout_s": header_timeout_s, "max_connections": max_connections,
        "max_header_bytes": max_header_bytes,
        "refusals": _RefusalLog(),
    })
