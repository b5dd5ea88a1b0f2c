"""Which FAISS index an ``auto`` gallery uses, by its size: exact search below a million faces.

Measured with ``benchmarks/bench_search.py`` (synthetic 128-d unit vectors fitted to dlib
embeddings of LFW: same-person cosine ~0.95, different-person ~0.83, ~33 effective dims; two
photos per identity, every query a new photo of an enrolled identity) on the 2-core CPU host,
FAISS 1.15, the service's HNSW settings (M=32, efConstruction=200, efSearch=128):

============  ===================  ================================================  ==========
faces         flat: 1 query p50    hnsw efS=128: 1 query p50 / recall@1 / mate@1     hnsw build
============  ===================  ================================================  ==========
10,000        0.36 ms              0.26 ms / 0.999 / --                              1.4 s
100,000       3.3-4.4 ms           0.36-0.40 ms / 0.982 / 0.974 (exact: 0.990)       27-45 s
300,000       40 ms (contended)    0.93 ms / 0.944 / 0.944 (exact: 0.990)            178 s
1,000,000     55 ms (p99 107-120)  0.80 ms / 0.775 / -- (exact mate@1: 0.993)        670 s
============  ===================  ================================================  ==========

(recall@1: the approximate first result is the exact one; mate@1: the first result is a photo
of the query's identity. efSearch=256 gives recall@1 0.995 / 0.973 / 0.869 at 1e5 / 3e5 / 1e6,
and 512 gives 0.989 at 3e5.)

The rule: **exact search while it is affordable**, HNSW only when it is not.

* Exact search costs ~0.05 us per face and query (memory-bandwidth bound: 55 ms at 10^6) and is
  never wrong. The pipeline spends ~50 ms of CPU on one photo before the search (detection,
  landmarks, embedding: 52 ms per LFW image at one thread), so below ~10^6 faces exact search
  at most doubles an identify request.
* HNSW with the service's efSearch is not "a little" approximate on face-like data: at 3x10^5
  faces it puts the wrong face first for 5.6% of queries (exact search: 1%), at 10^6 for 22%.
  Its graph also costs 1.5x the memory of the vectors and minutes to rebuild at start-up when
  there is no valid snapshot (11 minutes at 10^6 on two cores).
* So galleries below ``FLAT_MAX_FACES`` = 10^6 faces stay exact. From there a linear scan
  costs more than everything else in a request (>55 ms p50, >100 ms p99, growing linearly)
  and HNSW is the only choice that keeps identify interactive -- but at that size its
  efSearch must be raised (>= 512) for usable recall; that setting lives in index.py.

IVF-Flat and IVF-PQ were measured too and are not offered: on this data IVF-Flat needs a large
share of its lists probed (recall@1 0.78 at nprobe=128 of 4,000 lists at 10^6, 2.9 ms) and
IVF-PQ (16 bytes per face) stays below 0.82 recall@1 at every size without re-ranking; their
merit, memory, only matters well past 10^6 faces.

The kind is chosen once, when the gallery is opened with the number of faces in the store: a
gallery that grows past the limit switches at the next start. ``service.gallery.gallery`` calls
``choose_index_kind``; keep its signature.
"""

from __future__ import annotations

__all__ = ["FLAT_MAX_FACES", "choose_index_kind"]

# Exact-search latency reaches the per-photo pipeline cost (~50 ms on 2 CPU cores) here; see the
# module docstring for the measurements.
FLAT_MAX_FACES = 1_000_000


def choose_index_kind(n: int) -> str:
    """``"flat"`` (exact) for galleries below ``FLAT_MAX_FACES`` faces, ``"hnsw"`` from there on.

    Exact search is never wrong and, below a million 128-d vectors, costs less than the
    detection and embedding that precede it; HNSW at the service's settings loses 2-22% of
    first results between 10^5 and 10^6 faces, so it is used only where a scan is too slow.
    """
    if n < 0:
        raise ValueError(f"a gallery cannot have {n} faces")
    return "flat" if n < FLAT_MAX_FACES else "hnsw"
