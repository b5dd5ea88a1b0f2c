"""GET /docs (Swagger UI) and /redoc: pinned assets and a strict Content-Security-Policy.

FastAPI's own pages load the latest ``swagger-ui-dist@5`` and ``redoc@2`` from a CDN with no
policy, on a page where an admin pastes an API key. No well-kept PyPI package vendors current
Swagger UI (``swagger-ui-bundle`` ships 4.15.5, from 2022), so the pages keep the CDN but pin
exact versions, and a policy lets the page run only those files and its own inline start-up
script (by hash), send requests only to this server, and never be framed. A deployment that
wants no third-party script at all (or works offline) turns the pages off with
``FACESERVE_DOCS=false``; ``/openapi.json`` stays, for clients and generators.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

__all__ = ["CDN", "REDOC_JS", "SWAGGER_CSS", "SWAGGER_JS", "docs_router", "page_policy"]

CDN = "https://cdn.jsdelivr.net"
SWAGGER_JS = f"{CDN}/npm/swagger-ui-dist@5.17.14/swagger-ui-bundle.js"
SWAGGER_CSS = f"{CDN}/npm/swagger-ui-dist@5.17.14/swagger-ui.css"
REDOC_JS = f"{CDN}/npm/redoc@2.1.5/bundles/redoc.standalone.js"
FAVICON = "data:,"  # no request to a third site for an icon

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def page_policy(html: str, *scripts: str) -> str:
    """The CSP of one page: the given script files and the page's own inline scripts."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src {' '.join(scripts)} {hashes}; "
        f"style-src {CDN} 'unsafe-inline'; img-src 'self' data: {CDN}; connect-src 'self'; "
        "worker-src blob:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def _secured(page: HTMLResponse, *scripts: str) -> HTMLResponse:
    html = bytes(page.body).decode()
    return HTMLResponse(html, headers={
        "Content-Security-Policy": page_policy(html, *scripts),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    })


def docs_router(app: FastAPI) -> APIRouter:
    """The two pages for ``app`` (whose ``openapi_url`` they read)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=str(app.openapi_url), title=f"{app.title} - Swagger UI",
            swagger_js_url=SWAGGER_JS, swagger_css_url=SWAGGER_CSS, swagger_favicon_url=FAVICON,
        )
        return _secured(page, SWAGGER_JS)

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=str(app.openapi_url), title=f"{app.title} - ReDoc",
            redoc_js_url=REDOC_JS, redoc_favicon_url=FAVICON, with_google_fonts=False,
        )
        return _secured(page, REDOC_JS)

    return router
