"""The web console in a real browser: headless Chromium (Debian's, driven by Playwright for
Python) against a real ``faceserve serve`` process, with real photos of ../shared/data.

One walk through every page, in the order a new operator would take: open the console of a
keyless loopback server, create a key, sign in (a wrong key first), take a webcam photo
(Chromium's fake camera), enroll two people by upload (one request also holds a group photo
and a photo of dogs: per-photo outcomes), identify a group photo and read the names drawn on
it, verify, see a hostile subject id shown as text, open a subject and erase it (gone from the
API too), and read the status page, creating and revoking a key there.

Chromium: Playwright cannot download its own browser builds here, so the test uses the
system's ``chromium``. When it is missing and the test runs as root with ``apt-get`` (CI),
the fixture installs it (``apt-get install -y chromium``, once); otherwise the test skips and
says why. Screenshots of each page are written to a temporary folder (printed), to
``$FACESERVE_SCREENSHOT_DIR`` when set, and with ``FACESERVE_UPDATE_SCREENSHOTS=1`` the
README's three are refreshed in docs/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.security.keys import SCOPES
from tests.service.test_server_process import free_port, wait_ready

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README_SHOTS = ("enroll", "identify", "gallery")  # docs/console-<name>.png
TIMEOUT_MS = 180_000  # the machine is slow and shared: every wait is generous
HOSTILE_ID = "<script>window.pwned=1</script><b>bold</b> & co"


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def _install_chromium() -> None:
    """Debian's chromium, as root only (CI); an ``apt-get update`` first if the lists are old."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        subprocess.run(install, env=env, capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    path = _find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_chromium()
        path = _find_chromium()
    if path is None:
        pytest.skip("no chromium on this machine: `apt-get install chromium` (as root) gives "
                    "the browser these tests drive")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=path, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  # A synthetic camera (a test pattern, no face), allowed without asking.
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server (this checkout's code) on a fresh data directory, keyless at first."""
    root = tmp_path_factory.mktemp("console-server")
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
             "--data-dir", str(root / "data"), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log)
        yield base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class Shots:
    """Screenshots of each page: a temporary folder always, docs/ on request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        extra = os.environ.get("FACESERVE_SCREENSHOT_DIR")
        self.extra = Path(extra) if extra else None
        self.update_docs = os.environ.get("FACESERVE_UPDATE_SCREENSHOTS") == "1"

    def take(self, page: Any, name: str) -> None:
        # Nothing missing shown as such (a null child renders as the word "null").
        text = page.inner_text("main")
        assert not re.search(r"\b(null|undefined|NaN|\[object Object\])", text), (name, text)
        path = self.folder / f"console-{name}.png"
        page.screenshot(path=str(path))
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        if self.update_docs and name in README_SHOTS:
            DOCS.mkdir(exist_ok=True)
            # A palette of 256 colours: a third of the bytes, and it still reads well.
            with Image.open(path) as shot:
                shot.convert("RGB").quantize(256).save(DOCS / path.name, optimize=True)


def wait_count(page: Any, selector: str, count: int) -> None:
    """Until ``selector`` matches ``count`` elements. (``wait_for_function`` would evaluate a
    string in the page, which the console's policy forbids, as it should.)"""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_count(count, timeout=TIMEOUT_MS)


def enroll_through_the_page(
    page: Any, subject: str, photos: list[Path], metadata: str = ""
) -> None:
    page.click("nav a[data-page=enroll]")
    page.fill("#subject-id", subject)
    page.fill("#metadata", metadata)
    page.set_input_files("input[name=enroll-photos]", [str(p) for p in photos])
    # Every preview done (faces detected by POST /embed) before committing.
    wait_count(page, ".photo[data-faces]", len(photos))
    page.click("#enroll-submit")
    wait_count(page, ".photo[data-outcome]", len(photos))


@pytest.mark.timeout(2400)  # room for the fixture's one-off `apt-get install chromium`
def test_the_console_end_to_end(
    browser: Any, server: str, people: Path, shared_data: Path, tmp_path: Path
) -> None:
    shots = Shots(tmp_path)
    print(f"\nconsole screenshots: {tmp_path}")
    context = browser.new_context(viewport={"width": 1180, "height": 820})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        # 1. A keyless server on the loopback opens without a key, as the API does.
        response = page.goto(f"{server}/ui/")
        assert response is not None and response.ok
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector("#who:has-text('no key needed')")
        page.wait_for_selector("text=The gallery is empty")

        # 2. A key is created (as an operator would, here through the API); the console now
        # asks for one, and a wrong key gets a clear message.
        r = httpx.post(f"{server}/keys", json={"name": "console-admin",
                                               "scopes": list(SCOPES)})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        api = httpx.Client(base_url=server, timeout=120,
                           headers={"Authorization": f"Bearer {token}"})
        page.reload()
        page.fill("#api-key", "fsk_this-is-not-a-key")
        page.click("form.signin button[type=submit]")
        error = page.wait_for_selector(".signin-status .message.error")
        assert "API key was not accepted" in error.inner_text()
        assert "not valid" in error.inner_text()
        shots.take(page, "signin")
        page.fill("#api-key", token)
        page.click("form.signin button[type=submit]")
        page.wait_for_selector("#who:has-text('may read the gallery')")
        assert page.evaluate("sessionStorage.getItem('faceserve.apiKey')") == token
        assert context.cookies() == [] and token not in page.url

        # 3. Enroll two people by upload; the second request also holds a group photo and a
        # photo of dogs, refused one by one with their reasons.
        # The webcam first: Chromium's fake camera shows a test pattern, previewed as such.
        page.click("nav a[data-page=enroll]")
        page.click(".use-webcam")
        page.click(".take-photo:enabled")
        page.wait_for_selector(".photo[data-faces='0']:has-text('No face found')")
        enroll_through_the_page(page, "obama", [people / "train/obama/obama.jpg",
                                                people / "train/obama/obama2.jpg"],
                                metadata='{"office": "44th"}')
        assert page.locator(".photo .outcome").all_inner_texts() == ["enrolled", "enrolled"]
        group, dogs = people / "test/obama_and_biden.jpg", shared_data / "detect/dogs.jpg"
        enroll_through_the_page(page, "biden", [people / "train/biden/biden.jpg", group, dogs])
        outcomes = page.locator(".photo .outcome").all_inner_texts()
        assert outcomes[0] == "enrolled", outcomes
        assert "several faces" in outcomes[1] and "no face" in outcomes[2], outcomes
        assert page.get_attribute(".photo:nth-child(2)", "data-faces") == "3"
        page.wait_for_selector(".photo figure[data-ready] .box")
        shots.take(page, "enroll")

        # 4. Identify the group photo: every face boxed and named, the stranger "unknown".
        page.click("nav a[data-page=identify]")
        page.set_input_files("input[name=identify-photo]", str(group))
        page.wait_for_selector("#identify-result[data-done] figure[data-ready]")
        labels = page.locator("#identify-result .box .label").all_inner_texts()
        names = sorted(label.split(": ", 1)[1] for label in labels)
        assert names == ["biden", "obama", "unknown"], labels
        assert page.locator(".candidate .bar .threshold").count() >= 2
        assert "Operating point: threshold" in page.inner_text("#identify-result")
        shots.take(page, "identify")

        # 5. Verify a photo against a subject.
        page.click("nav a[data-page=verify]")
        page.set_input_files("input[name=verify-a]", str(people / "test/obama1.jpg"))
        page.fill("#verify-subject", "obama")
        page.click("#verify-submit")
        page.wait_for_selector("#verify-result[data-match]")
        assert page.get_attribute("#verify-result", "data-match") == "true"
        assert "Same person" in page.inner_text("#verify-result")
        shots.take(page, "verify")

        # 6. A subject id made of markup is shown as its characters, and never runs.
        with (people / "train/rose_leslie/img1.jpg").open("rb") as photo:
            r = api.post("/enroll", data={"subject_id": HOSTILE_ID},
                         files={"image": ("rose.jpg", photo, "image/jpeg")})
        assert r.status_code == 201, r.text
        page.click("nav a[data-page=gallery]")
        wait_count(page, "#subjects .thumb img", 3)
        ids = page.locator("#subjects .subject-id").all_inner_texts()
        assert sorted(ids) == sorted(["obama", "biden", HOSTILE_ID]), ids
        assert page.evaluate("window.pwned") is None
        assert page.locator("#subjects b").count() == 0
        assert page.evaluate("document.scripts.length") == 1
        assert page.evaluate(
            "document.querySelector('#subjects .thumb img').naturalWidth") == 150
        shots.take(page, "gallery")

        # 7. Open a subject, delete one of its faces, then erase it after a confirmation
        # naming it: gone from the API too.
        page.click("#subjects a.subject[data-subject-id='obama']")
        wait_count(page, "#faces .card.face .thumb img", 2)
        assert '"office": "44th"' in page.inner_text("main pre.metadata")
        shots.take(page, "subject")
        first_face = page.get_attribute("#faces .card.face", "data-face-id")
        page.click(f"#faces [data-face-id='{first_face}'] button")
        assert first_face in page.inner_text("dialog.confirm[open]")
        page.click("dialog.confirm .confirm-yes")
        wait_count(page, "#faces .card.face", 1)
        assert api.get(f"/faces/{first_face}").status_code == 404
        page.click("#delete-subject")
        confirm = page.wait_for_selector("dialog.confirm[open]")
        assert "obama" in confirm.inner_text() and "its only face" in confirm.inner_text()
        page.click("dialog.confirm .confirm-yes")
        page.wait_for_selector("text=Subject “obama” erased (1 face).")
        wait_count(page, "#subjects .subject-id", 2)
        assert "obama" not in page.locator("#subjects .subject-id").all_inner_texts()
        assert api.get("/subjects/obama").status_code == 404
        assert [f["match"] for f in api.post(
            "/identify", files={"image": ("o.jpg", (people / "test/obama1.jpg").read_bytes())}
        ).json()["faces"]] == [None]

        # 8. Status: model, gallery, operating point, the audit log; keys created and revoked.
        page.click("nav a[data-page=status]")
        page.wait_for_selector("#server dl")
        page.wait_for_selector("#audit td:has-text('delete_subject')")
        page.wait_for_selector("#keys td:has-text('console-admin')")
        server_text = page.inner_text("#server")
        ready = api.get("/readyz").json()
        assert ready["model"] in server_text and "Operating point: threshold" in server_text
        assert "Faces in the gallery" in server_text
        shots.take(page, "status")
        # A key for the front desk: created (its token shown once), then revoked.
        page.fill("#key-name", "front-desk")
        page.click("#key-list button[type=submit]")
        desk_token = page.inner_text("#key-list code.token")
        assert api.get("/subjects", headers={"Authorization": f"Bearer {desk_token}"}
                       ).status_code == 403  # enroll and recognize only, as ticked
        page.click("#keys tr:has-text('front-desk') button:has-text('Revoke')")
        assert "front-desk" in page.inner_text("dialog.confirm[open]")
        page.click("dialog.confirm .confirm-yes")
        wait_count(page, "#keys tr:has-text('front-desk') button", 0)
        r = httpx.post(f"{server}/identify", headers={"Authorization": f"Bearer {desk_token}"},
                       files={"image": ("o.jpg", (people / "test/obama1.jpg").read_bytes())})
        assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"
    finally:
        context.close()
    assert errors == [] and dialogs == [], (errors, dialogs)
