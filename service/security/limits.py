"""Request limits as pure ASGI middleware: body size (413) and request timeout (408 / 503).

Two checks: a declared ``Content-Length`` above the limit is refused at once, without reading
a byte of the body; a body without one (chunked) or one that lies is counted as it streams in,
and the request is cut off as soon as the count passes the limit. The app never sees more than
``max_bytes`` of any body, and the server never buffers more than one extra chunk.

A minimum upload rate (``MinUploadRateMiddleware``) bounds the body on its own: after a grace
period it must keep arriving at ``bytes_per_s`` on average, or the request is answered 408 and
its connection closed. Image routes hold an inference slot while they read their body, so a
client trickling a byte every few seconds would otherwise hold one for the whole timeout.

The timeout bounds a whole request, body upload included (uvicorn has no body-read timeout, so
a client trickling bytes would otherwise hold a connection and a slot forever). When it fires
the request is cancelled (queued inference work is dropped) and, if no response has started,
answered 408 ``request_timeout`` when the app was waiting for the body (the client is slow), or
503 ``timeout`` with ``Retry-After`` otherwise (the server is slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body

__all__ = [
    "BodySizeLimitMiddleware",
    "BodyTooLarge",
    "MinUploadRateMiddleware",
    "RequestTimeoutMiddleware",
    "UploadTooSlow",
]


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` when the streamed body passes the limit."""


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body larger than the limit of {self.max_bytes} bytes"

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body("payload_too_large", self._message())).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The unread rest of the body makes the connection unusable.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
                break

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge(self._message())
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self._message())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # whatever the app answers to a cut-off body, the answer is 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not response_started:
            await self._reject(send)


class RequestTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        waiting_for_body = False
        started = False

        async def timed_receive() -> Message:
            nonlocal waiting_for_body
            waiting_for_body = True
            message = await receive()
            # Not in a ``finally``: when the timeout cancels this wait, the flag must still
            # say so when the handler below reads it.
            waiting_for_body = False
            return message

        async def timed_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, timed_receive, timed_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own TimeoutError, not ours
            if started:
                return  # half a response is out; the server closes the connection
            if waiting_for_body:
                status, code, headers = 408, "request_timeout", [(b"connection", b"close")]
                message = f"the request body did not arrive within {self.timeout_s:g} s"
            else:
                status, code, headers = 503, "timeout", [(b"retry-after", b"1")]
                message = f"no answer within the request timeout of {self.timeout_s:g} s"
            body = json.dumps(error_body(code, message)).encode()
            await send({
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers],
            })
            await send({"type": "http.response.body", "body": body})


class UploadTooSlow(Exception):
    """Raised into the app from ``receive`` when the body falls behind the minimum rate."""


class MinUploadRateMiddleware:
    def __init__(self, app: ASGIApp, bytes_per_s: float, grace_s: float) -> None:
        self.app = app
        self.bytes_per_s = bytes_per_s
        self.grace_s = grace_s

    def _message(self) -> str:
        return (f"the request body arrived slower than {self.bytes_per_s:g} bytes/s "
                f"(after {self.grace_s:g} s)")

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body("request_timeout", self._message())).encode()
        await send({
            "type": "http.response.start",
            "status": 408,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.bytes_per_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = 0
        body_done = False
        too_slow = False
        started = False

        async def paced_receive() -> Message:
            nonlocal received, body_done, too_slow
            if too_slow:
                raise UploadTooSlow(self._message())
            if body_done:  # waiting for a disconnect, not for the body
                return await receive()
            # By now the body must have reached ``received`` bytes at the minimum rate.
            deadline = start + self.grace_s + received / self.bytes_per_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                too_slow = True
                raise UploadTooSlow(self._message()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_slow:
                return  # whatever the app answers to a cut-off body, the answer is 408
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(UploadTooSlow):
            await self.app(scope, paced_receive, guarded_send)
        if too_slow and not started:
            await self._reject(send)
