"""The access log: one line per request, with nothing a client put in the URL.

uvicorn's access log writes the raw request line: ``GET /identify?embedding=...`` is a face
template in the log, and ``DELETE /subjects/<id>`` keeps an erased person's id there. This
middleware logs instead the method (standard ones only), the route *template*
(``/subjects/{subject_id}``; ``<unmatched>`` for unknown paths), the status, the duration, a
request id, which the response returns as ``X-Request-ID`` so one request can be found in the
log without the log holding anything personal, the public id of the API key that sent it
(never the key; ``-`` without a known key) and when it arrived (ISO 8601 UTC, so the line
stands on its own whatever the log handler's format). ``faceserve serve`` turns uvicorn's own
access log off.

The key is known only inside the app, after authentication: ``service.security.auth`` puts
its id in the request's state (``scope["state"]``, which this middleware creates, so that the
app's request objects and this middleware share one dict).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import method_label, route_template

__all__ = ["KEY_ID_STATE", "REQUEST_ID_HEADER", "AccessLogMiddleware"]

log = logging.getLogger("faceserve.access")

REQUEST_ID_HEADER = "x-request-id"
# request.state attribute holding the authenticated key's public id (set by the auth check).
KEY_ID_STATE = "faceserve_key_id"
# A client's (or proxy's) request id is kept for correlation only when it cannot carry
# anything but an opaque token: no spaces, no controls, nothing to spoof a log line with.
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(8)


class AccessLogMiddleware:
    """Logs each HTTP request once it is answered (pure ASGI, no response buffering)."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list]) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500
        # Created here, before the app, so the dict the auth check writes to is this one.
        state = scope.setdefault("state", {})
        arrived = datetime.now(UTC)
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [h for h in message.get("headers", ())
                           if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info(
                "%s %s %d %.1fms id=%s key=%s at=%s",
                method_label(scope.get("method", "")),
                route_template(scope, self._routes()),
                status,
                (time.perf_counter() - start) * 1000.0,
                request_id,
                state.get(KEY_ID_STATE) or "-",
                arrived.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            )
