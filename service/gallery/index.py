"""The FAISS index over the gallery's embeddings: a cache of the store, rebuilt from it at will.

Ids are the store's int64 row ids (never reused: the table is AUTOINCREMENT), so a removed id
can never come back as another face. Similarity is the inner product of L2-normalised vectors,
i.e. the cosine.

Three kinds:

* ``flat``: exact search, ``IndexIDMap2(IndexFlatIP)``; removal deletes the vector.
* ``pq``: exact answers from a cheap candidate scan, ``IndexIDMap2(IndexRefineFlat(
  IndexPQFastScan))``. Every query scans all faces' 32-byte product-quantised codes (64 4-bit
  codes) with SIMD fast-scan, keeps the ``PQ_REFINE`` best candidates and re-ranks them with
  the full float vectors, so the similarities returned are the exact cosines and the answer
  is exact unless the true best face is not among the candidates (recall@1 1.000 at 10^6 on
  face-like data and on LFW embeddings mixed in, see ``search_policy``). No graph: the order of
  the vectors does not matter, so centring the cone of face embeddings is not needed (the
  codebooks are k-means per sub-space, which absorb the common offset). The codebooks need
  training data: until ``PQ_TRAIN_MIN`` faces are held the index is a plain flat one (exact,
  and cheap at that size); the add that reaches it trains on everything held then, and the
  codebooks stay until a rebuild. Removal deletes the code and the vector at once.
* ``hnsw``: approximate, ``IndexIDMap2(IndexHNSWFlat(METRIC_INNER_PRODUCT))``. HNSW cannot remove
  graph nodes, so a removed id becomes a *tombstone*: its vector is overwritten with zeros at once
  (erasure: no copy survives in memory or in a later snapshot) and every search excludes the
  tombstones with an ``IDSelector`` inside the graph walk, so it still returns up to ``k`` live
  faces (no oversampling guesswork). Tombstones still cost graph hops, so once they exceed
  ``COMPACT_FRACTION`` of the nodes the owner should swap in ``compacted()``, a fresh graph of
  the live vectors.

Thread safety: searches may run concurrently with each other; ``add``/``remove`` and the swap of
a compacted index need exclusive access (the gallery's readers-writer lock). Every search builds
its own ``SearchParameters``: ``IndexIDMap`` temporarily rewrites the selector inside the
parameters it is given, so sharing one object between threads would race.

Snapshots: ``write_snapshot`` writes the index with ``faiss.write_index`` to a temporary file,
fsyncs it and renames it into place, then does the same for a JSON sidecar recording what the
index was built from (store change id, face count, model, kind, dimension, tombstones) and the
SHA-256 of the index file. ``load_snapshot`` accepts it only if all of that matches what the
caller expects; a crash between the two renames leaves a hash mismatch, never a wrong index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from service.gallery.durable import fsync_path, sha256_file
from service.gallery.private import create_private_file

__all__ = [
    "COMPACT_FRACTION",
    "KINDS",
    "FaceIndex",
    "SnapshotInvalid",
    "remove_snapshot",
    "sidecar_path",
]

KINDS = ("flat", "hnsw", "pq")
COMPACT_FRACTION = 0.10
SNAPSHOT_FORMAT = 1

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 512  # recall@1 0.989 at 3e5 faces (bench_search); 128 lost 5%
# 64 sub-quantisers of 4 bits: 32 bytes per face beside its 512-byte float vector. At 1e6 faces
# with LFW mixed in (bench_search --lfw), recall@1 1.000 / LFW 1.000 with 512 candidates; 32
# sub-quantisers needed 2,048 candidates for LFW 0.992 (1,024: 0.988; 512: 0.975).
PQ_M = 64
PQ_REFINE = 512  # candidates re-ranked exactly per query
PQ_TRAIN_MIN = 20_000  # faces held before the codebooks are trained (flat search until then)
PQ_TRAIN_MAX = 65_536  # training sample (k-means of 16 centroids per 4-d sub-space)


class SnapshotInvalid(Exception):
    """The snapshot on disk cannot be used; the message says why (the caller rebuilds)."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")





def remove_snapshot(path: Path) -> None:
    """Delete the snapshot and any half-written one (after an erasure they hold stale vectors)."""
    for p in (path, sidecar_path(path), _tmp(path), _tmp(sidecar_path(path))):
        p.unlink(missing_ok=True)


class FaceIndex:
    """Inner-product search over (row id, embedding) pairs; see the module docstring."""

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        pq_m: int | None = None,
        pq_refine: int = PQ_REFINE,
        pq_train_min: int = PQ_TRAIN_MIN,
        _index: Any = None,
        _tombstones: set[int] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, not {kind!r}")
        if dim <= 0:
            raise ValueError(f"dimension must be positive, not {dim}")
        self.dim = dim
        self.kind = kind
        if pq_m is None:  # PQ_M, or one-dimensional sub-spaces for a dimension it does not divide
            pq_m = PQ_M if dim % PQ_M == 0 else dim
        if kind == "pq" and (dim % pq_m or pq_refine < 1 or pq_train_min < 16):
            raise ValueError(f"pq needs pq_m dividing {dim}, pq_refine >= 1, pq_train_min >= 16")
        self._params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction,
                        "ef_search": ef_search, "pq_m": pq_m, "pq_refine": pq_refine,
                        "pq_train_min": pq_train_min}
        self._ef_search = ef_search
        self._index = _index if _index is not None else self._empty(hnsw_m, ef_construction)
        self._tombstones: set[int] = set()
        self._exclude: Any = None
        self.snapshot_change_id: int | None = None  # set by ``load_snapshot``
        if _tombstones:
            self._set_tombstones(set(_tombstones))

    def _empty(self, hnsw_m: int, ef_construction: int) -> Any:
        if self.kind in ("flat", "pq"):  # pq: flat until trained
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
        return faiss.IndexIDMap2(inner)  # the wrapper keeps a reference to ``inner``

    # ------------------------------------------------------------ size

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstones excluded)."""
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def needs_compaction(self) -> bool:
        return len(self._tombstones) > COMPACT_FRACTION * max(1, int(self._index.ntotal))

    @property
    def trained(self) -> bool:
        """A ``pq`` index past ``PQ_TRAIN_MIN`` faces (codes + re-rank); else searches are flat."""
        return isinstance(faiss.downcast_index(self._index.index), faiss.IndexRefine)

    def ids(self) -> np.ndarray:
        """Live ids, sorted."""
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self._tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))]
        return np.sort(ids)

    # ------------------------------------------------------------ mutations (exclusive)

    def _vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}), not {v.shape}")
        return v

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        v = self._vectors(vectors, "vectors")
        if len(ids) != len(v):
            raise ValueError(f"{len(ids)} ids for {len(v)} vectors")
        if len(ids):
            self._index.add_with_ids(v, ids)
        if (self.kind == "pq" and not self.trained
                and self._index.ntotal >= self._params["pq_train_min"]):
            self._index = self._train_pq(self._index)

    def _train_pq(self, flat_map: Any) -> Any:
        """The trained ``pq`` form of a flat ``IndexIDMap2``: codebooks from (a spread sample
        of) its vectors, then every vector coded; deterministic for the same vectors."""
        n = int(flat_map.ntotal)
        ids = faiss.vector_to_array(flat_map.id_map).astype(np.int64)
        vectors = faiss.downcast_index(flat_map.index).reconstruct_n(0, n)
        step = max(1, n // PQ_TRAIN_MAX)
        # L2 codes: on unit vectors the L2 order is the cosine order, and fast-scan's 8-bit
        # look-up tables lose the cone's small inner-product differences (recall@1 0.82 with
        # 1,024 candidates at 2e5 faces, against 0.998 with L2; bench_search).
        codes = faiss.IndexPQFastScan(self.dim, self._params["pq_m"], 4, faiss.METRIC_L2)
        codes.train(np.ascontiguousarray(vectors[::step][:PQ_TRAIN_MAX]))
        refine = faiss.IndexRefineFlat(codes)  # exact distances over the same vectors
        index = faiss.IndexIDMap2(refine)
        index.add_with_ids(vectors, ids)
        return index

    def _remove_pq(self, ids: np.ndarray) -> int:
        """``IndexRefine`` has no ``remove_ids``: delete the same positions from the codes and
        the vectors (both keep their order), then the id map."""
        known = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        gone = np.isin(known, ids)
        if not gone.any():
            return 0
        positions = np.flatnonzero(gone).astype(np.int64)
        refine = faiss.downcast_index(self._index.index)
        for part in (refine.base_index, refine.refine_index):
            faiss.downcast_index(part).remove_ids(faiss.IDSelectorBatch(positions))
        kept = np.ascontiguousarray(known[~gone])
        faiss.copy_array_to_vector(kept, self._index.id_map)
        refine.ntotal = len(kept)
        self._index.ntotal = len(kept)
        self._index.construct_rev_map()
        return len(positions)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove ``ids`` (unknown ones are ignored); returns how many were live."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return 0
        if self.kind == "pq" and self.trained:
            return self._remove_pq(ids)
        if self.kind in ("flat", "pq"):
            return int(self._index.remove_ids(ids))
        known = faiss.vector_to_array(self._index.id_map)
        positions = np.nonzero(np.isin(known, ids))[0]
        fresh = {int(known[p]) for p in positions} - self._tombstones
        if not fresh:
            return 0
        storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
        xb = faiss.rev_swig_ptr(storage.get_xb(), int(storage.ntotal) * self.dim)
        xb.reshape(-1, self.dim)[positions] = 0.0  # erase now; the node stays as a graph hop
        self._set_tombstones(self._tombstones | fresh)
        return len(fresh)

    def _set_tombstones(self, tombstones: set[int]) -> None:
        self._tombstones = tombstones
        if not tombstones:
            self._exclude = None
            return
        batch = faiss.IDSelectorBatch(np.fromiter(sorted(tombstones), dtype=np.int64))
        self._exclude = faiss.IDSelectorNot(batch)  # the wrapper keeps ``batch`` alive

    def compacted(self) -> FaceIndex:
        """A new index of the live vectors only. Reads this one (safe beside searches)."""
        fresh = FaceIndex(self.dim, self.kind, **self._params)
        n = int(self._index.ntotal)
        if n == 0:
            return fresh
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self.kind == "pq" and self.trained:  # codebooks retrained on the live vectors
            refine = faiss.downcast_index(self._index.index)
            vectors = faiss.downcast_index(refine.refine_index).reconstruct_n(0, n)
        elif self.kind in ("flat", "pq"):
            vectors = self._index.index.reconstruct_n(0, n)
        else:
            storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
            vectors = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim)
        live = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
        fresh.add(ids[live], np.array(vectors[live], dtype=np.float32))
        return fresh

    # ------------------------------------------------------------ search (shared)

    def search(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (similarities, ids) best first; fewer than ``k`` when the index is smaller."""
        q = self._vectors(queries, "queries")
        if k <= 0:
            raise ValueError(f"k must be positive, not {k}")
        live = self.ntotal
        if live == 0 or len(q) == 0:
            empty = (np.empty(0, np.float32), np.empty(0, np.int64))
            return [empty for _ in range(len(q))]
        k = min(k, live)
        params = None
        exclude = self._exclude  # held here for the whole call
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self._ef_search, k)
            if exclude is not None:
                params.sel = exclude
        elif self.kind == "pq" and self.trained:
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = max(1.0, self._params["pq_refine"] / k)
        sims, ids = self._index.search(q, k, params=params)
        if params is not None and self.kind == "pq":
            sims = self._exact_cosines(q, ids)
        out = []
        for row_sims, row_ids in zip(sims, ids, strict=True):
            keep = row_ids >= 0
            out.append((row_sims[keep], row_ids[keep]))
        return out

    def _exact_cosines(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The re-rank ranked by exact L2 distance; return the inner products themselves (the
        same order on unit vectors, up to float rounding, which the stable sort settles)."""
        sims = np.full(ids.shape, -np.inf, dtype=np.float32)
        for i, row in enumerate(ids):
            found = row[row >= 0]
            if not len(found):
                continue
            vectors = self._index.reconstruct_batch(np.ascontiguousarray(found))
            sims[i, : len(found)] = vectors @ q[i]
            order = np.argsort(-sims[i, : len(found)], kind="stable")
            sims[i, : len(found)] = sims[i, order]
            ids[i, : len(found)] = found[order]
        return sims

    # ------------------------------------------------------------ snapshots

    def write_snapshot(self, path: Path, *, model: str, last_change_id: int) -> None:
        """Atomically replace the snapshot at ``path`` (and its sidecar); fsynced before return."""
        path = Path(path)
        side = sidecar_path(path)
        tmp, side_tmp = _tmp(path), _tmp(side)
        # Owner-only before a byte is written: the snapshot holds every enrolled embedding.
        create_private_file(tmp)
        create_private_file(side_tmp)
        faiss.write_index(self._index, str(tmp))
        fsync_path(tmp)
        header = {
            "format": SNAPSHOT_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "model": model,
            "count": self.ntotal,
            "last_change_id": int(last_change_id),
            "tombstones": sorted(self._tombstones),
            "sha256": sha256_file(tmp),
        }
        with open(side_tmp, "w", encoding="utf-8") as f:
            json.dump(header, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        os.replace(side_tmp, side)
        fsync_path(path.parent, directory=True)

    @classmethod
    def load_snapshot(
        cls,
        path: Path,
        *,
        dim: int,
        kind: str,
        model: str,
        count: int | None,
        last_change_id: int | None,
        **params: int,
    ) -> FaceIndex:
        """The snapshot at ``path`` if it was built from exactly this store state; otherwise
        ``SnapshotInvalid`` saying what differs (missing, stale, other model, corrupt...).

        ``count`` and ``last_change_id`` None accept any (a replica catches up from the
        snapshot's change id, found in ``snapshot_change_id``)."""
        path = Path(path)
        side = sidecar_path(path)
        try:
            header = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SnapshotInvalid("no snapshot") from None
        except (OSError, ValueError) as exc:
            raise SnapshotInvalid(f"unreadable sidecar {side.name}: {exc}") from None
        if not isinstance(header, dict):
            raise SnapshotInvalid(f"sidecar {side.name} is not a JSON object")
        expected = {
            "format": SNAPSHOT_FORMAT,
            "kind": kind,
            "dim": dim,
            "model": model,
            "count": count,
            "last_change_id": last_change_id,
        }
        for key, want in expected.items():
            if want is None:
                if not isinstance(header.get(key), int):
                    raise SnapshotInvalid(f"{key} missing from the sidecar")
                continue
            if header.get(key) != want:
                raise SnapshotInvalid(f"{key} is {header.get(key)!r}, the store has {want!r}")
        tombstones = header.get("tombstones")
        if not isinstance(tombstones, list) or not all(isinstance(t, int) for t in tombstones):
            raise SnapshotInvalid("tombstones missing or malformed")
        if kind != "hnsw" and tombstones:
            raise SnapshotInvalid(f"a {kind} index cannot have tombstones")
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise SnapshotInvalid(f"cannot read {path.name}: {exc}") from None
        if digest != header.get("sha256"):
            raise SnapshotInvalid(f"{path.name} does not match its checksum (corrupt or torn)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise SnapshotInvalid(f"FAISS cannot read {path.name}: {exc}") from None
        # read_index returns the owning, already most-derived object: keep that one (a
        # downcast_index copy does not own the index, which would be freed under it).
        inner_types = {"flat": (faiss.IndexFlatIP,), "hnsw": (faiss.IndexHNSWFlat,),
                       "pq": (faiss.IndexFlatIP, faiss.IndexRefineFlat)}[kind]
        if not isinstance(index, faiss.IndexIDMap2) or not isinstance(
            faiss.downcast_index(index.index), inner_types
        ):
            raise SnapshotInvalid(f"{path.name} is not a {kind} index")
        metric = faiss.METRIC_L2 if index.metric_type == faiss.METRIC_L2 and kind == "pq" \
            else faiss.METRIC_INNER_PRODUCT  # a trained pq index ranks by L2 (unit vectors)
        if index.d != dim or index.metric_type != metric:
            raise SnapshotInvalid(f"{path.name} has dimension {index.d} or the wrong metric")
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexRefine):  # a trained pq: its codes say how many
            params = {**params, "pq_m": faiss.downcast_index(inner.base_index).pq.M}
        loaded = cls(dim, kind, _index=index, _tombstones=set(tombstones), **params)
        want_count = header["count"] if count is None else count
        if loaded.ntotal != want_count:
            raise SnapshotInvalid(
                f"{path.name} holds {loaded.ntotal} live vectors, not {want_count}")
        loaded.snapshot_change_id = int(header["last_change_id"])
        return loaded
