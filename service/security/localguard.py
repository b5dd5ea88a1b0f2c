"""Keyless mode on the loopback: only this machine's names, and no other site's pages.

Without API keys, ``faceserve serve`` listens only on the loopback, so that only local
processes can reach it. A web browser on the same machine is such a process, acting for any
site it has open: a page can ``POST /enroll`` a multipart form to ``http://127.0.0.1:8000``
without a CORS preflight, and with DNS rebinding (its own name re-resolved to 127.0.0.1) it
can even read the responses, since they then count as same-origin.

So while the server has no keys, a request that arrived on a loopback address must name a
loopback host (``localhost``, ``127.0.0.1``, ``[::1]``, any port) in ``Host`` (rebinding keeps
the attacker's name there), and an ``Origin`` header, when sent, must be such a host too
(browsers send it on every cross-site POST and fetch). Anything else is 403. Once keys exist
this guard steps aside: a browser cannot attach a key to a cross-site request without a
preflight, which the server never grants, and a proxy in front may use any host name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_body

__all__ = ["LoopbackGuardMiddleware", "is_loopback_name"]


def is_loopback_name(host: str | None) -> bool:
    """``localhost`` or a loopback IP (brackets allowed); never a name that merely starts so."""
    if not host:
        return False
    host = host.lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str | None:
    """The host part of a ``Host`` header value (``[::1]:8000`` -> ``[::1]``), or None."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else None
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value or None


def _origin_is_local(origin: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and is_loopback_name(parts.hostname)


class LoopbackGuardMiddleware:
    """403 for foreign ``Host`` or ``Origin`` on loopback requests while keys are not needed.

    ``keyless()`` says whether the server runs without keys now (True while loading, when it
    cannot know yet: the guard errs on the closed side)."""

    def __init__(self, app: ASGIApp, keyless: Callable[[], bool]) -> None:
        self.app = app
        self._keyless = keyless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refuse(scope) if scope["type"] == "http" else None
        if refusal is not None:
            code, message = refusal
            await JSONResponse(error_body(code, message), status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refuse(self, scope: Scope) -> tuple[str, str] | None:
        server = scope.get("server")
        if not server or not is_loopback_name(str(server[0])):
            return None
        host = origin = None
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        refusal = None
        if host is not None and not is_loopback_name(_host_name(host)):
            refusal = ("host_not_allowed",
                       "this server has no API keys and answers only to localhost, 127.0.0.1 "
                       "or [::1] in the Host header; create a key to serve other names")
        elif origin is not None and not _origin_is_local(origin):
            refusal = ("cross_origin",
                       "this server has no API keys and refuses requests from web pages of "
                       "other sites (Origin header); create a key to serve them")
        # Asked last: until keys exist, whether they do is a (small) database read.
        return refusal if refusal is not None and self._keyless() else None
