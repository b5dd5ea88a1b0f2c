"""/docs and /redoc: exact pinned script versions, a policy that runs only those and the page's
own start-up script, and a switch that turns both pages off (offline deployments)."""

from __future__ import annotations

import base64
import hashlib
import re

from service.api.docs import REDOC_JS, SWAGGER_JS
from tests.service.conftest import AppFactory

PINNED = re.compile(r"https://cdn\.jsdelivr\.net/npm/[a-z-]+@\d+\.\d+\.\d+/")


def inline_hashes(html: str) -> set[str]:
    return {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
            for s in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)}


def test_the_docs_pages_load_only_pinned_scripts_under_a_policy(make_client: AppFactory) -> None:
    client = make_client()
    for path, script in (("/docs", SWAGGER_JS), ("/redoc", REDOC_JS)):
        r = client.get(path)
        assert r.status_code == 200, path
        sources = re.findall(r'<script src="([^"]+)"', r.text)
        assert sources == [script] and PINNED.match(script), sources
        assert "fonts.googleapis" not in r.text and "fastapi.tiangolo.com" not in r.text
        policy = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        allowed = set(directives["script-src"].split())
        # The pinned file and the page's own inline scripts, nothing else (no 'unsafe-inline').
        assert allowed == {script} | inline_hashes(r.text), path
        assert bool(inline_hashes(r.text)) == (path == "/docs")  # Swagger UI's start-up
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert client.get("/openapi.json").status_code == 200


def test_the_docs_pages_can_be_turned_off(make_client: AppFactory) -> None:
    client = make_client(docs=False)
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "faceserve"
