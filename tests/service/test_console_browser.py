"""The web console in a real browser: headless Chromium (Debian's, driven by Playwright for
Python) against a real ``faceserve serve`` process, with real photos of ../shared/data.

One walk through every page, in the order a new operator would take: open the console of a
keyless loopback server, create a key, sign in (a wrong key first), take a webcam photo
(Chromium's fake camera), enroll two people by upload (one request also holds a group photo
and a photo of dogs: per-photo outcomes), identify a group photo and read the names drawn on
it, verify, see a hostile subject id shown as text, open a subject and erase it (gone from the
API too), and read the status page, creating and revoking a key there. Since issue 20's
scopes and subject edits: a face clicked in a group photo is the one enrolled, metadata is
kept or replaced as ticked, identify shows display names, verify's `on_multiple`, a subject
renamed (a taken id offers the merge), edited, merged and its faces paged, a gallery created,
given a key, filled and deleted, and keys with fewer scopes see closed pages with the reason.

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
# Markup that would run if parsed as HTML (no "/": new subject ids may not hold one).
HOSTILE_ID = '<img src=x onerror="window.pwned=1"><script>window.pwned=1<b>bold & co'


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
    # This checkout's client models too (the service's responses are defined there), not
    # those of an installed faceserve_client.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "clients/python")])}
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
    page: Any, subject: str, photos: list[Path], metadata: str = "", *,
    replace: bool = False, choose: int | None = None,
) -> None:
    """Enroll ``photos``; ``choose``: click that face (by /embed's order) of the first one."""
    page.click("nav a[data-page=enroll]")
    page.fill("#subject-id", subject)
    page.fill("#metadata", metadata)
    page.set_checked("#replace-metadata", replace)
    page.set_input_files("input[name=enroll-photos]", [str(p) for p in photos])
    # Every preview done (faces detected by POST /embed) before committing.
    wait_count(page, ".photo[data-faces]", len(photos))
    if choose is not None:
        page.click(f".photo:first-child figure[data-ready] .box[data-index='{choose}']")
        page.wait_for_selector(f".photo:first-child[data-chosen='{choose}']")
    page.click("#enroll-submit")
    wait_count(page, ".photo[data-outcome]", len(photos))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def sign_in(browser: Any, server: str, token: str) -> tuple[Any, Any]:
    """A fresh tab signed in with ``token``."""
    context = browser.new_context(viewport={"width": 1180, "height": 820})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/ui/")
    page.fill("#api-key", token)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#who:has-text('signed in as')")
    return context, page


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
        page.wait_for_selector("#who:has-text('signed in as “console-admin”')")
        assert "admin" in page.inner_text("#who")
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
        # An existing subject keeps its metadata unless "replace" is ticked: both said.
        enroll_through_the_page(page, "biden", [people / "train/biden/biden2.jpg"],
                                metadata='{"name": "Joe Biden"}')
        assert "metadata was kept" in page.inner_text("#enroll-status")
        assert api.get("/subjects/biden").json()["metadata"] == {}
        enroll_through_the_page(page, "biden", [people / "train/biden/biden2.jpg"],
                                metadata='{"name": "Joe Biden"}', replace=True)
        assert "metadata was replaced" in page.inner_text("#enroll-status")
        assert api.get("/subjects/biden").json()["metadata"] == {"name": "Joe Biden"}

        # Rose from the photo she shares with Kit (whose face the rule would take): her box
        # clicked, that face enrolled. Which box is hers: the one nearest her own portrait.
        kit_rose = people / "test/kit_with_rose.jpg"
        embed = lambda path: api.post(  # noqa: E731
            "/embed", data={"max_faces": "20"},
            files={"image": (path.name, path.read_bytes())}).json()["faces"]
        rose_portrait = embed(people / "train/rose_leslie/img2.jpg")[0]["embedding"]
        in_photo = [cosine(f["embedding"], rose_portrait) for f in embed(kit_rose)]
        rose_box = in_photo.index(max(in_photo))
        assert len(in_photo) == 2, in_photo  # (/embed lists her first: most confident)
        enroll_through_the_page(page, "rose", [kit_rose], metadata='{"name": "Rose Leslie"}',
                                choose=rose_box)
        assert page.locator(".photo .outcome").all_inner_texts() == ["enrolled"]
        assert "Metadata stored with the new subject" in page.inner_text("#enroll-status")
        r = api.post("/verify", data={"subject_id": "rose"}, files={
            "image": ("r.jpg", (people / "train/rose_leslie/img2.jpg").read_bytes())})
        assert r.json()["match"] is True, r.text
        r = api.post("/verify", data={"subject_id": "rose"}, files={
            "image": ("k.jpg", (people / "train/kit_harington/john1.jpeg").read_bytes())})
        assert r.json()["match"] is False, r.text

        # 4. Identify the group photo: every face boxed and named, the stranger "unknown".
        page.click("nav a[data-page=identify]")
        page.set_input_files("input[name=identify-photo]", str(group))
        page.wait_for_selector("#identify-result[data-done] figure[data-ready]")
        labels = page.locator("#identify-result .box .label").all_inner_texts()
        names = sorted(label.split(": ", 1)[1] for label in labels)
        # Biden by the display name of his metadata (the key may read it), obama by id.
        assert names == ["Joe Biden", "obama", "unknown"], labels
        assert "Joe Biden (biden)" in page.locator(
            "#identify-result .face-result .name").all_inner_texts()
        assert page.locator(".candidate .bar .threshold").count() >= 2
        assert "Operating point: threshold" in page.inner_text("#identify-result")
        shots.take(page, "identify")
        # "Not this person" on obama's face: identify then refuses obama for it; undone.
        obama_card = "#identify-result .face-result:has(.name:text-is('obama'))"
        page.click(f"{obama_card} button.not-this-person")
        page.wait_for_selector(f"{obama_card} .negative-status .message.ok")
        negatives = api.get("/negatives", params={"subject_id": "obama"}).json()["negatives"]
        assert len(negatives) == 1 and negatives[0]["source"] == "embedding", negatives

        def group_names() -> list[str | None]:
            r = api.post("/identify", files={"image": ("g.jpg", group.read_bytes())})
            return sorted((f["match"] or {}).get("subject_id", "-") for f in r.json()["faces"])

        assert "obama" not in group_names()
        page.click(f"{obama_card} button.undo-negative")
        page.wait_for_selector(f"{obama_card} .negative-status:has-text('Undone')")
        assert api.get("/negatives", params={"subject_id": "obama"}).json()["negatives"] == []
        assert "obama" in group_names()

        # 5. Verify a photo against a subject.
        page.click("nav a[data-page=verify]")
        page.set_input_files("input[name=verify-a]", str(people / "test/obama1.jpg"))
        page.fill("#verify-subject", "obama")
        page.click("#verify-submit")
        page.wait_for_selector("#verify-result[data-match]")
        assert page.get_attribute("#verify-result", "data-match") == "true"
        assert "Same person" in page.inner_text("#verify-result")
        shots.take(page, "verify")
        # Rose stands beside Kit: found anywhere in the frame with "any", refused by "reject".
        page.set_input_files("input[name=verify-a]", str(kit_rose))
        page.fill("#verify-subject", "rose")
        page.select_option("#verify-on-multiple", "any")
        page.click("#verify-submit")
        page.wait_for_selector("#verify-result[data-match='true']")
        assert "faces in the photo" in page.inner_text("#verify-result")
        page.select_option("#verify-on-multiple", "reject")
        page.click("#verify-submit")
        error = page.wait_for_selector("#verify-result .message.error")
        assert "multiple_faces" in error.inner_text()

        # 6. A subject id made of markup is shown as its characters, and never runs.
        with (people / "train/rose_leslie/img1.jpg").open("rb") as photo:
            r = api.post("/enroll", data={"subject_id": HOSTILE_ID},
                         files={"image": ("rose.jpg", photo, "image/jpeg")})
        assert r.status_code == 201, r.text
        page.click("nav a[data-page=gallery]")
        wait_count(page, "#subjects .thumb img", 4)
        ids = page.locator("#subjects .subject-id").all_inner_texts()
        assert sorted(ids) == sorted(["obama", "biden", "rose", HOSTILE_ID]), ids
        assert page.evaluate("window.pwned") is None
        assert page.locator("#subjects b").count() == 0
        assert page.locator("#subjects img[src=x]").count() == 0
        assert page.evaluate("document.scripts.length") == 1
        assert page.evaluate(
            "document.querySelector('#subjects .thumb img').naturalWidth") == 150
        shots.take(page, "gallery")

        # 7a. Rename rose, edit her metadata; a rename onto a taken id offers the merge,
        # confirmed naming both subjects.
        page.click("#subjects a.subject[data-subject-id='rose']")
        page.click("#edit-subject summary")
        page.fill("#rename-to", "rose-leslie")
        page.click("#rename-form button[type=submit]")
        page.wait_for_selector("text=“rose” renamed to “rose-leslie” (1 face moved).")
        assert page.inner_text("h1.subject-id") == "rose-leslie"
        assert api.get("/subjects/rose").status_code == 404
        page.click("#edit-subject summary")
        page.fill("#metadata-edit", '{"name": "Rose Leslie", "show": "GoT"}')
        page.click("#metadata-form button[type=submit]")
        page.wait_for_selector("#metadata-status .message.ok")
        assert '"show": "GoT"' in page.inner_text("#metadata-shown")
        assert api.get("/subjects/rose-leslie").json()["metadata"]["show"] == "GoT"
        with (people / "train/biden/biden.jpg").open("rb") as photo:
            assert api.post("/enroll", data={"subject_id": "joe"},
                            files={"image": ("b.jpg", photo, "image/jpeg")}).status_code == 201
        page.evaluate("location.hash = '#/subject/joe'")
        page.wait_for_selector("h1.subject-id:has-text('joe')")
        page.click("#edit-subject summary")
        page.fill("#rename-to", "biden")
        page.click("#rename-form button[type=submit]")
        offer = page.wait_for_selector("#rename-status .message.error")
        assert "already a subject" in offer.inner_text()
        page.click("#offer-merge")
        confirm = page.wait_for_selector("dialog.confirm[open]")
        assert "“joe” into “biden”" in confirm.inner_text()
        page.click("dialog.confirm .confirm-yes")
        page.wait_for_selector("text=“joe” merged into “biden”")
        assert page.inner_text("h1.subject-id") == "biden"
        assert api.get("/subjects/joe").status_code == 404

        # 7b. Open a subject one face per page, delete one of its faces, then erase it after
        # a confirmation naming it: gone from the API too.
        page.evaluate("location.hash = '#/subject/obama?per_page=1'")
        wait_count(page, "#faces .card.face .thumb img", 1)
        assert page.inner_text("#faces-page") == "page 1 of 2"
        assert '"office": "44th"' in page.inner_text("main pre.metadata")
        shots.take(page, "subject")
        first_face = page.get_attribute("#faces .card.face", "data-face-id")
        page.click("#faces-next")
        page.wait_for_selector("#faces[data-page='2']")
        second_face = page.get_attribute("#faces .card.face", "data-face-id")
        assert second_face != first_face and page.is_disabled("#faces-next")
        page.click(f"#faces [data-face-id='{second_face}'] button")
        assert second_face in page.inner_text("dialog.confirm[open]")
        page.click("dialog.confirm .confirm-yes")
        page.wait_for_selector(f"#faces[data-page='1'] [data-face-id='{first_face}']")
        assert page.inner_text("#face-count") == "1 face"
        assert api.get(f"/faces/{second_face}").status_code == 404
        page.click("#delete-subject")
        confirm = page.wait_for_selector("dialog.confirm[open]")
        assert "obama" in confirm.inner_text() and "its only face" in confirm.inner_text()
        page.click("dialog.confirm .confirm-yes")
        page.wait_for_selector("text=Subject “obama” erased (1 face).")
        wait_count(page, "#subjects .subject-id", 3)  # biden, rose-leslie, the markup
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
        # Every scope offered with its one-line explanation.
        assert page.locator("#key-form label.scope").count() == len(SCOPES)
        assert "erasure requests" in page.inner_text("#key-form label.scope:has-text('erase')")

        # 9. Galleries: create one, give it a key (the key form names the gallery), fill it
        # through that key, delete it after a confirmation naming it and what it holds.
        page.wait_for_selector("#galleries tr[data-gallery=''] em:has-text('default')")
        page.fill("#gallery-name", "acme")
        page.click("#gallery-form button[type=submit]")
        page.wait_for_selector("#galleries tr[data-gallery='acme']")
        page.fill("#key-name", "acme-app")
        page.fill("#key-gallery", "acme")
        page.click("#key-form button[type=submit]")
        acme_token = page.inner_text("#key-list code.token")
        with (people / "train/alex_lacamoire/img1.jpg").open("rb") as photo:
            r = httpx.post(f"{server}/enroll", data={"subject_id": "alex"},
                           headers={"Authorization": f"Bearer {acme_token}"},
                           files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=120)
        assert r.status_code == 201, r.text
        page.click("nav a[data-page=status]")
        row = page.wait_for_selector("#galleries tr[data-gallery='acme']")
        assert row.inner_text().split("\t")[1:5] == ["1", "1", "0", "1"], row.inner_text()
        shots.take(page, "galleries")
        page.click("#galleries tr[data-gallery='acme'] button:has-text('Delete')")
        confirm_text = page.inner_text("dialog.confirm[open]")
        assert "“acme”" in confirm_text and "1 subject, 1 face" in confirm_text, confirm_text
        page.click("dialog.confirm .confirm-yes")
        page.wait_for_selector("#gallery-status:has-text('Gallery “acme” deleted')")
        wait_count(page, "#galleries tr[data-gallery='acme']", 0)
        assert "acme" not in [g.get("name") for g in api.get("/galleries").json()["galleries"]]
        r = httpx.get(f"{server}/readyz", headers={"Authorization": f"Bearer {acme_token}"})
        assert "caller" not in r.json()  # its key went with it

        # 10. Keys with fewer scopes: what they may not do is shown closed, with the reason.
        r = api.post("/keys", json={"name": "desk", "scopes": ["enroll", "recognize", "read"]})
        desk_context, desk = sign_in(browser, server, r.json()["token"])
        try:
            desk.wait_for_selector("#subjects .subject-id")
            desk.click("#subjects a.subject[data-subject-id='biden']")
            desk.wait_for_selector("#faces .card.face")
            assert desk.is_disabled("#delete-subject")
            assert "scope erase" in (desk.get_attribute("#delete-subject", "title") or "")
            assert desk.locator("#faces .card.face button.delete-face").first.is_disabled()
            assert "scope erase" in desk.inner_text(".needs-scope[data-scope=erase]")
            desk.click("nav a[data-page=status]")
            desk.wait_for_selector("#key-list .needs-scope[data-scope=admin]")
            desk.wait_for_selector("#audit-events .needs-scope[data-scope=audit]")
            desk.wait_for_selector("#gallery-list .needs-scope[data-scope=admin]")
            shots.take(desk, "status-desk")
        finally:
            desk_context.close()
        r = api.post("/keys", json={"name": "kiosk", "scopes": ["recognize"]})
        kiosk_context, kiosk = sign_in(browser, server, r.json()["token"])
        try:
            kiosk.wait_for_selector("h1:has-text('Identify')")  # its first page
            assert "locked" in (kiosk.get_attribute("nav a[data-page=gallery]", "class") or "")
            assert "locked" in (kiosk.get_attribute("nav a[data-page=enroll]", "class") or "")
            assert "scope read" in (kiosk.get_attribute("nav a[data-page=gallery]", "title") or "")
            kiosk.click("nav a[data-page=gallery]")
            note = kiosk.wait_for_selector("main .needs-scope[data-scope=read]")
            assert "this key has recognize" in note.inner_text()
            assert kiosk.locator("#subjects").count() == 0
        finally:
            kiosk_context.close()
    finally:
        context.close()
    assert errors == [] and dialogs == [], (errors, dialogs)
