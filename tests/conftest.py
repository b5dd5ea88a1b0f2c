"""Fixtures shared by the whole suite: real face data, sample photos, a weights cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Converted weights are cached inside the checkout (ignored by git), so a fresh clone
# converts once per run and nothing outside the repo is relied on.
os.environ.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (LFW, group photos, named people), or skip with the reason."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real face data not found at {SHARED_DATA} (set FACESERVE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut: a real 512x512 RGB photo with one face, shipped by a package."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())
