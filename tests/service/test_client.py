"""``faceserve_client`` against a real server (uvicorn on a loopback port, the real pipeline) and
real photos: every method of ``Client`` and ``AsyncClient``, the error mapping, the 429 retry.

No mocks: the server is ``tests/service/liveserver.py``, the photos ../shared/data/people and
LFW. An httpx event hook (the test's own instrument) records the statuses the client saw, so
the retry test can show a 429 was answered and then succeeded.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faceserve_client as fc
import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.service.liveserver import LiveServer, free_port, live_server
from tests.service.realdata import PEOPLE_ENROLL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(face_pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with API keys (rate limits off: they have their own server below)."""
    with live_server(face_pipeline, tmp_path_factory.mktemp("client"), rate_limit_per_s=0) as s:
        yield s


@pytest.fixture(scope="module")
def admin(server: LiveServer) -> str:
    return server.create_key("client-tests")


@pytest.fixture
def client(server: LiveServer, admin: str) -> Iterator[fc.Client]:
    with fc.Client(server.url, api_key=admin, timeout=120) as c:
        yield c


def jpeg(path: Path, blur: float = 0.0) -> bytes:
    image = Image.open(path).convert("RGB")
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_enroll_identify_verify_embed_with_every_kind_of_photo(
    client: fc.Client, people: Path
) -> None:
    obama = client.enroll(people / PEOPLE_ENROLL["obama"], "obama")  # a path
    assert isinstance(obama, fc.EnrollResponse) and obama.created and obama.subject_id == "obama"
    again = client.enroll(str(people / PEOPLE_ENROLL["obama"]), "obama")  # same bytes: same face
    assert again.face_id == obama.face_id and again.created is False
    # Several photos at once, as bytes and as a PIL image: one outcome each.
    biden = client.enroll(
        [(people / "train/biden/biden.jpg").read_bytes(),
         Image.open(people / "train/biden/biden2.jpg")],
        "biden", metadata={"team": "blue"},
    )
    assert isinstance(biden, fc.EnrollBatchResponse)
    assert [o.status for o in biden.images] == ["enrolled", "enrolled"] and biden.created == 2
    assert client.subject("biden").metadata == {"team": "blue"}
    kit = client.enroll(np.asarray(Image.open(people / PEOPLE_ENROLL["kit_harington"])),
                        "kit_harington")  # a numpy array
    assert kit.created and kit.quality.verdict in ("low", "medium", "high")
    with open(people / PEOPLE_ENROLL["rose_leslie"], "rb") as f:  # a binary file
        client.enroll(f, "rose_leslie")

    found = client.identify(people / "test/kit_with_rose.jpg")
    assert isinstance(found, fc.IdentifyImageResponse)
    assert sorted(f.match.subject_id for f in found.faces if f.match) == [
        "kit_harington", "rose_leslie"]
    r = client.identify(people / "test/obama1.jpg")
    assert r.faces[0].match is not None and r.faces[0].match.subject_id == "obama"

    # A stored face: its own template is left out, the subject's other one found.
    stored = client.identify(face_id=biden.images[0].face_id, k=3)
    assert isinstance(stored, fc.IdentifyResponse)
    assert stored.match is not None and stored.match.subject_id == "biden"

    embedded = client.embed(people / "train/obama/obama2.jpg")
    assert isinstance(embedded, fc.EmbedResponse) and len(embedded.faces) == 1
    face = embedded.faces[0]
    assert len(face.embedding) == 128
    for vector in (face.embedding, np.asarray(face.embedding), face.embedding_b64):
        by_vector = client.identify(embedding=vector)
        assert by_vector.match is not None and by_vector.match.subject_id == "obama"

    same = client.verify(people / "train/obama/obama2.jpg", people / "test/obama1.jpg")
    assert same.match is True and same.faces[0].source == "image_a"
    other = client.verify(people / "train/obama/obama2.jpg", people / "train/biden/biden2.jpg")
    assert other.match is False and other.similarity < same.similarity
    claim = client.verify(people / "test/johnsnow_test1.jpg", subject_id="kit_harington")
    assert claim.match is True and claim.templates_compared == 1


def test_gallery_listing_pages_and_deletes(client: fc.Client, people: Path, lfw: Path) -> None:
    names = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:40]:
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            client.enroll(photos[:2], f"lfw-{person.name}", on_multiple="primary")
            names.append(f"lfw-{person.name}")
        if len(names) == 5:
            break
    client.enroll(people / PEOPLE_ENROLL["alex_lacamoire"], "alex_lacamoire")
    listed = [s.subject_id for s in client.subjects(page_size=2)]  # several pages
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert set(names) | {"alex_lacamoire"} <= set(listed)

    detail = client.subject(names[0])
    assert isinstance(detail, fc.SubjectDetail) and detail.face_count == len(detail.faces) == 2
    assert [f.face_id for f in client.faces(names[0])] == [f.face_id for f in detail.faces]
    everyone = list(client.faces(page_size=3))
    assert {f.face_id for f in detail.faces} <= {f.face_id for f in everyone}
    assert len(everyone) == sum(s.face_count for s in client.subjects())

    one = detail.faces[0]
    assert client.face(one.face_id) == one
    assert client.delete_face(one.face_id).deleted is True
    with pytest.raises(fc.FaceNotFoundError) as err:
        client.face(one.face_id)
    assert err.value.status == 404 and err.value.code == "face_not_found"
    assert client.delete_subject(names[0]).faces_deleted == 1
    with pytest.raises(fc.SubjectNotFoundError):
        client.subject(names[0])
    assert names[0] not in {s.subject_id for s in client.subjects()}

    events = list(client.audit(action="delete_face", page_size=1))
    assert [e.face_id for e in events] == [one.face_id]


def test_keys_and_authentication_errors(server: LiveServer, client: fc.Client) -> None:
    created = client.create_key("reader", ["recognize"])
    assert created.token and created.scopes == ["recognize"]
    assert created.key_id in {key.key_id for key in client.keys()}  # noqa: SIM118
    with fc.Client(server.url, api_key=created.token) as reader:
        assert reader.health().status == "ok"
        assert reader.ready().status == "ready"
        with pytest.raises(fc.PermissionDeniedError) as err:
            reader.keys()
        assert err.value.code == "insufficient_scope" and err.value.status == 403
        revoked = client.revoke_key(created.key_id)
        assert revoked.revoked_at is not None
        with pytest.raises(fc.AuthenticationError) as err:
            reader.identify(face_id="f_nothing")
        assert err.value.code == "revoked_api_key"
    with fc.Client(server.url) as anonymous, pytest.raises(fc.AuthenticationError) as err:
        anonymous.keys()
    assert err.value.code == "missing_api_key" and err.value.status == 401


def test_galleries_and_identify_metadata(server: LiveServer, client: fc.Client,
                                         people: Path) -> None:
    client.enroll(people / PEOPLE_ENROLL["obama"], "obama", metadata={"name": "Barack Obama"},
                  replace_metadata=True)  # obama may exist already (the module's server)
    result = client.identify(people / "test/obama1.jpg", include_metadata=True)
    assert result.faces[0].match.metadata == {"name": "Barack Obama"}
    assert client.identify(people / "test/obama1.jpg").faces[0].match.metadata is None
    created = client.create_gallery("client-g")
    assert created.name == "client-g" and created.subjects == 0
    assert "client-g" in {g.name for g in client.galleries()}
    key = client.create_key("g-key", ["enroll", "recognize"], gallery="client-g")
    assert key.gallery == "client-g"
    assert [k.key_id for k in client.keys(gallery="client-g")] == [key.key_id]
    with fc.Client(server.url, api_key=key.token, timeout=120) as tenant:
        tenant.enroll(people / PEOPLE_ENROLL["biden"], "biden")
        with pytest.raises(fc.PermissionDeniedError):
            tenant.identify(people / "test/obama1.jpg", include_metadata=True)
    with pytest.raises(fc.APIError) as err:
        client.delete_gallery("client-g")
    assert err.value.code == "gallery_not_empty"
    deleted = client.delete_gallery("client-g", force=True)
    assert deleted.subjects_deleted == 1 and deleted.keys_revoked == [key.key_id]

    async def scenario() -> None:
        async with fc.AsyncClient(server.url, api_key=server.create_key("a"), timeout=120) as c:
            assert "client-g" not in {g.name for g in await c.galleries()}
            assert (await c.create_gallery("async-g")).name == "async-g"
            assert (await c.delete_gallery("async-g")).subjects_deleted == 0
            found = await c.identify(people / "test/obama1.jpg", include_metadata=True)
            assert found.faces[0].match.metadata == {"name": "Barack Obama"}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "code"),
    [
        (lambda p: np.full((200, 200, 3), 128, np.uint8), {}, fc.NoFaceError, "no_face"),
        (lambda p: p / "test/obama_and_biden.jpg", {"on_multiple": "reject"},
         fc.MultipleFacesError, "multiple_faces"),
        (lambda p: jpeg(p / "train/obama/obama2.jpg", blur=12), {}, fc.PoorQualityError,
         "poor_quality"),
        (lambda p: p / "train/biden/biden2.jpg", {"on_duplicate": "reject"},
         fc.DuplicateFaceError, "duplicate_face"),
        (lambda p: b"not an image at all", {}, fc.ImageError, "not_an_image"),
        (lambda p: (p / "test/obama1.jpg").read_bytes()[:40000], {}, fc.ImageError,
         "truncated_image"),
    ],
    ids=["no_face", "multiple_faces", "poor_quality", "duplicate", "not_an_image", "truncated"],
)
def test_refused_enrollments_raise_the_services_code(
    client: fc.Client, people: Path, make: Any, kwargs: dict, error: type, code: str
) -> None:
    client.enroll(people / "train/biden/biden.jpg", "biden")  # for the duplicate case
    with pytest.raises(error) as err:
        client.enroll(make(people), "someone-else", **kwargs)
    assert err.value.code == code and err.value.message
    assert isinstance(err.value, fc.APIError) and isinstance(err.value, fc.FaceserveError)
    if code == "poor_quality":
        assert "sharpness" in {d["measure"] for d in err.value.details}


def test_invalid_arguments_are_the_services_422(client: fc.Client, people: Path) -> None:
    with pytest.raises(fc.InvalidFieldError) as err:
        client.identify(people / "test/obama1.jpg", k=0)
    assert err.value.status == 422 and "k" in err.value.message
    with pytest.raises(ValueError, match="exactly one"):
        client.identify(people / "test/obama1.jpg", face_id="f_x")


def test_corrections_and_clusters(server: LiveServer, client: fc.Client, lfw: Path,
                                  admin: str) -> None:
    """Real photos: a face marked "not this person" stops matching, and moves and negatives
    go through both clients."""
    person = next(p for p in sorted(lfw.iterdir(), reverse=True)
                  if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3)  # used by no other test
    photos = sorted(person.glob("*.jpg"))
    a = client.enroll(photos[0], "joe")
    b = client.enroll(photos[1], "joe")
    found = client.identify(photos[2], return_embedding=True)
    face = found.faces[0]
    assert face.match is not None and face.match.subject_id == "joe" and face.embedding_b64
    negative = client.add_negative("joe", embedding=face.embedding_b64)
    assert negative.source == "embedding"
    again = client.identify(photos[2]).faces[0]
    assert again.match is None or again.match.subject_id != "joe"
    refused = [c for c in again.candidates if c.suppressed_by]
    assert [(c.subject_id, c.suppressed_by.negative_id) for c in refused] == [
        ("joe", negative.negative_id)]
    assert [n.negative_id for n in client.negatives("joe")] == [negative.negative_id]
    assert client.delete_negative(negative.negative_id).deleted
    with pytest.raises(fc.NotFoundError):
        client.delete_negative(negative.negative_id)

    moved = client.move_face(b.face_id, "joe-2")
    assert (moved.from_subject_id, moved.subject_created) == ("joe", True)
    assert [f.face_id for f in client.faces("joe-2")] == [b.face_id]
    assert client.run_clustering().clusters == []
    assert client.clusters(chips=True).clusters == []

    async def twin() -> None:
        async with fc.AsyncClient(server.url, api_key=admin, timeout=120) as c:
            n = await c.add_negative("joe", face_id=b.face_id)
            assert [x.source for x in await c.negatives("joe")] == ["face"]
            assert (await c.delete_negative(n.negative_id)).deleted
            back = await c.move_face(b.face_id, "joe")
            assert (back.subject_created, back.from_subject_deleted) == (False, True)
            assert (await c.clusters()).pending == 0

    asyncio.run(twin())
    assert {f.face_id for f in client.faces("joe")} == {a.face_id, b.face_id}
    with pytest.raises(fc.SubjectNotFoundError):  # it went with its only face
        client.subject("joe-2")
    client.delete_subject("joe")


def test_the_async_client_does_the_same(server: LiveServer, admin: str, people: Path) -> None:
    async def scenario() -> None:
        async with fc.AsyncClient(server.url, api_key=admin, timeout=120) as c:
            assert (await c.health()).status == "ok"
            assert (await c.wait_ready()).status == "ready"
            enrolled = await c.enroll(people / PEOPLE_ENROLL["rose_leslie"], "rose_async")
            assert enrolled.subject_id == "rose_async"
            probes = ["test/obama1.jpg", "train/biden/biden2.jpg", "test/johnsnow_test1.jpg"]
            results = await asyncio.gather(*(c.identify(people / p) for p in probes))
            assert [r.faces[0].match.subject_id for r in results] == [
                "obama", "biden", "kit_harington"]
            embedded = await c.embed(people / "train/rose_leslie/img2.jpg")
            by_vector = await c.identify(embedding=embedded.faces[0].embedding_b64)
            assert by_vector.match.subject_id in ("rose_leslie", "rose_async")
            assert (await c.verify(people / "train/rose_leslie/img2.jpg",
                                   subject_id="rose_async")).match
            assert (await c.identify(face_id=enrolled.face_id)).candidates
            listed = [s.subject_id async for s in c.subjects(page_size=2)]
            assert "rose_async" in listed
            faces = [f async for f in c.faces("rose_async")]
            assert [f.face_id for f in faces] == [enrolled.face_id]
            assert (await c.face(enrolled.face_id)).subject_id == "rose_async"
            assert (await c.subject("rose_async")).face_count == 1
            key = await c.create_key("async-key", ["enroll"])
            assert key.key_id in {k.key_id for k in await c.keys()}
            assert (await c.revoke_key(key.key_id)).revoked_at is not None
            assert [e async for e in c.audit(action="revoke_key")]
            assert (await c.delete_face(enrolled.face_id)).deleted
            with pytest.raises(fc.SubjectNotFoundError):
                await c.delete_subject("never-enrolled")
            with pytest.raises(fc.NoFaceError):
                await c.enroll(np.zeros((120, 120, 3), np.uint8), "nobody")

    asyncio.run(scenario())


def test_429_is_retried_after_retry_after(
    face_pipeline: Any, tmp_path: Path, people: Path
) -> None:
    """One request per second, no burst: back-to-back calls are answered 429 with Retry-After,
    and the client waits and succeeds; without retries (or with a wait longer than it accepts)
    the 429 is raised as ``RateLimitedError`` with the service's code."""
    seen: list[int] = []
    with live_server(face_pipeline, tmp_path / "g", rate_limit_per_s=1.0,
                     rate_limit_burst=1) as server:
        token = server.create_key("limited")
        http = httpx.Client(base_url=server.url, timeout=60,
                            headers={"Authorization": f"Bearer {token}"},
                            event_hooks={"response": [lambda r: seen.append(r.status_code)]})
        with fc.Client(server.url, http_client=http) as c:
            for _ in range(3):
                assert c.keys()
        assert seen.count(200) == 3 and 429 in seen
        http.close()
        with fc.Client(server.url, api_key=token, max_retries=0) as c:
            with pytest.raises(fc.RateLimitedError) as err:  # two in a row: one is refused
                c.keys()
                c.keys()
            assert err.value.code == "rate_limited" and err.value.retry_after >= 1
        with (fc.Client(server.url, api_key=token, max_backoff=0.1) as c,
              pytest.raises(fc.RateLimitedError)):  # Retry-After 1 s > what it accepts
            for _ in range(3):
                c.keys()
        # Async too: concurrent calls queue behind Retry-After and all succeed.
        async def burst() -> list[fc.KeyInfo]:
            async with fc.AsyncClient(server.url, api_key=token, max_retries=10) as ac:
                results = await asyncio.gather(*(ac.keys() for _ in range(3)))
                return [k for keys in results for k in keys]
        assert asyncio.run(burst())
        with fc.Client(server.url, api_key=token, max_retries=5) as c:
            assert c.identify(people / "test/obama1.jpg").faces


def test_a_loading_server_is_waited_for(face_pipeline: Any, tmp_path: Path) -> None:
    """Called before the server listens (connection refused) and while it loads (503
    ``not_ready`` with Retry-After): both are retried until it answers."""
    seen: list[int] = []
    with live_server(face_pipeline, tmp_path / "g", load_delay_s=3.0, wait=False) as server:
        http = httpx.Client(base_url=server.url, timeout=60,
                            event_hooks={"response": [lambda r: seen.append(r.status_code)]})
        with fc.Client(server.url, http_client=http, max_retries=30, backoff=0.05,
                       max_backoff=2.0) as c:
            assert c.ready().status == "ready"
        http.close()
    assert seen[-1] == 200 and 503 in seen


def test_a_server_that_is_not_there_is_a_connection_error() -> None:
    with (fc.Client(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff=0.01) as c,
          pytest.raises(fc.ConnectionError)):
        c.health()
