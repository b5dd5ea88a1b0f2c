"""Authentication, scopes, per-key rate limits and admission to inference, as dependencies.

Each protected route declares what it needs (``EnrollKey``, ``RecognizeImageKey``,
``RecognizeKey``, ``ReadKey``, ``EraseKey``, ``MetricsKey``, ``AuditKey``, ``AdminKey``; the
scopes are described in ``service.security.keys``) and receives the ``Principal`` it acts as.
A route needing a second scope for part of a request (identify's ``include_metadata`` needs
``read``) checks it with ``Principal.require``. Checks run before the
route reads its body, in this order: key present (401 ``missing_api_key``), known (401
``invalid_api_key``; also for a malformed ``Authorization`` header, two different keys, or a
header sent twice), not revoked (401 ``revoked_api_key``), within its rate (429
``rate_limited``), holding the scope (403 ``insufficient_scope``); then image routes take a
slot of the inference stage (429 ``overloaded`` when full).

Keys are enforced once the gallery database holds any key. Before that (a fresh install) every
request acts as the operator on the default gallery: ``faceserve serve`` allows that only on a
loopback address, or with ``--insecure``.
"""

# No ``from __future__ import annotations``: FastAPI must see the closures' ``Security(check)``
# annotations as objects, not as strings naming a local variable.
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.accesslog import KEY_ID_STATE
from service.api.deps import ServicesDep
from service.api.errors import Forbidden, TooManyRequests, Unauthorized
from service.inference.batcher import AdmissionGate
from service.security.keys import SCOPES, Namespace
from service.security.ratelimit import KeySlots, RateLimiter

__all__ = [
    "OPERATOR",
    "AdminKey",
    "AuditKey",
    "EnrollKey",
    "EraseKey",
    "MetricsKey",
    "Principal",
    "ReadKey",
    "RecognizeImageKey",
    "RecognizeKey",
    "identify_caller",
    "require",
]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an API key, or the operator when no keys exist."""

    key_id: str | None
    name: str
    scopes: tuple[str, ...]
    namespace: Namespace

    @property
    def gallery(self) -> str:
        return self.namespace.gallery

    def require(self, scope: str, what: str) -> None:
        """403 ``insufficient_scope`` unless this principal holds ``scope`` for ``what``."""
        if scope not in self.scopes:
            raise Forbidden(
                f"{what} needs a key with scope {scope!r}; key {self.name!r} has "
                f"{', '.join(self.scopes)}"
            )


OPERATOR = Principal(key_id=None, name="(no key)", scopes=SCOPES, namespace=Namespace())

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="An API key from `faceserve keys create`, as `Authorization: Bearer <key>`.",
)
_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="HeaderKey",
    description="The same API key in the `X-API-Key` header.",
)


_HEADER_NAMES = {"authorization": "Authorization", "x-api-key": "X-API-Key"}


def require(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting keys that hold ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def authenticate(
        request: Request,
        services: ServicesDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> Principal:
        ring = services.keys
        if ring is None or not ring.enforced():
            return OPERATOR
        # Every credential sent must be valid: a malformed Authorization header, or two
        # different keys, is refused rather than quietly ignored in favour of the other one.
        # FastAPI reads only the first of repeated headers, so a second value of either
        # header (even the same key again) is refused before anything else is looked at.
        for name in ("authorization", "x-api-key"):
            if len(request.headers.getlist(name)) > 1:
                raise Unauthorized(f"send one {_HEADER_NAMES[name]} header, not several",
                                   code="invalid_api_key")
        if bearer is None and request.headers.get("authorization") is not None:
            raise Unauthorized("the Authorization header must be `Bearer <key>`",
                               code="invalid_api_key")
        if bearer is not None and header is not None and bearer.credentials != header:
            raise Unauthorized("Authorization and X-API-Key carry different keys",
                               code="invalid_api_key")
        token = bearer.credentials if bearer is not None else header
        if not token:
            raise Unauthorized(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key`",
                code="missing_api_key",
            )
        record = ring.lookup(token.strip())
        if record is None:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
        # For the access log (service.api.accesslog): the public id, never the key.
        setattr(request.state, KEY_ID_STATE, record.key_id)
        if record.revoked_at is not None:
            raise Unauthorized("the API key has been revoked", code="revoked_api_key")
        limiter: RateLimiter = request.app.state.rate_limiter
        wait = limiter.acquire(record.key_id)
        if wait > 0:
            raise TooManyRequests(
                f"rate limit of key {record.name!r} exceeded ({limiter.rate:g}/s, burst "
                f"{limiter.burst})",
                code="rate_limited",
                retry_after=limiter.retry_after(wait),
            )
        if scope not in record.scopes:
            raise Forbidden(
                f"this operation needs a key with scope {scope!r}; key {record.name!r} has "
                f"{', '.join(record.scopes)}"
            )
        return Principal(record.key_id, record.name, record.scopes, Namespace(record.gallery))

    authenticate.__name__ = f"require_{scope}"
    return authenticate


def identify_caller(request: Request, services: ServicesDep) -> Principal | None:
    """Who an open endpoint's caller is, without refusing anyone: the operator when the server
    has no keys; the key's principal for one valid, unrevoked key; otherwise None.

    For endpoints anyone may call (``/readyz``) but whose details only some callers may see.
    No rate limit is taken: probes call these often."""
    ring = services.keys
    if ring is None or not ring.enforced():
        return OPERATOR
    headers = request.headers
    values = headers.getlist("authorization") + headers.getlist("x-api-key")
    if len(values) != 1:
        return None
    token = values[0]
    if headers.get("authorization") is not None:
        scheme, _, token = token.partition(" ")
        if scheme.lower() != "bearer":
            return None
    record = ring.lookup(token.strip())
    if record is None or record.revoked_at is not None:
        return None
    return Principal(record.key_id, record.name, record.scopes, Namespace(record.gallery))


def _caller(request: Request, principal: Principal) -> str:
    """Whose share a request uses: its key, or its client address when keys are off."""
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    client = request.client
    return f"addr:{client.host if client is not None else '?'}"


def _describe(principal: Principal) -> str:
    return "this client" if principal.key_id is None else f"key {principal.name!r}"


def _admit(
    check: Callable[..., Coroutine[Any, Any, Principal]],
) -> Callable[..., AsyncIterator[Principal]]:
    """``check``, then a slot of the inference stage for the rest of the request."""

    async def admitted(
        request: Request, principal: Annotated[Principal, Security(check)]
    ) -> AsyncIterator[Principal]:
        # The caller's own share first: one key (or one address without keys) never holds
        # more than its slots, so slow uploads of one cannot fill the server-wide queue.
        slots: KeySlots = request.app.state.key_slots
        caller = _caller(request, principal)
        if not slots.try_enter(caller):
            raise TooManyRequests(
                f"{_describe(principal)} already has {slots.per_key} image requests in "
                "progress; retry when one is answered",
                code="rate_limited",
            )
        try:
            gate: AdmissionGate = request.app.state.inference_gate
            if not gate.try_enter():
                raise TooManyRequests(
                    f"the server is busy ({gate.capacity} image requests in progress); retry "
                    "shortly",
                    code="overloaded",
                )
            try:
                yield principal
            finally:
                gate.leave()
        finally:
            slots.leave(caller)

    return admitted


_require_enroll = require("enroll")
_require_recognize = require("recognize")
_require_read = require("read")
_require_erase = require("erase")
_require_metrics = require("metrics")
_require_audit = require("audit")
_require_admin = require("admin")

EnrollKey = Annotated[Principal, Security(_admit(_require_enroll))]
RecognizeImageKey = Annotated[Principal, Security(_admit(_require_recognize))]
RecognizeKey = Annotated[Principal, Security(_require_recognize)]
ReadKey = Annotated[Principal, Security(_require_read)]
EraseKey = Annotated[Principal, Security(_require_erase)]
MetricsKey = Annotated[Principal, Security(_require_metrics)]
AuditKey = Annotated[Principal, Security(_require_audit)]
AdminKey = Annotated[Principal, Security(_require_admin)]
