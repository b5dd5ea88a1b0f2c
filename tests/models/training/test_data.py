"""Identity folders, the chip cache, the split by identity and face-suitable augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.faces import Box, Face
from models.training.data import (
    AugmentConfig,
    ChipCache,
    augment_batch,
    choose_face,
    prepare_chips,
    scan_identities,
    split_identities,
    to_input,
)


def test_scan_identities_ignores_hidden_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "b.jpg").write_bytes(b"x")
    (tmp_path / "alice" / "a.PNG").write_bytes(b"x")
    (tmp_path / "alice" / "notes.txt").write_text("x")
    (tmp_path / "alice" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = scan_identities(tmp_path)
    assert list(found) == ["alice"]
    assert [p.name for p in found["alice"]] == ["a.PNG", "b.jpg"]
    with pytest.raises(ValueError, match="no identity sub-folders"):
        scan_identities(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        scan_identities(tmp_path / "missing")


def test_split_is_by_identity_seeded_and_singles_only_validate() -> None:
    names = [f"p{i:02d}" for i in range(20)] + ["solo"]
    counts = {n: 3 for n in names} | {"solo": 1}
    train, val = split_identities(names, 0.25, seed=1, counts=counts)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(names)
    assert "solo" in val and len(val) == 5 + 1
    assert split_identities(names, 0.25, seed=1, counts=counts) == (train, val)
    assert split_identities(names, 0.25, seed=2, counts=counts) != (train, val)
    with pytest.raises(ValueError, match="too few"):
        split_identities(["a", "b", "c"], 0.5, seed=0)


def test_choose_face_prefers_the_large_central_face() -> None:
    # A large face off-centre, a slightly smaller central one, a tiny central one.
    boxes = [(0, 0, 99, 99), (70, 70, 159, 159), (120, 120, 129, 129)]
    assert choose_face(boxes, 250, 250) == 1
    assert choose_face([(0, 0, 99, 99), (120, 120, 129, 129)], 250, 250) == 0


def test_chip_cache_round_trip_and_no_face_marker(tmp_path: Path) -> None:
    cache = ChipCache(tmp_path)
    chip = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    k1, k2 = cache.key(b"photo one"), cache.key(b"photo two")
    assert k1 != k2 and cache.get(k1) is None
    cache.put(k1, chip)
    cache.put(k2, None)
    assert np.array_equal(cache.get(k1), chip)  # lossless
    assert cache.get(k2) is False
    assert not list(tmp_path.rglob("*.tmp"))


class FakePipeline:
    """Stands in for FacePipeline: one face per photo unless the photo is all black."""

    def __init__(self) -> None:
        self.detect_calls = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        self.detect_calls += 1
        if image.max() == 0:
            return []
        return [Face(box=Box(10, 10, 99, 99), confidence=1.0, landmarks=np.zeros((5, 2)))]

    def align(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(image).resize((150, 150)))] * len(faces))


def test_prepare_chips_aligns_raw_photos_once_and_takes_chips_as_they_are(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("ann", "bob"):
        (data / name).mkdir(parents=True)
        for j in range(2):
            photo = rng.integers(1, 255, (200, 180, 3), dtype=np.uint8)
            Image.fromarray(photo).save(data / name / f"raw{j}.png")
        chip = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
        Image.fromarray(chip).save(data / name / "chip.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(data / "ann" / "black.png")
    (data / "bob" / "broken.jpg").write_bytes(b"not a jpeg")

    fake = FakePipeline()
    first = prepare_chips(data, tmp_path / "cache", pipeline_factory=lambda: fake, progress=False)
    assert first.chips.names == ["ann", "bob"]
    assert len(first.chips) == 6 and first.chips.chips.shape == (6, 150, 150, 3)
    assert first.aligned_now == 4 and first.given_as_chips == 2
    assert [Path(p).name for p in first.no_face] == ["black.png"]
    assert [Path(p).name for p in first.unreadable] == ["broken.jpg"]
    assert fake.detect_calls == 5

    def must_not_load():
        raise AssertionError("the cache should make the pipeline unnecessary")

    second = prepare_chips(data, tmp_path / "cache", pipeline_factory=must_not_load, progress=False)
    assert second.from_cache == 4 and second.aligned_now == 0 and len(second.no_face) == 1
    assert np.array_equal(second.chips.chips, first.chips.chips)
    assert second.summary()["images"] == 6


def test_select_relabels_and_caps(synthetic_chips: Path, tmp_path: Path) -> None:
    chips = prepare_chips(synthetic_chips, tmp_path / "c", progress=False).chips
    sub = chips.select(["person_03", "person_01"], max_per_identity=2, seed=0)
    assert sub.names == ["person_03", "person_01"]
    assert sub.labels.tolist() == [0, 0, 1, 1]
    assert all("person_03" in p for p in sub.paths[:2])


def test_augmentation_shapes_range_and_determinism() -> None:
    chips = np.random.default_rng(0).integers(0, 255, (4, 150, 150, 3), dtype=np.uint8)
    a = augment_batch(chips, torch.Generator().manual_seed(3))
    b = augment_batch(chips, torch.Generator().manual_seed(3))
    c = augment_batch(chips, torch.Generator().manual_seed(4))
    assert a.shape == (4, 3, 150, 150) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 255
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = augment_batch(chips, torch.Generator(), AugmentConfig(0, 0, 0, 0, 0, 0))
    assert torch.allclose(plain, to_input(chips), atol=0.01)  # identity up to rounding


def test_augmentation_flips_horizontally_never_vertically() -> None:
    # Left half bright, top half red: after any augmentation the top stays redder than the
    # bottom (no vertical flip), while the bright side moves right in about half the batch.
    chip = np.zeros((150, 150, 3), np.uint8)
    chip[:, :75] = 200
    chip[:75, :, 0] = 255
    chips = np.repeat(chip[None], 64, axis=0)
    x = augment_batch(chips, torch.Generator().manual_seed(0))
    red = x[:, 0] - x[:, 1]
    assert (red[:, :60].mean(dim=(1, 2)) > red[:, 90:].mean(dim=(1, 2)) + 50).all()
    grey = x.mean(dim=1)
    left_bright = grey[:, :, :60].mean(dim=(1, 2)) > grey[:, :, 90:].mean(dim=(1, 2))
    assert 16 < int(left_bright.sum()) < 48  # flip probability 0.5
