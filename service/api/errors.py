"""Typed domain errors and the one place that turns any error into ``{"error": {...}}``.

Routes and helpers raise ``ServiceError`` subclasses (or let ``models.imageio`` raise its
``ImageError``s); ``install_error_handlers`` maps each to its status code and stable ``code``.
FastAPI's own validation errors and Starlette's HTTP errors (unknown route, wrong method,
malformed multipart) get the same shape, so a client parses one error format. A bad input is
never a 500: only a bug reaches the catch-all handler, which logs it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.imageio import ImageError
from service.api.metrics import flat_routes, method_label, route_template
from service.api.schemas import ErrorResponse

__all__ = [
    "BadRequest",
    "DuplicateFace",
    "FaceNotFound",
    "Forbidden",
    "InvalidBase64",
    "InvalidField",
    "ModelMismatch",
    "MultipleFaces",
    "NoFace",
    "NotReady",
    "PayloadTooLarge",
    "PoorQuality",
    "ServiceError",
    "SubjectNotFound",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "WorkerLost",
    "error_body",
    "error_responses",
    "install_error_handlers",
]

log = logging.getLogger("faceserve.errors")


class ServiceError(Exception):
    """Base of the errors a client can cause or see; ``status`` and ``code`` are its contract."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers
        self.details = details


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class InvalidBase64(BadRequest):
    code = "invalid_base64"


class SubjectNotFound(ServiceError):
    status, code = 404, "subject_not_found"


class FaceNotFound(ServiceError):
    status, code = 404, "face_not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidField(ServiceError):
    status, code = 422, "invalid_field"


class NoFace(ServiceError):
    status, code = 422, "no_face"


class NotAFace(ServiceError):
    """``face_crop=true`` on an image the detector does not confirm as a face."""

    status, code = 422, "not_a_face"


class MultipleFaces(ServiceError):
    status, code = 422, "multiple_faces"


class DuplicateFace(ServiceError):
    """The face already matches another subject of the gallery (``on_duplicate=reject``)."""

    status, code = 409, "duplicate_face"


class ModelMismatch(ServiceError):
    """Stored faces (a cluster's, a negative's source) were embedded by another model than
    the one serving: comparing them would be meaningless."""

    status, code = 409, "model_mismatch"


class PoorQuality(ServiceError):
    """Enrollment refused: the face breaks a quality limit. ``details`` name each broken
    limit (``measure``, ``value``, ``limit``, ``bound``) so a client can tell the user what to
    fix; ``force=true`` enrolls anyway."""

    status, code = 422, "poor_quality"

    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = details


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class WorkerLost(ServiceError):
    """A detection worker process died with the request's photo (``service.inference.workers``);
    the pool is restarted, so a retry is answered."""

    status, code = 503, "worker_lost"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class Unauthorized(ServiceError):
    """No key, an unknown key, or a revoked key (``WWW-Authenticate`` says how to send one)."""

    status, code = 401, "missing_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status, code = 403, "insufficient_scope"


class TooManyRequests(ServiceError):
    """Rate limit or full inference queue; ``Retry-After`` says when to try again."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: str = "1") -> None:
        super().__init__(message, code=code, headers={"Retry-After": retry_after})


# models.imageio error code -> HTTP status. Not decodable as an image at all is 415; an image
# whose bytes are broken (empty, cut off) is a bad request; too many pixels is too large.
IMAGE_ERROR_STATUS: dict[str, int] = {
    "not_an_image": 415,
    "unsupported_image": 415,
    "empty_image": 400,
    "truncated_image": 400,
    "image_too_large": 413,
    "invalid_base64": 400,
}

_STARLETTE_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def _response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _validation_details(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's error list, reduced to what is safe and useful to echo (no input bytes)."""
    out = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": err.get("msg", ""), "type": err.get("type")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = exc.headers or ({"Retry-After": "1"} if exc.status == 503 else None)
        return _response(exc.status, exc.code, exc.message, exc.details, headers=headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        code = getattr(exc, "code", "not_an_image")
        return _response(IMAGE_ERROR_STATUS.get(code, 415), code, str(exc) or code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc.errors())
        if any(d["type"] == "json_invalid" for d in details):
            return _response(400, "invalid_json", "the request body is not valid JSON", details)
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return _response(422, "invalid_field", summary or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STARLETTE_CODES.get(exc.status_code, f"http_{exc.status_code}")
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; GET and DELETE of one
            # path are separate routes here, so list the methods of all of them.
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return _response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The route template, not the path: paths hold subject ids (personal data).
        log.exception("unhandled error on %s %s", method_label(request.method),
                      route_template(request.scope, request.app.router.routes))
        return _response(500, "internal_error", "internal server error")


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path, under whichever prefix it is mounted."""
    path = str(request.scope.get("path", ""))
    methods: set[str] = set()
    for prefix, route in flat_routes(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and path.startswith(prefix) and regex.match(path[len(prefix):]):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed input: bad base64, bad JSON, broken image bytes (`truncated_image`).",
    401: "No API key (`missing_api_key`), an unknown one (`invalid_api_key`) or a revoked one "
    "(`revoked_api_key`). Send `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    403: "The key lacks the scope this operation needs (`insufficient_scope`).",
    404: "Unknown subject or face (or one of another gallery).",
    408: "The request body did not arrive within the request timeout (`request_timeout`).",
    409: "The face already matches another subject at the identify decision and "
    "`on_duplicate=reject` (`duplicate_face`); `details` has each image's outcome.",
    413: "Upload or image larger than the limits.",
    415: "Not an image (`not_an_image`), or an unsupported media type.",
    422: "Invalid field (`invalid_field`, `too_many_images`), or no usable face (`no_face`, "
    "`multiple_faces`; `nothing_enrolled` when several images failed for different reasons; "
    "`poor_quality` on enrollment, with the measure, value and limit in `details`; "
    "`not_a_face` for a `face_crop` image that is not a face).",
    429: "Too many requests: the key's rate limit (`rate_limited`) or a full inference queue "
    "(`overloaded`); retry after `Retry-After` seconds.",
    503: "Models or gallery not loaded yet (`not_ready`), or no answer within the request "
    "timeout (`timeout`); retry after `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses an operation can return."""
    return {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
