"""Schemathesis against our own OpenAPI document: every operation, bounded, no 500s.

Each operation gets ``MAX_EXAMPLES`` generated requests (plus the schema's examples and
schemathesis' coverage cases) and a per-operation time cap (pytest-timeout). Requests carry a
valid key of every scope through schemathesis' auth hook, so its ``ignored_auth`` check also
replays them without a key and with a wrong one and expects 401/403. The other default checks
run as well: no server error, documented status codes, content types, headers and response
schemas, and rejection of schema-invalid input. ``positive_data_acceptance`` is left out on
purpose: a request can match the schema and still be refused for reasons OpenAPI cannot state
(an image with no face is 422 ``no_face``, random bytes are 415 ``not_an_image``, GET /identify
takes exactly one of two optional parameters, a cursor must be one we issued).

The app is the real one with the fake pipeline; its lifespan is run once by the module
fixture (schemathesis restarts an app's lifespan per test, which would reload the gallery and
answer 503 meanwhile), and schemathesis calls it through a wrapper that only passes requests.
Case counts per operation and status are printed at the end (``-s``) for the closing note.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from service.config import Settings
from service.security.keys import SCOPES, KeyRing, open_security_store
from tests.service.conftest import FakePipeline, fake_photo

MAX_EXAMPLES = 40
PER_OPERATION_TIMEOUT_S = 90

DATA = Path(tempfile.mkdtemp(prefix="faceserve-fuzz-"))
atexit.register(shutil.rmtree, DATA, True)
APP = create_app(
    Settings(data_dir=DATA, rate_limit_per_s=0, inference_threads=2),
    pipeline_factory=lambda settings: FakePipeline(),
)
STATS: Counter[tuple[str, int]] = Counter()
# The key exists before collection: schemathesis asks for it while generating the examples.
_store = open_security_store(Settings(data_dir=DATA))
_, TOKEN = KeyRing(_store).create("fuzzer", list(SCOPES))
_store.close()  # type: ignore[attr-defined]


class _PassRequests:
    """``APP`` for schemathesis: requests go through; the lifespan belongs to the fixture."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
                await send({"type": f"lifespan.{done}.complete"})
                if done == "shutdown":
                    return
        await APP(scope, receive, send)


schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = _PassRequests()


@schema.auth()
class _Key:
    def get(self, case: Any, ctx: Any) -> str:
        return TOKEN

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "X-API-Key": data}


@pytest.fixture(scope="module")
def running() -> Iterator[None]:
    with TestClient(APP) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "fuzz app never got ready"
            time.sleep(0.05)
        r = client.post("/enroll", data={"subject_id": "alice"},
                        files={"image": ("p.png", fake_photo(1), "image/png")},
                        headers={"X-API-Key": TOKEN})
        assert r.status_code == 201, r.text
        yield
    total = sum(STATS.values())
    print(f"\nschemathesis: {total} cases over {len({op for op, _ in STATS})} operations")
    for (op, status), n in sorted(STATS.items()):
        print(f"  {op:<28} {status}  x{n}")
    assert not any(status >= 500 for _, status in STATS)


@pytest.mark.timeout(PER_OPERATION_TIMEOUT_S)
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_every_operation_survives_fuzzing(case: Any, running: None) -> None:
    response = case.call()
    STATS[(case.operation.label, response.status_code)] += 1
    try:
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
    except FailureGroup as group:
        if not (case.media_type or "").startswith("multipart/form-data") or not all(
            _only_type_mutations(e) for e in group.exceptions
        ):
            raise


def _only_type_mutations(failure: BaseException) -> bool:
    """Whether schemathesis' "schema-violating request accepted" is one no server can see: a
    multipart field is text on the wire, so a string mutated to a boolean arrives as the
    string ``false``, and an array that is empty is no field at all. Every other violation
    (missing or extra fields, bad formats, lengths) must still be refused."""
    if not isinstance(failure, AcceptedNegativeData):
        return False
    violations = [line.strip() for line in failure.message.splitlines()
                  if line.strip().startswith("- ")]
    return bool(violations) and all(v.startswith("- violates `type`") for v in violations)


def test_a_wrong_method_lists_every_allowed_one(running: None) -> None:
    """Found by schemathesis: GET and DELETE of /subjects/{id} are separate routes, and 405
    named only the first one's method in Allow."""
    client = TestClient(APP)  # no `with`: the module fixture owns the lifespan
    r = client.options("/subjects/x")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH"
    assert client.put("/keys").headers["allow"] == "GET, POST"
    assert client.post("/healthz").headers["allow"] == "GET"
