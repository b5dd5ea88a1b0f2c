"""Subject ids in URL paths: one path segment, with ``/`` only as ``%2F``.

Older versions allowed ``/`` in subject ids and routed ``/subjects/{id:path}``, so a
sub-resource such as ``/subjects/{id}/faces`` could not be told from a subject named
``x/faces``. New ids may not contain ``/`` (POST /enroll and renames refuse them); ids
enrolled before keep working when the client encodes the slash (``/subjects/a%2Fb``, what
``encodeURIComponent`` and ``urllib.parse.quote(id, safe="")`` produce).

ASGI servers decode the path before routing (``%2F`` and ``/`` look the same in
``scope["path"]``), so ``EncodedSlashMiddleware`` decodes ``raw_path`` again itself, segment by
segment, turning an encoded slash into ``SLASH`` (NUL, a character no id may hold), and the
``subject`` path convertor turns it back into ``/`` in the subject id. A NUL the client
encoded itself (``%00``) becomes DEL instead: refused by the id pattern as before, it can
never be read as a slash.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["SLASH", "EncodedSlashMiddleware", "SubjectConvertor"]

SLASH = "\x00"


class SubjectConvertor(Convertor[str]):
    """``{subject_id:subject}``: one segment; an encoded slash in it is part of the id."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return value.replace(SLASH, "/")

    def to_string(self, value: str) -> str:
        return value.replace("/", SLASH)


register_url_convertor("subject", SubjectConvertor())


def _decode_segment(segment: str) -> str:
    parts = segment.replace("%2f", "%2F").split("%2F")
    return SLASH.join(unquote(p).replace("\x00", "\x7f") for p in parts)


class EncodedSlashMiddleware:
    """Keeps ``%2F`` inside a path segment after ``/subjects/`` from splitting it (see the
    module docstring); every other path is left as the server decoded it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw and b"%" in raw:
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    text = None
                segments = [] if text is None else text.split("/")
                if "subjects" in segments:  # other paths keep the server's decoding
                    first = segments.index("subjects")
                    path = "/".join(
                        unquote(s) if i <= first else _decode_segment(s)
                        for i, s in enumerate(segments)
                    )
                    root = scope.get("root_path", "")
                    if root and not path.startswith(root) and scope["path"].startswith(root):
                        path = root + path  # servers that strip the root from raw_path
                    scope["path"] = path
        await self.app(scope, receive, send)
