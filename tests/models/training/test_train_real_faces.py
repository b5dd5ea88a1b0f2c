"""Training on real faces (LFW people with several photos), a few hundred CPU steps.

The chips are aligned from LFW's deep-funneled photos with the fixed 5-point template the
LFW evaluation uses for its fallback (the faces sit where the template says, give or take a
few pixels), which costs an affine warp per photo instead of a detector pass: the tests stay
within the CI budget. One small test does run the real detector and aligner on a few photos
so the raw-photo path of ``faceserve train`` is covered on real faces too.

Identities are split by person: validation figures are on people the network never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.training.data import FaceChips, PreparedData, prepare_chips
from models.training.trainer import TrainConfig, Trainer, embed_chips_eval

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MIN_IMAGES = 6  # LFW people with at least this many photos: 311 of them
PER_IDENTITY = 6  # the first 6 photos of each (1,866 chips)


def lfw_dir(shared_data: Path) -> Path:
    root = shared_data / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW images not found at {root}")
    return root


@pytest.fixture(scope="session")
def lfw_chips(shared_data: Path) -> FaceChips:
    """Template-aligned 150x150 chips of LFW people with >= MIN_IMAGES photos (sorted names)."""
    from models.align import extract_chips
    from models.evaluation.lfw import LFW_TEMPLATE_250
    from models.imageio import decode_image

    root = lfw_dir(shared_data)
    chips, labels, names, paths = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) < MIN_IMAGES:
            continue
        names.append(folder.name)
        for photo in photos[:PER_IDENTITY]:
            image = decode_image(photo.read_bytes())
            scale = np.array([image.shape[1], image.shape[0]]) / 250.0
            marks = (LFW_TEMPLATE_250 * scale)[None]
            chips.append(extract_chips(image, marks, device="cpu")[0].numpy())
            labels.append(len(names) - 1)
            paths.append(str(photo))
    assert len(names) > 200, "fewer LFW identities than expected; is the data complete?"
    return FaceChips(np.stack(chips), np.asarray(labels, dtype=np.int64), names, paths)


def run(chips: FaceChips, out: Path, **overrides) -> tuple[Trainer, list[dict]]:
    config = TrainConfig(data=str(out / "lfw-chips"), out=str(out), progress=False)
    for key, value in overrides.items():
        setattr(config, key, value)
    trainer = Trainer(config, prepared=PreparedData(chips=chips, given_as_chips=len(chips)))
    result = trainer.run()
    assert not result.interrupted
    return trainer, result.history


def test_small_net_from_random_init_learns_faces_of_unseen_people(
    lfw_chips: FaceChips, tmp_path: Path
) -> None:
    trainer, history = run(
        lfw_chips,
        tmp_path / "small",
        arch="small",
        init="random",
        loss="triplet",
        miner="batch-all",
        lr=3e-3,
        epochs=3,
        steps_per_epoch=100,
        warmup=20,
        p=8,
        k=4,
        augment=False,  # 300 steps are too few to profit from it; it costs a third more time
    )
    assert not set(trainer.train_data.names) & set(trainer.val_data.names)
    assert len(trainer.val_data.names) >= 50 and history[-1]["genuine_pairs"] >= 500
    before, after = history[0], history[-1]
    # Balanced pair accuracy: chance is 0.5. An untrained net already sees some lighting and
    # pose similarity; 300 steps must add a clear margin on people it never trained on.
    assert before["val_accuracy"] < 0.62
    assert after["val_accuracy"] >= 0.66
    assert after["val_accuracy"] >= before["val_accuracy"] + 0.08
    # The loss was optimised, not just lucky: fewer triplets still violate the margin.
    assert history[-1]["train_active_fraction"] < history[1]["train_active_fraction"]


def test_dlib_init_with_freeze_does_not_get_worse(lfw_chips: FaceChips, tmp_path: Path) -> None:
    trainer, history = run(
        lfw_chips,
        tmp_path / "dlib",
        arch="dlib-resnet",
        init="dlib",
        freeze=1,
        loss="triplet",
        miner="semi-hard",
        epochs=2,
        steps_per_epoch=20,
        warmup=5,
        p=8,
        k=4,
    )
    before, after = history[0], history[-1]
    # The converted dlib network is already good on LFW people.
    assert before["val_accuracy"] > 0.95
    assert after["val_accuracy"] >= before["val_accuracy"] - 0.005
    assert after["val_tar"] >= before["val_tar"] - 0.02
    # It did train: the last block and the projection moved, the frozen stem did not.
    from models.embedder import load_embedder

    base = load_embedder(device="cpu", fold=False).state_dict()
    tuned = trainer.model.state_dict()
    assert torch.equal(tuned["stem.conv.weight"], base["stem.conv.weight"])
    assert torch.equal(tuned["stages.3.0.conv1.weight"], base["stages.3.0.conv1.weight"])
    assert not torch.equal(tuned["stages.4.0.conv2.weight"], base["stages.4.0.conv2.weight"])
    assert not torch.equal(tuned["fc.weight"], base["fc.weight"])


def test_raw_photos_are_aligned_by_the_pipeline_and_cached(
    shared_data: Path, tmp_path: Path
) -> None:
    """``faceserve train`` on raw photos: detector + landmarks + dlib chip, cached once."""
    root = lfw_dir(shared_data)
    data = tmp_path / "data"
    for name in ("Colin_Powell", "Tony_Blair"):
        (data / name).mkdir(parents=True)
        for photo in sorted((root / name).glob("*.jpg"))[:2]:
            (data / name / photo.name).symlink_to(photo)
    cache = tmp_path / "chip-cache"
    first = prepare_chips(data, cache, progress=False)
    assert first.aligned_now == 4 and not first.no_face and first.chips.names == [
        "Colin_Powell",
        "Tony_Blair",
    ]
    second = prepare_chips(data, cache, pipeline_factory=_must_not_load, progress=False)
    assert second.from_cache == 4 and np.array_equal(second.chips.chips, first.chips.chips)

    # The cached chips are proper dlib chips: the dlib embedder verifies the pairs.
    from models.embedder import load_embedder

    emb = embed_chips_eval(load_embedder(device="cpu"), first.chips.chips, torch.device("cpu"))
    sim = (emb @ emb.T).numpy()
    assert sim[0, 1] > 0.8 and sim[2, 3] > 0.8  # same person (dlib's threshold ~ 0.82 cos)
    assert sim[:2, 2:].max() < sim[0, 1] and sim[:2, 2:].max() < sim[2, 3]


def _must_not_load():
    raise AssertionError("every photo is cached; the pipeline must not be loaded")
