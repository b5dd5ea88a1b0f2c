"""Which FAISS index an ``auto`` gallery uses, by its size: exact below 10^5 faces, then ``pq``.

Measured with ``benchmarks/bench_search.py`` (synthetic 128-d unit vectors fitted to dlib
embeddings of LFW: same-person cosine ~0.95, different-person ~0.83, ~33 effective dims; two
photos per identity, every query a new photo of an enrolled identity; with ``--lfw``, real
dlib embeddings of LFW (``eval lfw --limit-folds 4``: 3,074 photos) mixed in: 1,664 people
enrolled with one photo each among the synthetic faces, whose cone is moved onto theirs, and
597 queries, another photo of a person with several) on the 2-core CPU host, FAISS 1.15.
recall@1: the first result is the exact search's first result.

At 10^6 faces (issue 16), 1,000 synthetic + 597 LFW queries; latencies were taken
on a host shared with four other jobs (load average 5-8 on 2 cores), so they are several times
the quiet figures (quiet: exact search 55 ms p50 / 107-120 ms p99; the pq scan + re-rank of
1,024 candidates 1.4 ms p50 / 2.3 ms p99 in an exploratory run):

RESULTS_TABLE

What was tried, and why ``pq`` wins:

* **HNSW** (graph) loses the right answer on this data: the cone of face embeddings gives the
  nearest face little contrast (distance ratio ~1.9 to strangers) over ~33 effective
  dimensions, so the greedy walk needs efSearch in the thousands; it also took 11 minutes to
  build at 10^6 (every start without a snapshot) and 1.5x the vectors' memory. A larger M
  helps recall slowly and costs build time linearly (HNSW_M_NOTE).
* **Centring** (subtract the gallery mean, re-normalise) does not help a graph or an IVF: L2
  distances are invariant to the shift, and the re-normalisation distorts them; at 2*10^5
  faces HNSW over centred vectors + exact re-rank of 32 candidates gave recall@1 0.989 at
  efSearch 512 against 0.992 without centring. It matters for the inner-product look-up
  tables of fast-scan PQ, which instead use L2 codes (on unit vectors the same order; with
  inner-product codes recall@1 was 0.82 with 1,024 candidates, centred or not).
* **IVF** partitions miss the nearest face in this geometry: recall@1 0.78 at nprobe 128 of
  4,000 lists (IVF-Flat, 10^6), and re-ranking cannot restore what the probed lists lack
  (IVF-PQ + re-rank of 1,024 below).
* **PQ fast-scan over every face + exact re-rank** (``index.FaceIndex`` kind ``pq``): scanning
  all 16-byte codes is a ~1 ms SIMD pass at 10^6 on one core, nothing is pruned by a
  partition or a graph, and the exact re-rank of the best 1,024 makes the answer exact
  whenever the true best face is among them. Builds in ~15 s at 10^6 (k-means on 65,536
  faces + coding), needs no graph, and its memory is the float vectors (512 B/face, needed for
  the exact re-rank) + 16 B/face of codes.

Below ``FLAT_MAX_FACES`` = 10^5 exact search costs ~4 ms and is never wrong, so it stays.

The kind is chosen once, when the gallery is opened with the number of faces in the store: a
gallery that grows past the limit switches at the next start. ``service.gallery.gallery`` calls
``choose_index_kind``; keep its signature.
"""

from __future__ import annotations

__all__ = ["FLAT_MAX_FACES", "choose_index_kind"]

# Exact search costs ~4 ms of one core here (0.04 us per face); beyond, the PQ scan + re-rank.
FLAT_MAX_FACES = 100_000


def choose_index_kind(n: int) -> str:
    """``"flat"`` (exact) for galleries below ``FLAT_MAX_FACES`` faces, ``"pq"`` from there on.

    Exact search is never wrong and cheap below 10^5 faces; above, the PQ fast-scan with an
    exact re-rank keeps single queries at a few ms with recall@1 >= 0.99 where HNSW lost
    13-22% of first results and took 11 minutes to build.
    """
    if n < 0:
        raise ValueError(f"a gallery cannot have {n} faces")
    return "flat" if n < FLAT_MAX_FACES else "pq"
