"""The console's server side: GET /faces/{id}/chip (auth, galleries, chips off) and the /ui
assets (served offline, a strict policy, no inline script, no HTML built from strings).

The browser tests (test_console_browser.py) drive the pages themselves; these are fast.
"""

from __future__ import annotations

import io
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.console.router import STATIC_DIR
from tests.service.conftest import AppFactory, fake_photo
from tests.service.test_auth import World, assert_error, bearer, files, world  # noqa: F401


def test_a_faces_chip_is_its_stored_aligned_jpeg(world: World) -> None:  # noqa: F811
    r = world.client.get(f"/faces/{world.alice_face}/chip", headers=bearer(world.tokens["all"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert "no-store" in r.headers["cache-control"]
    with Image.open(io.BytesIO(r.content)) as chip:
        assert (chip.format, chip.size) == ("JPEG", (150, 150))


def test_a_chip_needs_the_scope_that_reads_faces(world: World) -> None:  # noqa: F811
    c, path = world.client, f"/faces/{world.alice_face}/chip"
    assert_error(c.get(path), 401, "missing_api_key")
    assert_error(c.get(path, headers=bearer("fs_not-a-key")), 401, "invalid_api_key")
    assert_error(c.get(path, headers=bearer(world.tokens["revoked"])), 401, "revoked_api_key")
    for role in ("enroll", "recognize", "erase", "admin"):
        assert_error(c.get(path, headers=bearer(world.tokens[role])), 403, "insufficient_scope")
    assert c.get(path, headers=bearer(world.tokens["read"])).status_code == 200


def test_a_chip_of_another_gallery_is_404_like_an_unknown_face(world: World) -> None:  # noqa: F811
    c = world.client
    other, mine = bearer(world.tokens["other"]), bearer(world.tokens["all"])
    assert_error(c.get(f"/faces/{world.alice_face}/chip", headers=other), 404, "face_not_found")
    assert_error(c.get(f"/faces/{world.bob_face}/chip", headers=mine), 404, "face_not_found")
    assert c.get(f"/faces/{world.bob_face}/chip", headers=other).status_code == 200
    assert_error(c.get("/faces/nope/chip", headers=mine), 404, "face_not_found")
    # Deleted: gone with its face.
    assert c.delete(f"/faces/{world.alice_face}", headers=mine).status_code == 200
    assert_error(c.get(f"/faces/{world.alice_face}/chip", headers=mine), 404, "face_not_found")


def test_without_stored_chips_the_chip_is_404(make_client: AppFactory) -> None:
    client = make_client(store_chips=False)
    r = client.post("/enroll", data={"subject_id": "a"}, files=files(fake_photo(3)))
    assert r.status_code == 201, r.text
    assert_error(client.get(f"/faces/{r.json()['face_id']}/chip"), 404, "chip_not_found")


# ---------------------------------------------------------------- /ui


def assets() -> list[str]:
    return sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*")
                  if p.is_file())


def test_ui_serves_every_asset_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    names = assets()
    assert {"index.html", "app.js", "api.js", "dom.js", "style.css"} <= set(names)
    for name in ["", *names]:
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200, name
        policy = r.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert r.headers["x-content-type-options"] == "nosniff"
        expected = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[
            (name or "index.html").rsplit(".", 1)[1]]
        assert r.headers["content-type"].startswith(expected), name


@pytest.mark.parametrize("path", ["/ui/../service/config.py", "/ui/%2e%2e/config.py",
                                  "/ui/..%2frouter.py", "/ui/pages", "/ui/nothing.js",
                                  "/ui/index.html.bak"])
def test_ui_serves_nothing_outside_its_folder(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.text[:200])


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self.styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "style" or any(name == "style" for name, _ in attrs):
            self.styles += 1
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def test_every_asset_is_packaged() -> None:
    """A wheel (the Docker image installs one) carries the console: every file under static
    matches a package-data pattern."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    for name in assets():
        path = PurePosixPath("console/static") / name
        assert any(path.match(p) and len(path.parts) == len(PurePosixPath(p).parts)
                   for p in patterns), name


def test_the_page_has_no_inline_script_and_fetches_nothing_from_elsewhere() -> None:
    parser = _Scripts()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.scripts == [{"type": "module", "src": "app.js"}]
    assert parser.handlers == [] and parser.styles == 0
    for name in assets():
        text = (STATIC_DIR / name).read_text()
        # Offline: no absolute URL to load (links in comments would be harmless, but none).
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        if name.endswith(".js"):
            # User text reaches the page only as text nodes.
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                         "eval(", "new Function"):
                assert sink not in text, (name, sink)


def test_keyless_loopback_guard_covers_the_console(client: TestClient) -> None:
    local = TestClient(client.app, base_url="http://127.0.0.1:8000")
    assert local.get("/ui/").status_code == 200
    assert_error(local.get("/ui/", headers={"Host": "evil.example:8000"}), 403,
                 "host_not_allowed")
    assert_error(local.get("/ui/app.js", headers={"Origin": "https://evil.example"}), 403,
                 "cross_origin")


def test_readyz_gives_the_operating_points_to_known_keys_only(world: World) -> None:  # noqa: F811
    """The status page shows the thresholds in use; anonymous probes learn readiness only."""
    c = world.client
    for headers in ({}, bearer("fsk_not-a-key"), bearer(world.tokens["revoked"])):
        body = c.get("/readyz", headers=headers).json()
        assert "operating_point" not in body and "identify_operating_point" not in body
    body = c.get("/readyz", headers=bearer(world.tokens["admin"])).json()
    assert body["operating_point"]["threshold"] > 0
    assert "identify_operating_point" not in body  # admin alone may not identify
    body = c.get("/readyz", headers=bearer(world.tokens["recognize"])).json()
    assert body["identify_operating_point"]["source"] in ("setting", "fpir", "profile", "model")


def test_the_console_offers_every_scope_the_server_knows() -> None:
    """The key form of the status page lists the scopes itself (no endpoint for the page)."""
    import json
    import re

    from service.security.keys import SCOPES

    source = (STATIC_DIR / "pages" / "status.js").read_text()
    match = re.search(r"^const SCOPES = (\[.*?\]);", source, re.MULTILINE)
    assert match is not None
    assert tuple(json.loads(match.group(1))) == SCOPES


def test_readyz_tells_a_key_its_own_scopes_and_gallery(world: World) -> None:  # noqa: F811
    """The console shows and hides its pages by the key's scopes, read from /readyz."""
    from service.security.keys import SCOPES

    c = world.client
    for scope in SCOPES:
        caller = c.get("/readyz", headers=bearer(world.tokens[scope])).json()["caller"]
        assert caller["scopes"] == [scope] and caller["key_id"].startswith("k_"), caller
        assert "gallery" not in caller
    other = c.get("/readyz", headers=bearer(world.tokens["other"])).json()["caller"]
    assert other["gallery"] and other["name"] == "other"
    for headers in ({}, bearer("fsk_not-a-key"), bearer(world.tokens["revoked"])):
        assert "caller" not in c.get("/readyz", headers=headers).json()


def test_readyz_on_a_keyless_server_gives_every_scope(client: TestClient) -> None:
    from service.security.keys import SCOPES

    caller = client.get("/readyz").json()["caller"]
    assert caller["scopes"] == list(SCOPES) and "key_id" not in caller


def test_every_scope_is_explained_and_every_page_names_its_scope() -> None:
    """The key form explains each scope in one line; the pages closed to a key say which
    scope they need (session.js), so no scope the server knows goes unexplained."""
    import json

    from service.security.keys import SCOPES

    source = (STATIC_DIR / "session.js").read_text()
    block = re.search(r"^export const SCOPE_HELP = \{(.*?)^\};", source, re.S | re.M)
    assert block is not None
    explained = re.findall(r"^\s+(\w+): \"", block.group(1), re.M)
    assert tuple(explained) == SCOPES
    pages = re.search(r"^export const PAGE_SCOPES = \{(.*?)\};", source, re.S | re.M)
    assert pages is not None
    needed = dict(re.findall(r"(\w+): \"(\w+)\"", pages.group(1)))
    assert set(needed.values()) <= set(SCOPES)
    nav = re.findall(r'data-page="(\w+)"', (STATIC_DIR / "index.html").read_text())
    assert set(needed) <= {*nav, "subject"} and "status" not in needed
    assert json.loads(json.dumps(needed))["gallery"] == "read"


@pytest.mark.parametrize(("page", "calls"), [
    ("subject.js", ["patch(", "/merge", "/faces`", "subject_exists"]),
    ("enroll.js", ["replace_metadata", "metadata_status", '"face"', "index"]),
    ("verify.js", ["on_multiple", '"any"', '"reject"', '"primary"']),
    ("identify.js", ["include_metadata", "return_embedding", "/negatives"]),
    ("status.js", ["/galleries", "force"]),
])
def test_each_page_uses_the_api_it_offers(page: str, calls: list[str]) -> None:
    """A cheap guard that the pages still send what the README says they do; the browser
    test exercises them."""
    source = (STATIC_DIR / "pages" / page).read_text()
    for call in calls:
        assert call in source, (page, call)
