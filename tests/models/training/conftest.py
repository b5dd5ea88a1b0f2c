"""Fixtures for the training tests: tiny synthetic chip folders, modest CPU use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The test machine is shared: training tests use one CPU thread, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_synthetic_chips(root: Path, identities: int = 6, per_identity: int = 4) -> Path:
    """``root/person_XX/img_Y.png``: 150x150 chips, each identity a distinct blob layout
    plus per-image noise and shifts, so a small net can tell people apart in a few steps."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:150]
    for i in range(identities):
        folder = root / f"person_{i:02d}"
        folder.mkdir(parents=True)
        centres = rng.uniform(30, 120, size=(3, 2))
        colour = rng.uniform(60, 230, size=3)
        for j in range(per_identity):
            img = np.full((150, 150, 3), 40.0)
            for cx, cy in centres + rng.normal(0, 3, size=(3, 2)):
                blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 15.0**2))
                img += blob[:, :, None] * colour
            img += rng.normal(0, 8, size=img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{j}.png")
    return root


@pytest.fixture
def synthetic_chips(tmp_path: Path) -> Path:
    return write_synthetic_chips(tmp_path / "people")
