"""models/embedder.py against dlib's ``face_recognition_model_v1`` on the same aligned chips.

The chips are made by dlib alone (HOG detector -> 5-point shape predictor ->
``dlib.get_face_chip``), so this file tests the network and nothing else: whatever chip dlib
embeds, we must embed to the same direction.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
import torch

from models.embedder import DlibResNet, embed_chips, load_embedder
from models.imageio import decode_image
from models.weights import dlib_model_path

MIN_COSINE = 0.9999  # measured: 0.99999991 (min over all chips below)


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return load_embedder(device="cpu")


@pytest.fixture(scope="module")
def dlib_face_rec():
    return dlib.face_recognition_model_v1(str(dlib_model_path("embedder")))


@pytest.fixture(scope="module")
def dlib_chipper():
    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(dlib_model_path("landmarks")))

    def chips(img: np.ndarray) -> list[np.ndarray]:
        return [dlib.get_face_chip(img, sp(img, r), size=150, padding=0.25) for r in hog(img, 0)]

    return chips


def _synthetic_chips() -> np.ndarray:
    """Inputs far from faces, where a wrong normalisation or padding would show most."""
    ramp = np.linspace(0, 255, 150)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1)
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3))
    return np.stack([gradient, noise, np.full((150, 150, 3), 255), np.zeros((150, 150, 3))]).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def base_chips(astronaut, dlib_chipper) -> np.ndarray:
    """The astronaut's chip, the chip of its mirror image, and the synthetic chips."""
    face = dlib_chipper(astronaut)
    mirrored = dlib_chipper(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(face) == len(mirrored) == 1
    return np.concatenate([np.stack(face + mirrored), _synthetic_chips()])


REAL_PHOTOS = [
    "people/misc/obama-480p.jpg",
    "people/test/kit_with_rose.jpg",  # two faces
    "detect/2008_002506.jpg",  # three faces
    "detect/2009_004587.jpg",
    "lfw/lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "lfw/lfw-deepfunneled/Serena_Williams/Serena_Williams_0001.jpg",
    "lfw/lfw-deepfunneled/Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg",
]


@pytest.fixture(scope="module")
def real_chips(shared_data: Path, dlib_chipper) -> np.ndarray:
    chips = []
    for rel in REAL_PHOTOS:
        chips += dlib_chipper(decode_image((shared_data / rel).read_bytes()))
    assert len(chips) >= 10
    return np.stack(chips)


def _dlib_unit(face_rec, chips: np.ndarray) -> np.ndarray:
    """dlib's descriptors of 150x150 chips (the batch overload), L2-normalised."""
    raw = np.array([np.asarray(v) for v in face_rec.compute_face_descriptor(list(chips))])
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def _assert_parity(model: DlibResNet, face_rec, chips: np.ndarray) -> np.ndarray:
    ours = embed_chips(model, chips)
    assert ours.shape == (len(chips), 128) and ours.dtype == torch.float32
    np.testing.assert_allclose(torch.linalg.vector_norm(ours, dim=1).numpy(), 1.0, atol=1e-5)
    cosine = (ours.numpy().astype(np.float64) * _dlib_unit(face_rec, chips)).sum(axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    return cosine


def test_chip_parity_astronaut_and_synthetic(model, dlib_face_rec, base_chips):
    _assert_parity(model, dlib_face_rec, base_chips)


def test_chip_parity_real_photos(model, dlib_face_rec, real_chips):
    _assert_parity(model, dlib_face_rec, real_chips)


def test_raw_descriptor_matches_dlib(dlib_face_rec, base_chips):
    """Before normalisation too (unfolded affine layers): dlib's vector, norm ~1.2-1.5."""
    unfolded = load_embedder(device="cpu", fold=False)
    x = torch.from_numpy(base_chips[:2]).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        raw = unfolded.forward_raw(x).numpy()
    ref = np.array(
        [np.asarray(v) for v in dlib_face_rec.compute_face_descriptor(list(base_chips[:2]))]
    )
    assert 1.0 < np.linalg.norm(ref[0]) < 2.0
    np.testing.assert_allclose(raw, ref, atol=1e-5)


def test_batch_independent(model, base_chips, real_chips):
    chips = np.concatenate([base_chips, real_chips])[:8]
    together = embed_chips(model, chips)
    alone = torch.cat([embed_chips(model, c[None]) for c in chips])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    small_batches = embed_chips(model, chips, batch_size=3)
    torch.testing.assert_close(together, small_batches, atol=1e-5, rtol=0)


def test_flip_is_renormalised_mean_with_mirror(model, base_chips):
    chips = base_chips
    mirrored = chips[:, :, ::-1]  # a negative-stride view: must be accepted as it is
    plain = embed_chips(model, chips).double()
    mirror = embed_chips(model, mirrored).double()
    by_hand = torch.nn.functional.normalize(plain + mirror, dim=1)
    flipped = embed_chips(model, chips, flip=True)
    torch.testing.assert_close(flipped.double(), by_hand, atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.linalg.vector_norm(flipped, dim=1).numpy(), 1.0, atol=1e-5)
    # Faces are nearly symmetric: the flip embedding stays close to the plain one
    # (measured min 0.996 over these chips, synthetic ones included).
    assert (flipped.double() * plain).sum(dim=1).min() > 0.95


def test_flip_on_real_faces_stays_close(model, real_chips):
    plain = embed_chips(model, real_chips)
    flipped = embed_chips(model, real_chips, flip=True)
    assert (plain * flipped).sum(dim=1).min() > 0.95


def test_accepts_tensors_and_empty_batches(model, base_chips):
    from_numpy = embed_chips(model, base_chips[:2])
    from_tensor = embed_chips(model, torch.from_numpy(base_chips[:2]))
    torch.testing.assert_close(from_numpy, from_tensor)
    assert embed_chips(model, np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


@pytest.mark.parametrize(
    ("chips", "error"),
    [
        (np.zeros((1, 150, 150, 3), np.float32), TypeError),  # float pixels
        (np.zeros((1, 150, 150, 3), np.int64), TypeError),
        (np.zeros((150, 150, 3), np.uint8), ValueError),  # no batch axis
        (np.zeros((1, 3, 150, 150), np.uint8), ValueError),  # NCHW
        (np.zeros((1, 150, 150, 4), np.uint8), ValueError),  # RGBA
        (np.zeros((2, 100, 100, 3), np.uint8), ValueError),  # not an aligned chip
        (np.zeros((2, 200, 200, 3), np.uint8), ValueError),  # would run, meaninglessly
    ],
)
def test_bad_input_raises(model, chips: np.ndarray, error: type[Exception]):
    with pytest.raises(error, match="chips must be"):
        embed_chips(model, chips)
