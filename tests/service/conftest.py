"""Fixtures for the service tests: apps on temporary galleries, with the real or a fake pipeline.

The real ``FacePipeline`` is loaded once per session and shared by every app that needs it
(the acceptance tests on real photos). ``FakePipeline`` has the same methods and is used only
for fast tests of the HTTP layer itself (shapes, errors, pagination): its "photos" are PNGs
whose first pixel says how many faces they show and which person they are, so a test can
make the same person in different image bytes, or several faces of known sizes.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.faces import Box, Face
from service.api.app import create_app
from service.config import Settings

with warnings.catch_warnings():
    # Starlette 1.x deprecates its test client's httpx transport in favour of the ``httpx2``
    # package, which is not a dependency yet (the lead's call); the client works as it is.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

READY_TIMEOUT_S = 300.0


# ---------------------------------------------------------------- fake pipeline


_FAKE_FACE_TEXTURE = np.random.default_rng(0).integers(64, 192, size=(90, 90), dtype=np.uint8)


class FakePipeline:
    """``FacePipeline``'s methods over synthetic images (see ``fake_photo``).

    Face ``i`` of a photo has a box of side ``40 + 20 * i`` (the last face is the largest)
    and confidence ``0.9 - 0.1 * i`` (the first is the most confident). Its embedding depends
    only on the photo's ``person`` and the face index, never on the other pixels.
    """

    model_version = "fake-v1"
    embedding_size = 128
    device = "cpu"

    def __init__(self) -> None:
        self.embed_calls: list[int] = []

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list[Face]:
        """Faces of 40, 60, 80... px; with ``min_face_px``, those at least that wide (what the
        real detector promises)."""
        n = int(image[0, 0, 0])
        faces = []
        for i in range(n):
            side = 40 + 20 * i
            left = 10 + 100 * i
            box = Box(left, 20, left + side - 1, 20 + side - 1)
            cx, cy = left + side / 2, 20 + side / 2
            # Eye centres 28 px apart, nose base between them: a frontal face that passes
            # the default enrollment quality limits (so does the chip's texture, below).
            landmarks = np.array(
                [[cx + 20, cy - 5], [cx + 8, cy - 5], [cx - 20, cy - 5], [cx - 8, cy - 5],
                 [cx, cy + 8]],
                dtype=np.float32,
            )
            faces.append(Face(box=box, confidence=0.9 - 0.1 * i, landmarks=landmarks))
        return [f for f in faces if min_face_px is None or f.box.width >= min_face_px]

    def detect_face_crop(self, image: np.ndarray) -> list[Face]:
        """``face_crop=true``: the photo's first face, as if it filled the image; none when
        the photo shows no face."""
        return self.detect(image)[:1]

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        chips = np.zeros((len(faces), 150, 150, 3), dtype=np.uint8)
        for j, face in enumerate(faces):
            index = (face.box.left - 10) // 100
            chips[j, ..., 0] = image[0, 0, 1]
            chips[j, ..., 1] = image[0, 0, 2]
            chips[j, ..., 2] = index
            # A sharp, mid-grey face region; the corner pixel (the embedding's seed) and the
            # border stay flat so a stored JPEG chip re-embeds to the same vector.
            chips[j, 30:120, 30:120] = _FAKE_FACE_TEXTURE[..., None]
        return chips

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        self.embed_calls.append(len(chips))
        out = np.empty((len(chips), 128), dtype=np.float32)
        for j, chip in enumerate(chips):
            seed = int(chip[0, 0, 0]) * 65536 + int(chip[0, 0, 1]) * 256 + int(chip[0, 0, 2])
            v = np.random.default_rng(seed).standard_normal(128)
            out[j] = v / np.linalg.norm(v)
        return out


def fake_photo(person: int = 1, faces: int = 1, variant: int = 0, fmt: str = "PNG") -> bytes:
    """A photo for ``FakePipeline``: ``faces`` faces of ``person`` (0-65535).

    ``variant`` changes other pixels (so the bytes differ) without changing who is in it.
    """
    rng = np.random.default_rng(variant)
    pixels = rng.integers(0, 256, size=(120, 400, 3), dtype=np.uint8)
    pixels[0, 0] = (faces, person // 256, person % 256)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def fake_embedding(person: int, face_index: int = 0) -> np.ndarray:
    return FakePipeline().embed_chips(
        np.full((1, 150, 150, 3), (person // 256, person % 256, face_index), dtype=np.uint8)
    )[0]


# ---------------------------------------------------------------- apps


def wait_ready(client: TestClient, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Poll /readyz until the background loading is done; fail with its error if it failed."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503, r.text
        if r.json()["error"]["code"] == "startup_failed":
            pytest.fail(r.json()["error"]["message"])
        if time.monotonic() > deadline:
            pytest.fail(f"service not ready after {timeout}s")
        time.sleep(0.05)


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[AppFactory]:
    """``make_client(pipeline=..., **settings)`` -> a started, ready ``TestClient``."""
    opened: list[TestClient] = []

    def make(pipeline: Any = None, *, ready: bool = True, **overrides: Any) -> TestClient:
        pipe = pipeline if pipeline is not None else FakePipeline()
        overrides.setdefault("data_dir", tmp_path / f"gallery{len(opened)}")
        overrides.setdefault("inference_threads", 2)
        app = create_app(Settings(**overrides), pipeline_factory=lambda settings: pipe)
        client = TestClient(app, raise_server_exceptions=True)
        client.__enter__()
        opened.append(client)
        if ready:
            wait_ready(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    """An app with the fake pipeline on an empty temporary gallery."""
    return make_client()


# ---------------------------------------------------------------- real models and photos


@pytest.fixture(scope="session")
def face_pipeline() -> Any:
    """The real pipeline (converted dlib models), loaded once for the whole session."""
    from models.pipeline import FacePipeline

    return FacePipeline()


@pytest.fixture(scope="session")
def people(shared_data: Path) -> Path:
    return shared_data / "people"


@pytest.fixture(scope="session")
def lfw(shared_data: Path) -> Path:
    root = shared_data / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW not found at {root}")
    return root
