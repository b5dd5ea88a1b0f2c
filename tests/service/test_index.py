"""The FAISS wrapper: exact, HNSW and PQ re-rank search, removal (tombstones for HNSW),
snapshots."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from service.gallery.index import FaceIndex, SnapshotInvalid, remove_snapshot, sidecar_path
from service.gallery.search_policy import FLAT_MAX_FACES, choose_index_kind

DIM = 32
KINDS = ["flat", "hnsw", "pq"]
# pq trains its codebooks once it holds this many faces: small, so the tests cover the trained
# form (codes + exact re-rank), not only the flat stage before it.
PQ_SMALL = {"pq_m": 8, "pq_train_min": 64}


def new(kind: str) -> FaceIndex:
    return FaceIndex(DIM, kind, **(PQ_SMALL if kind == "pq" else {}))


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filled(kind: str, n: int = 300, seed: int = 0) -> tuple[FaceIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    ids = np.arange(1, n + 1, dtype=np.int64) * 7  # not positions
    index = new(kind)
    index.add(ids, vectors)
    assert index.trained == (kind == "pq" and n >= PQ_SMALL["pq_train_min"])
    return index, ids, vectors


def all_ids(index: FaceIndex, probe: np.ndarray) -> list[int]:
    """Every id the index returns when asked for more than it holds."""
    [(_, ids)] = index.search(probe[None], index.ntotal + 10)
    return ids.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stored_vector_is_its_own_best_match_with_its_dot_product(kind: str) -> None:
    index, ids, vectors = filled(kind)
    rng = np.random.default_rng(1)
    probes = vectors[:20] + 0.05 * unit(rng, 20)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    results = index.search(probes, 5)
    assert len(results) == 20
    for q, (sims, found) in enumerate(results):
        assert found[0] == ids[q]
        assert sims[0] == pytest.approx(float(probes[q] @ vectors[q]), abs=1e-5)
        assert list(sims) == sorted(sims, reverse=True)


def test_flat_search_is_exact() -> None:
    index, ids, vectors = filled("flat")
    probe = unit(np.random.default_rng(2), 1)[0]
    [(sims, found)] = index.search(probe[None], 10)
    expected = np.argsort(-(vectors @ probe))[:10]
    assert found.tolist() == ids[expected].tolist()
    np.testing.assert_allclose(sims, (vectors @ probe)[expected], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_small_and_empty_indexes_return_what_they_have(kind: str) -> None:
    empty = new(kind)
    probe = unit(np.random.default_rng(3), 2)
    assert [len(ids) for _, ids in empty.search(probe, 5)] == [0, 0]
    index, ids, _ = filled(kind, n=3)
    for _, found in index.search(probe, 50):
        assert sorted(found.tolist()) == sorted(ids.tolist())


@pytest.mark.parametrize("kind", KINDS)
def test_removed_ids_are_never_returned(kind: str) -> None:
    index, ids, vectors = filled(kind)
    gone = ids[:20]
    assert index.remove(gone) == 20
    assert index.remove(gone) == 0  # already gone
    assert index.remove([123456789]) == 0  # never there
    assert index.ntotal == len(ids) - 20
    # Probing with the removed vectors themselves: the strongest possible pull towards them.
    for _, found in index.search(vectors[:20], 10):
        assert len(found) == 10
        assert not set(found.tolist()) & set(gone.tolist())
    assert sorted(all_ids(index, vectors[0])) == sorted(ids[20:].tolist())


def test_hnsw_removal_erases_the_vector_at_once() -> None:
    """HNSW keeps the graph node, but its vector must not survive (erasure)."""
    index, ids, vectors = filled("hnsw", n=50)
    index.remove(ids[:1])
    raw = index._index.index.reconstruct(0)  # storage position 0 held ids[0]
    assert not np.any(raw)
    assert np.array_equal(index._index.index.reconstruct(1), vectors[1])


def test_hnsw_compaction_keeps_exactly_the_live_vectors() -> None:
    index, ids, vectors = filled("hnsw", n=200)
    index.remove(ids[:10])
    assert not index.needs_compaction  # 5%
    index.remove(ids[10:30])
    assert index.needs_compaction  # 15%
    fresh = index.compacted()
    assert fresh.tombstones == 0 and fresh.ntotal == 170
    assert sorted(all_ids(fresh, vectors[0])) == sorted(ids[30:].tolist())
    for q, (_, found) in enumerate(fresh.search(vectors[30:60], 1)):
        assert found[0] == ids[30 + q]


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_searches_agree_with_serial_ones(kind: str) -> None:
    index, _, _ = filled(kind, n=500)
    probes = unit(np.random.default_rng(4), 64)
    expected = [ids.tolist() for _, ids in index.search(probes, 10)]
    errors: list[BaseException] = []
    results: dict[int, list[list[int]]] = {}

    def worker(t: int) -> None:
        try:
            out = []
            for i in range(len(probes)):
                [(_, ids)] = index.search(probes[i : i + 1], 10)
                out.append(ids.tolist())
            results[t] = out
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert all(results[t] == expected for t in range(6))


def test_bad_shapes_are_refused() -> None:
    index = FaceIndex(DIM, "flat")
    with pytest.raises(ValueError, match="shape"):
        index.add(np.arange(2), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="ids"):
        index.add(np.arange(3), np.zeros((2, DIM), np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros(DIM, np.float32), 1)
    with pytest.raises(ValueError, match="k"):
        index.search(np.zeros((1, DIM), np.float32), 0)
    with pytest.raises(ValueError, match="kind"):
        FaceIndex(DIM, "ivf")


def cone(n_ids: int, per_id: int, seed: int, dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Face-like unit vectors: a large shared component (strangers at cosine ~0.8), identity
    offsets and photo noise spread over a power-law spectrum; the row's identity beside."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = np.arange(1, dim + 1) ** -0.4
    scale /= np.linalg.norm(scale)
    mu = unit(rng, 1, dim)[0] * np.sqrt(0.8)
    centres = mu + (rng.standard_normal((n_ids, dim)) * scale * np.sqrt(0.15)) @ basis.T
    who = np.repeat(np.arange(n_ids), per_id)
    x = centres[who] + (rng.standard_normal((len(who), dim)) * scale * np.sqrt(0.05)) @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), who


def test_pq_finds_the_exact_best_face_in_a_narrow_cone_and_returns_exact_cosines() -> None:
    """Few candidates (64 of 8,000) re-ranked: the first answer is still the exact one, and
    every similarity returned is the true cosine (the codes only choose candidates)."""
    gallery, _ = cone(4000, 2, seed=0)
    probes, _ = cone(4000, 1, seed=0)  # same identities (same seed), new photos
    probes = probes[:300] + 0.02 * unit(np.random.default_rng(9), 300, 128)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    assert float(np.mean(gallery[:500] @ gallery[500:1000].T)) > 0.75  # a narrow cone
    ids = np.arange(len(gallery), dtype=np.int64) * 3 + 5
    index = FaceIndex(128, "pq", pq_refine=64, pq_train_min=2000)
    for s in range(0, len(gallery), 1000):  # crosses the training point on the way
        index.add(ids[s : s + 1000], gallery[s : s + 1000])
    assert index.trained and index.ntotal == len(gallery)
    exact = probes @ gallery.T
    hits = 0
    for q, (sims, found) in enumerate(index.search(probes, 10)):
        assert len(found) == 10
        rows = (found - 5) // 3
        np.testing.assert_allclose(sims, exact[q, rows], rtol=0, atol=1e-6)
        assert list(sims) == sorted(sims, reverse=True)
        hits += int(rows[0] == int(np.argmax(exact[q])))
    assert hits / len(probes) >= 0.98


def test_pq_removal_deletes_codes_and_vectors_and_adds_continue() -> None:
    index, ids, vectors = filled("pq", n=400)
    assert index.remove(ids[100:150]) == 50
    assert index.ntotal == 350
    assert index.ids().tolist() == sorted(np.r_[ids[:100], ids[150:]].tolist())
    refine = faiss.downcast_index(index._index.index)
    assert refine.base_index.ntotal == refine.refine_index.ntotal == 350
    # Every remaining face is still found as its own best match, at its own position.
    for q, (_, found) in enumerate(index.search(vectors[150:400], 1)):
        assert found[0] == ids[150 + q]
    extra = unit(np.random.default_rng(8), 5)
    index.add(np.array([9001, 9002, 9003, 9004, 9005]), extra)
    for q, (sims, found) in enumerate(index.search(extra, 1)):
        assert found[0] == 9001 + q and sims[0] == pytest.approx(1.0, abs=1e-5)
    fresh = index.compacted()  # retrained on the live vectors
    assert fresh.ids().tolist() == index.ids().tolist()


# ---------------------------------------------------------------- snapshots


def expect(index: FaceIndex, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {"dim": DIM, "kind": index.kind, "model": "m1",
                               "count": index.ntotal, "last_change_id": 42}
    base.update(changes)
    return base


@pytest.mark.parametrize("kind", KINDS)
def test_a_snapshot_round_trips_with_its_removals(kind: str, tmp_path: Path) -> None:
    index, ids, vectors = filled(kind)
    index.remove(ids[:5])
    path = tmp_path / "index.faiss"
    index.write_snapshot(path, model="m1", last_change_id=42)
    loaded = FaceIndex.load_snapshot(path, **expect(index))  # type: ignore[arg-type]
    assert loaded.ntotal == index.ntotal
    assert loaded.ids().tolist() == index.ids().tolist() == sorted(ids[5:].tolist())
    a = [ids.tolist() for _, ids in index.search(vectors[:30], 5)]
    b = [ids.tolist() for _, ids in loaded.search(vectors[:30], 5)]
    assert a == b
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "change",
    [
        {"last_change_id": 43},
        {"count": 299},
        {"model": "m2"},
        {"kind": "hnsw"},
        {"kind": "pq"},
        {"dim": DIM * 2},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_snapshot_of_another_state_is_refused(change: dict[str, object], tmp_path: Path) -> None:
    index, _, _ = filled("flat")
    path = tmp_path / "index.faiss"
    index.write_snapshot(path, model="m1", last_change_id=42)
    with pytest.raises(SnapshotInvalid, match=next(iter(change))):
        FaceIndex.load_snapshot(path, **expect(index, **change))  # type: ignore[arg-type]


def test_missing_corrupt_and_torn_snapshots_are_refused(tmp_path: Path) -> None:
    index, _, _ = filled("flat")
    path = tmp_path / "index.faiss"
    want = expect(index)
    with pytest.raises(SnapshotInvalid, match="no snapshot"):
        FaceIndex.load_snapshot(path, **want)  # type: ignore[arg-type]

    index.write_snapshot(path, model="m1", last_change_id=42)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotInvalid, match="checksum"):
        FaceIndex.load_snapshot(path, **want)  # type: ignore[arg-type]

    # Garbage whose checksum matches: FAISS itself must refuse it, without crashing us.
    path.write_bytes(b"not a faiss index at all" * 10)
    side = json.loads(sidecar_path(path).read_text())
    side["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(SnapshotInvalid, match="FAISS"):
        FaceIndex.load_snapshot(path, **want)  # type: ignore[arg-type]

    sidecar_path(path).write_text("{truncated")
    with pytest.raises(SnapshotInvalid, match="sidecar"):
        FaceIndex.load_snapshot(path, **want)  # type: ignore[arg-type]

    # Torn: a crash after the index was renamed into place but before its sidecar was.
    index.write_snapshot(path, model="m1", last_change_id=42)
    old_side = sidecar_path(path).read_text()
    index.add(np.array([10**6]), unit(np.random.default_rng(5), 1))
    index.write_snapshot(path, model="m1", last_change_id=42)
    sidecar_path(path).write_text(old_side)
    with pytest.raises(SnapshotInvalid, match="checksum"):
        FaceIndex.load_snapshot(path, **expect(index, count=300))  # type: ignore[arg-type]

    remove_snapshot(path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- search policy


def test_auto_kind_is_exact_for_small_galleries_and_pq_for_large_ones() -> None:
    assert choose_index_kind(0) == "flat"
    assert choose_index_kind(1000) == "flat"
    assert choose_index_kind(FLAT_MAX_FACES - 1) == "flat"
    assert choose_index_kind(FLAT_MAX_FACES) == "pq"
    assert choose_index_kind(10 * FLAT_MAX_FACES) == "pq"
    with pytest.raises(ValueError):
        choose_index_kind(-1)
