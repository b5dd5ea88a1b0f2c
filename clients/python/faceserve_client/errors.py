"""Exceptions: every error answer of the service becomes one, carrying its ``code``.

The service answers every error with ``{"error": {"code", "message", "details"}}`` and a stable
``code``; the class is chosen by that code first (``NoFaceError`` for ``no_face``), then by the
HTTP status (``NotFoundError`` for any 404), so ``except fc.NotFoundError`` also catches codes
added later. Failures without an answer (refused connection, timeout) are ``ConnectionError``
and ``TimeoutError`` subclasses of ``FaceserveError`` too.
"""

from __future__ import annotations

import datetime as dt
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectionError",
    "DuplicateFaceError",
    "FaceNotFoundError",
    "FaceserveError",
    "ImageError",
    "InternalServerError",
    "InvalidFieldError",
    "MultipleFacesError",
    "NoFaceError",
    "NotAFaceError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PoorQualityError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "SubjectNotFoundError",
    "TimeoutError",
    "UnprocessableError",
    "UnsupportedMediaError",
    "error_from_response",
]


class FaceserveError(Exception):
    """Base of everything this client raises."""


class ConnectionError(FaceserveError):
    """No answer: the server could not be reached (after the connection retries)."""


class TimeoutError(FaceserveError):
    """No answer within the client's timeout."""


class APIError(FaceserveError):
    """The service answered with an error status.

    ``code`` and ``message`` are the service's (``error.code``, ``error.message``); ``details``
    its per-field problems, per-photo outcomes or broken quality limits; ``retry_after`` the
    ``Retry-After`` header in seconds, when there was one.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.request_id = request_id


class BadRequestError(APIError):
    """400: malformed input (bad base64, bad JSON, broken image bytes, bad cursor)."""


class AuthenticationError(APIError):
    """401: no key, an unknown key or a revoked one."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope the operation needs."""


class NotFoundError(APIError):
    """404: unknown subject, face, key or path (or one of another gallery)."""


class SubjectNotFoundError(NotFoundError):
    pass


class FaceNotFoundError(NotFoundError):
    pass


class ConflictError(APIError):
    """409."""


class DuplicateFaceError(ConflictError):
    """409 ``duplicate_face``: the face matches another subject and ``on_duplicate=reject``."""


class PayloadTooLargeError(APIError):
    """413: upload or image larger than the server's limits."""


class UnsupportedMediaError(APIError):
    """415: not an image, or an unsupported media type."""


class UnprocessableError(APIError):
    """422: a field is invalid, or the photo has no usable face."""


class InvalidFieldError(UnprocessableError):
    pass


class NoFaceError(UnprocessableError):
    """422 ``no_face``: no face found in the photo."""


class MultipleFacesError(UnprocessableError):
    """422 ``multiple_faces``: several faces and ``on_multiple=reject``."""


class NotAFaceError(UnprocessableError):
    """422 ``not_a_face``: a ``face_crop`` image the detector does not confirm as a face."""


class PoorQualityError(UnprocessableError):
    """422 ``poor_quality``: ``details`` names each broken limit (measure, value, limit)."""


class RateLimitedError(APIError):
    """429: the key's rate limit (``rate_limited``) or a full server (``overloaded``)."""


class OverloadedError(RateLimitedError):
    pass


class ServiceUnavailableError(APIError):
    """503: not ready yet, or no answer within the server's request timeout."""


class InternalServerError(APIError):
    """5xx other than 503: a bug on the server (it logs it)."""


class ImageError(APIError):
    """An image the server could not read: ``not_an_image``, ``unsupported_image`` (415),
    ``empty_image``, ``truncated_image`` (400), ``image_too_large`` (413); ``status`` tells."""


_BY_CODE: dict[str, type[APIError]] = {
    "no_face": NoFaceError,
    "multiple_faces": MultipleFacesError,
    "not_a_face": NotAFaceError,
    "poor_quality": PoorQualityError,
    "duplicate_face": DuplicateFaceError,
    "invalid_field": InvalidFieldError,
    "subject_not_found": SubjectNotFoundError,
    "face_not_found": FaceNotFoundError,
    "overloaded": OverloadedError,
}
_IMAGE_CODES = {"not_an_image", "unsupported_image", "empty_image", "truncated_image",
                "image_too_large"}
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: UnprocessableError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: the service sends whole seconds; HTTP dates are accepted."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer; a body that is not the service's shape (a proxy's
    HTML page) still gives an ``APIError`` with ``code`` ``http_<status>``."""
    status = response.status_code
    code, message, details = f"http_{status}", response.reason_phrase or "error", None
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()
        if text:
            message = text[:500]
    if code in _BY_CODE:
        cls = _BY_CODE[code]
    elif code in _IMAGE_CODES:
        cls = ImageError
    elif status >= 500 and status != 503:
        cls = InternalServerError
    else:
        cls = _BY_STATUS.get(status, APIError)
    return cls(
        status, code, message, details=details,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
    )
