"""Clustering unknown faces: real LFW people recovered, cannot-link, incremental = full."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import numpy as np
import pytest

from models.clustering import (
    ALGORITHMS,
    CLUSTER_THRESHOLD,
    VERIFY_THRESHOLD,
    Clustering,
    cluster,
    enforce_cannot_link,
    relabel,
)
from models.evaluation.cluster import agreement, scores

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon", "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "Serena_Williams"]
PHOTOS_EACH = 6
DISTRACTORS = 20


@pytest.fixture(scope="module")
def lfw_faces(shared_data: Path) -> tuple[np.ndarray, list[str]]:
    """80 real LFW faces: 6 photos of each of 10 people, and 20 people seen once."""
    from models.evaluation.lfw import embed_images
    from models.pipeline import FacePipeline

    root = shared_data / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW not found under {root}")
    paths, truth = [], []
    for name in PEOPLE:
        photos = sorted((root / name).glob("*.jpg"))[:PHOTOS_EACH]
        paths += photos
        truth += [name] * len(photos)
    singles = [d for d in sorted(root.iterdir()) if len(list(d.glob("*.jpg"))) == 1]
    for d in singles[:DISTRACTORS]:
        paths.append(next(d.glob("*.jpg")))
        truth.append(d.name)
    emb = embed_images(FacePipeline(device="cpu"), paths, progress=False)
    return emb.vectors, truth


def _synthetic(people: int, each: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Face-like unit vectors: a shared direction (dlib's embeddings are not centred), a
    per-person offset and per-photo noise; same person ~0.95 cosine, others ~0.83."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(128)
    mu *= np.sqrt(0.83) / np.linalg.norm(mu)
    centres = mu + rng.standard_normal((people, 128)) * np.sqrt(0.12 / 128)
    ids = np.repeat(np.arange(people), each)
    x = centres[ids] + rng.standard_normal((len(ids), 128)) * np.sqrt(0.05 / 128)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), ids


def test_verify_threshold_is_the_services() -> None:
    from service.config import DEFAULT_THRESHOLD

    assert VERIFY_THRESHOLD == DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("algorithm", "min_bcubed_f", "min_pairwise_p"),
    [("average", 0.93, 0.97), ("chinese-whispers", 0.95, 0.95), ("complete", 0.9, 0.97)],
)
def test_real_lfw_people_are_recovered(
    lfw_faces: tuple[np.ndarray, list[str]], algorithm: str, min_bcubed_f: float,
    min_pairwise_p: float,
) -> None:
    vectors, truth = lfw_faces
    labels = cluster(vectors, CLUSTER_THRESHOLD, algorithm=algorithm)
    s = scores(labels, truth)
    assert s["bcubed_f"] >= min_bcubed_f, s
    assert s["pairwise_precision"] >= min_pairwise_p, s
    # Most of the 20 people seen once stay alone, and each of the 10 people is found.
    alone = labels[-DISTRACTORS:] == -1
    assert alone.mean() >= 0.9, s
    for i in range(len(PEOPLE)):
        own = labels[i * PHOTOS_EACH:(i + 1) * PHOTOS_EACH]
        assert np.bincount(own[own >= 0]).max(initial=0) >= PHOTOS_EACH // 2, (PEOPLE[i], own)


def test_verify_threshold_merges_more_people(lfw_faces: tuple[np.ndarray, list[str]]) -> None:
    """Why clustering has its own, stricter threshold: at verify's, chinese whispers already
    chains two of these 30 people together (on 2,500 faces it merges hundreds)."""
    vectors, truth = lfw_faces
    loose = scores(cluster(vectors, VERIFY_THRESHOLD, algorithm="chinese-whispers"), truth)
    strict = scores(cluster(vectors, CLUSTER_THRESHOLD, algorithm="chinese-whispers"), truth)
    assert strict["pairwise_precision"] > loose["pairwise_precision"]


def test_cannot_link_on_real_faces(lfw_faces: tuple[np.ndarray, list[str]]) -> None:
    """Two photos of one person said to be one photo end up in different clusters."""
    vectors, truth = lfw_faces
    photos: list[object] = [f"p{i}" for i in range(len(truth))]
    photos[1] = photos[0]  # George_W_Bush 1 and 2 "in one photo"
    for algorithm in ALGORITHMS:
        free = cluster(vectors, CLUSTER_THRESHOLD, algorithm=algorithm)
        assert free[0] == free[1] >= 0, algorithm  # together without the constraint
        bound = cluster(vectors, CLUSTER_THRESHOLD, algorithm=algorithm, photos=photos)
        assert bound[0] != bound[1] or bound[0] == -1, algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cannot_link_always_holds(algorithm: str) -> None:
    vectors, _ = _synthetic(40, 5, seed=1)
    rng = np.random.default_rng(2)
    photos = rng.integers(0, 60, len(vectors)).tolist()  # ~3 faces per photo, mixed people
    labels = cluster(vectors, CLUSTER_THRESHOLD, algorithm=algorithm, photos=photos)
    model = Clustering(threshold=CLUSTER_THRESHOLD, algorithm=algorithm)
    model.fit(vectors[:150], photos[:150])
    added = model.add(vectors[150:], photos[150:])
    for result in (labels, added):
        seen: set[tuple[int, object]] = set()
        for label, photo in zip(result, photos, strict=True):
            if label >= 0:
                assert (label, photo) not in seen
                seen.add((label, photo))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_incremental_agrees_with_full_recluster_synthetic(algorithm: str) -> None:
    """Tolerance: BCubed agreement >= 0.97 between 80% fitted + 20% added and a full run."""
    vectors, ids = _synthetic(100, 6, seed=3)
    order = np.random.default_rng(4).permutation(len(vectors))
    vectors, ids = vectors[order], ids[order]
    model = Clustering(threshold=CLUSTER_THRESHOLD, algorithm=algorithm)
    model.fit(vectors[:480])
    for part in np.array_split(np.arange(480, 600), 4):
        model.add(vectors[part])
    full = cluster(vectors, CLUSTER_THRESHOLD, algorithm=algorithm)
    assert agreement(model.labels, full) >= 0.97
    assert scores(model.labels, ids)["bcubed_f"] >= scores(full, ids)["bcubed_f"] - 0.03


def test_incremental_agrees_with_full_recluster_lfw(
    lfw_faces: tuple[np.ndarray, list[str]],
) -> None:
    """Tolerance on real faces: agreement >= 0.9, BCubed F within 0.05 of the full run."""
    vectors, truth = lfw_faces
    order = np.random.default_rng(0).permutation(len(vectors))
    v, t = vectors[order], [truth[i] for i in order]
    model = Clustering(threshold=CLUSTER_THRESHOLD, algorithm="average")
    model.fit(v[:64])
    model.add(v[64:72])
    model.add(v[72:])
    full = cluster(v, CLUSTER_THRESHOLD, algorithm="average")
    assert agreement(model.labels, full) >= 0.9
    assert scores(model.labels, t)["bcubed_f"] >= scores(full, t)["bcubed_f"] - 0.05


def test_add_to_empty_is_fit_and_recluster_is_full() -> None:
    vectors, _ = _synthetic(10, 4)
    model = Clustering(threshold=CLUSTER_THRESHOLD, algorithm="average")
    first = model.add(vectors).copy()
    assert np.array_equal(first, cluster(vectors, CLUSTER_THRESHOLD, algorithm="average"))
    assert np.array_equal(model.recluster(), first)


def test_new_face_joins_its_person_or_stays_alone() -> None:
    vectors, ids = _synthetic(20, 5, seed=5)
    model = Clustering(threshold=CLUSTER_THRESHOLD, algorithm="average")
    model.fit(vectors[ids != 3])
    person = model.labels[np.flatnonzero(ids[ids != 3] == 0)][0]
    newcomer, _ = _synthetic(20, 5, seed=5)
    labels = model.add(newcomer[ids == 0][:1])  # another photo of person 0
    assert labels[-1] >= 0
    members = np.flatnonzero(labels == labels[-1])
    assert len(members) == 6
    stranger = -vectors[:1]  # unlike anyone
    assert model.add(stranger)[-1] == -1
    assert person >= 0


def test_scores_on_hand_made_labels() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    perfect = scores(np.array([0, 0, 0, 1, 1, -1]), truth)
    assert perfect["bcubed_f"] == perfect["pairwise_f"] == 1.0
    assert perfect["unclustered"] == pytest.approx(1 / 6, abs=1e-4)
    merged = scores(np.array([0, 0, 0, 0, 0, -1]), truth)
    assert merged["pairwise_recall"] == 1.0
    assert merged["pairwise_precision"] == pytest.approx(4 / 10)  # 3 + 1 of 10 pairs
    alone = scores(np.full(6, -1), truth)
    assert alone["pairwise_recall"] == 0.0 and alone["bcubed_precision"] == 1.0


def test_relabel_and_enforce() -> None:
    assert relabel(np.array([5, 5, 7, 9, 9, 9])).tolist() == [1, 1, -1, 0, 0, 0]
    v = np.eye(3, dtype=np.float32)
    out = enforce_cannot_link(np.array([0, 0, 0]), v, ["x", "x", "y"])
    assert out[0] != out[1]


def test_cluster_command_on_a_folder(shared_data: Path, tmp_path: Path) -> None:
    from service.cli import main

    people = shared_data / "people"
    folder = tmp_path / "album"
    folder.mkdir()
    for person in ("obama", "biden", "kit_harington", "rose_leslie"):
        for photo in sorted((people / "train" / person).iterdir()):
            (folder / f"{person}-{photo.name}").symlink_to(photo)
    (folder / "kit_with_rose.jpg").symlink_to(people / "test" / "kit_with_rose.jpg")
    out = tmp_path / "out"
    assert main(["cluster", str(folder), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    groups = sorted(sorted(p.name for p in d.iterdir()) for d in out.glob("person_*"))
    assert groups == [
        ["biden-biden.jpg", "biden-biden2.jpg"],
        ["kit_harington-john1.jpeg", "kit_harington-john2.jpeg", "kit_with_rose.jpg"],
        ["kit_with_rose.jpg", "rose_leslie-img1.jpg", "rose_leslie-img2.jpg"],
        ["obama-obama.jpg", "obama-obama2.jpg"],
    ]
    link = next(out.glob("person_*/biden-biden.jpg"))
    assert link.is_symlink() and link.resolve() == (people / "train/biden/biden.jpg").resolve()
    with (out / "clusters.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    kit_rose = [r for r in rows if r["photo"] == "kit_with_rose.jpg"]
    assert len(kit_rose) == 2 and kit_rose[0]["cluster"] != kit_rose[1]["cluster"]
    assert _mode(out) == 0o700 and _mode(out / "clusters.csv") == 0o600
    assert {_mode(d) for d in out.iterdir() if d.is_dir()} == {0o700}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cluster_output_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV and the folders say who is in which photo: created 0600 and 0700, an old
    clusters.csv tightened; an existing --out folder (others may use it) keeps its mode. The
    pipeline is replaced by fixed embeddings: only the writing is under test."""
    import models.cluster_command as cc
    import models.pipeline
    from service.cli import main

    album = tmp_path / "album"
    album.mkdir()
    for name in ("a1.jpg", "a2.jpg", "loner.jpg", "empty.jpg"):
        (album / name).write_bytes(b"not decoded")
    rng = np.random.default_rng(0)
    alice, other = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 128)))

    def fake_embed(pipeline: object, root: Path, photos: list[Path], **_: object
                   ) -> tuple[list[cc.FaceRow], np.ndarray, list[str], list[str]]:
        rows = [cc.FaceRow(n, 0, (0, 0, 9, 9)) for n in ("a1.jpg", "a2.jpg", "loner.jpg")]
        return rows, np.stack([alice, alice, other]).astype(np.float32), ["empty.jpg"], []

    monkeypatch.setattr(cc, "embed_folder", fake_embed)
    monkeypatch.setattr(models.pipeline, "FacePipeline", lambda **_: object())

    out = tmp_path / "new" / "out"  # absent: created owner-only
    assert main(["cluster", str(album), "--out", str(out), "--no-progress"]) == 0
    assert _mode(out) == 0o700 and _mode(out / "clusters.csv") == 0o600
    folders = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert folders == ["person_001", "unclustered"]
    assert all(_mode(out / d) == 0o700 for d in folders)
    assert sorted(p.name for p in (out / "person_001").iterdir()) == ["a1.jpg", "a2.jpg"]

    shared = tmp_path / "shared"  # an existing folder open to others, with an old CSV
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "clusters.csv").write_text("old rows\n")
    (shared / "clusters.csv").chmod(0o644)
    assert main(["cluster", str(album), "--out", str(shared), "--no-progress"]) == 0
    assert _mode(shared) == 0o755  # never chmodded
    assert _mode(shared / "clusters.csv") == 0o600
    assert "old rows" not in (shared / "clusters.csv").read_text()
    assert {_mode(d) for d in shared.iterdir() if d.is_dir()} == {0o700}


def test_eval_cluster_command(shared_data: Path, tmp_path: Path) -> None:
    """`faceserve eval cluster` on a small seeded subset: report written, scores sensible."""
    import json

    from service.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "cluster", "--root", str(shared_data / "lfw"), "--out", str(out),
                 "--people-images", "40", "--distractors", "10", "--device", "cpu",
                 "--thresholds", "0.915,0.93", "--no-progress"]) == 0
    report = json.loads((out / "cluster.json").read_text())
    assert report["dataset"]["faces"] >= 50  # whole people: the last may pass 40
    rows = {(r["algorithm"], r["threshold"]): r for r in report["results"]}
    assert set(rows) == {(a, t) for a in ALGORITHMS for t in (0.915, 0.93)}
    assert rows[("average", 0.93)]["bcubed_f"] >= 0.85
    assert set(report["incremental"]) == set(ALGORITHMS)
    assert (out / "cluster.md").read_text().startswith("LFW clustering:")
    assert (out / "embeddings-dlib-resnet-v1.npz").is_file()  # the cache `eval lfw` shares
