"""GET /ui and its assets, each with a strict Content-Security-Policy.

Assets are read from this package's ``static`` folder only (no path leaves it) and are never
cached by the browser without revalidation, so an upgraded server serves its own console.
The policy allows scripts, styles, images and requests of this origin only (plus ``blob:``
images and video, for the photos the user picks and the webcam): with every user-supplied
string set as text, an injected id cannot run a script even if one slipped through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _not_found() -> Response:
    return Response("not found", status_code=404, media_type="text/plain",
                    headers=SECURITY_HEADERS)


@router.get("")
async def console_root() -> Response:
    """``/ui`` -> ``/ui/``, so relative asset paths resolve under ``/ui/``."""
    return RedirectResponse("/ui/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/")
async def console_index() -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"],
                        headers=SECURITY_HEADERS)


@router.get("/{asset:path}")
async def console_asset(asset: Annotated[str, PathParam(max_length=200)]) -> Response:
    """A file under ``static``; anything else (``..``, unknown suffix, a folder) is 404."""
    path = (STATIC_DIR / asset).resolve()
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None or not path.is_relative_to(STATIC_DIR) or not path.is_file():
        return _not_found()
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)
