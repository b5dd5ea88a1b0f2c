"""Opaque page cursors: the one pagination convention of the API.

Every list that pages takes ``cursor`` (the previous page's ``next_cursor``) and ``limit``, and
answers ``next_cursor`` (null on the last page). A cursor is URL-safe base64 of a small JSON
object: the list it belongs to, the position (a client-visible id, never a stored one: no
gallery prefix) and a short hash binding it to the caller's gallery. Clients must treat it as
opaque; the server refuses, with 422 ``invalid_cursor``, any cursor it could not have issued
for this list and this gallery (edited, truncated, respelt, or another list's or gallery's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any

from fastapi import Query

from service.api.errors import InvalidField

__all__ = ["CursorQuery", "decode_cursor", "encode_cursor", "invalid_cursor"]

# The ``cursor`` query parameter of every paged list.
CursorQuery = Annotated[
    str | None,
    Query(max_length=1024, description="`next_cursor` of the previous page, unchanged "
          "(opaque; 422 `invalid_cursor` otherwise)."),
]

_VERSION = 1


def invalid_cursor(reason: str = "") -> InvalidField:
    return InvalidField(
        "cursor is not valid: pass back the `next_cursor` of the previous page unchanged"
        + (f" ({reason})" if reason else ""),
        code="invalid_cursor",
    )


def _gallery_tag(gallery: str) -> str:
    return hashlib.sha256(f"faceserve-cursor\x1f{gallery}".encode()).hexdigest()[:12]


def encode_cursor(kind: str, gallery: str, after: str | int) -> str:
    """The cursor of the page after ``after`` in list ``kind`` of ``gallery``."""
    body = {"v": _VERSION, "k": kind, "g": _gallery_tag(gallery), "a": after}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(kind: str, gallery: str, cursor: str, position: type = str) -> Any:
    """The position ``after`` of a cursor issued by ``encode_cursor(kind, gallery, after)``,
    of type ``position``; ``invalid_cursor`` (422) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_cursor() from None
    if not isinstance(body, dict) or set(body) != {"v", "k", "g", "a"} or body["v"] != _VERSION:
        raise invalid_cursor()
    if body["k"] != kind:
        raise invalid_cursor("it belongs to another list")
    if body["g"] != _gallery_tag(gallery):
        raise invalid_cursor("it belongs to another gallery")
    after = body["a"]
    if type(after) is not position:
        raise invalid_cursor()
    if encode_cursor(kind, gallery, after) != cursor:  # one spelling per position
        raise invalid_cursor()
    return after
