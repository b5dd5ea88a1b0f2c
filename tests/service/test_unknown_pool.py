"""The unknown-face pool (issue 17) in both stores: round trip, clusters, expiry, erasure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.gallery.store import GalleryStore, open_store
from service.gallery.store.sqlite import FILENAME
from service.gallery.store.unknown import UnknownFace
from tests.service import test_store

# Both stores, each test on SQLite and on a fresh PostgreSQL schema (skipped without a server).
backend, store, vec = test_store.backend, test_store.store, test_store.vec

pytestmark = pytest.mark.timeout(120)


def unknown(n: int, *, gallery: str = "", created: str = "2026-12-01T00:00:00.000Z",
            photo: str = "p", chip: bytes | None = b"\xff\xd8chip") -> UnknownFace:
    return UnknownFace(
        face_id=f"u{n}", gallery=gallery, photo=f"{photo}{n // 2}", source=f"album/{n}.jpg",
        bbox=(1, 2, 30, 40), landmarks=[[1.0, 2.0]] * 5, detection_confidence=0.9,
        model="dlib-resnet-v1", created_at=created, embedding=vec(n), chip_jpeg=chip,
    )


def test_pool_faces_round_trip_per_gallery(store: GalleryStore) -> None:
    store.add_unknown([unknown(0), unknown(1), unknown(2, gallery="other")])  # type: ignore[attr-defined]
    mine = store.unknown_faces("")  # type: ignore[attr-defined]
    assert [f.face_id for f in mine] == ["u0", "u1"]
    assert mine[0].source == "album/0.jpg" and mine[0].photo == "p0"
    assert mine[0].bbox == (1, 2, 30, 40) and mine[0].cluster_id is None
    assert np.allclose(mine[1].embedding, vec(1))
    assert store.unknown_chip("", "u0") == b"\xff\xd8chip"  # type: ignore[attr-defined]
    assert store.unknown_chip("", "u2") is None  # another gallery's face  # type: ignore[attr-defined]
    # The pool is not the gallery: nothing was enrolled.
    assert store.state().face_count == 0


def test_clusters_are_recorded_and_listed(store: GalleryStore) -> None:
    store.add_unknown([unknown(i) for i in range(4)])  # type: ignore[attr-defined]
    store.set_unknown_clusters("", {"u0": "c1", "u1": "c1", "u2": None})  # type: ignore[attr-defined]
    faces = store.unknown_faces("", cluster_id="c1", with_embeddings=False)  # type: ignore[attr-defined]
    assert [f.face_id for f in faces] == ["u0", "u1"] and faces[0].embedding is None


def test_expiry_and_deletion_remove_pool_faces(store: GalleryStore) -> None:
    store.add_unknown([  # type: ignore[attr-defined]
        unknown(0, created="2026-01-01T00:00:00.000Z"), unknown(1),
        unknown(2, created="2026-01-02T00:00:00.000Z", gallery="other"),
    ])
    assert store.expire_unknown("2026-06-01T00:00:00.000Z") == 2  # type: ignore[attr-defined]
    assert [f.face_id for f in store.unknown_faces("")] == ["u1"]  # type: ignore[attr-defined]
    assert store.unknown_faces("other") == []  # type: ignore[attr-defined]
    assert store.delete_unknown("other", ["u1"]) == 0  # not that gallery's  # type: ignore[attr-defined]
    assert store.delete_unknown("", ["u1", "nope"]) == 1  # type: ignore[attr-defined]
    assert store.unknown_faces("") == []  # type: ignore[attr-defined]


def test_erased_pool_faces_leave_no_bytes_in_the_sqlite_files(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    try:
        gone, kept = unknown(0, chip=b"CHIP-GONE-4711"), unknown(1, chip=b"CHIP-KEPT-0815")
        s.add_unknown([gone, kept])  # type: ignore[attr-defined]
        s.delete_unknown("", ["u0"])  # type: ignore[attr-defined]
        disk = b"".join(p.read_bytes() for p in tmp_path.glob(FILENAME + "*"))
        assert b"CHIP-GONE-4711" not in disk and vec(0).tobytes() not in disk
        assert b"CHIP-KEPT-0815" in disk
        s.expire_unknown("2099-01-01T00:00:00.000Z")  # type: ignore[attr-defined]
        disk = b"".join(p.read_bytes() for p in tmp_path.glob(FILENAME + "*"))
        assert b"CHIP-KEPT-0815" not in disk and vec(1).tobytes() not in disk
    finally:
        s.close()
