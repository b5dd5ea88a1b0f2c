"""Which FAISS index an ``auto`` gallery uses, by its size: exact below 10^5 faces, then ``pq``.

Measured with ``benchmarks/bench_search.py`` (synthetic 128-d unit vectors fitted to dlib
embeddings of LFW: same-person cosine ~0.95, different-person ~0.83, ~33 effective dims; two
photos per identity, every query a new photo of an enrolled identity; with ``--lfw``, real
dlib embeddings of LFW (``eval lfw --limit-folds 4``: 3,074 photos) mixed in: 1,664 people
enrolled with one photo each among the synthetic faces, whose cone is moved onto theirs, and
597 queries, another photo of a person with several) on the 2-core CPU host, FAISS 1.15.
recall@1: the first result is the exact search's first result.

At 10^6 faces (issue 16), 1,000 synthetic + 597 LFW queries. Recall and memory are exact
figures; latencies were taken on a host shared with other jobs (load average 5-9 on 2 cores)
and are upper bounds: one OpenMP thread per single query (``bench_search_latency_1e6.json``),
quiet figures in brackets where one was taken.

=======================================  ======  =======  =======  ================  ========
index (10^6 faces)                       R@1     LFW R@1  MiB      1 query p50/p99   build
=======================================  ======  =======  =======  ================  ========
flat (exact)                             1       1        488      77 / 208 ms       1 s
                                                                   (quiet: 55 / 107)
pq 64x4-bit, re-rank 512 (``auto``)      1.000   1.000    527      21 / 99 ms        30-80 s
                                                                   (isolated, load
                                                                   5.5: 7.2 / 18)
pq 64x4-bit, re-rank 1,024 / 2,048       1.000   1.000    527      --                30-110 s
pq 32x4-bit, re-rank 512                 0.994   0.975    512      --                15-30 s
pq 32x4-bit, re-rank 1,024               0.999   0.988    512      (quiet: 1.4/2.3)  15-30 s
pq 32x4-bit, re-rank 2,048               0.999   0.992    512      --                15 s
IVF-PQ 1,000 lists, 256 probed, +1,024   0.970   0.987    513      --                20-45 s
same with inner-product codes            0.662   0.621    513      --                20 s
hnsw M32 efSearch 256                    0.890   0.982    749      2.3 / 5.9 ms *    55 min
hnsw M32 efSearch 512                    0.944   0.998    749      3.9 / 10 ms *     (11 min
hnsw M32 efSearch 1,024                  0.970   1.000    749      8.8 / 17 ms *     quiet)
=======================================  ======  =======  =======  ================  ========

(JSON: ``bench_search_1e6.json``, ``bench_search_pq_1e6.json``, ``bench_search_latency_1e6.json``;
the quiet pq figure is from an exploratory run with the same codes and a NumPy re-rank; * two
OpenMP threads per query, from the run before single queries were pinned to one.)

What was tried, and why ``pq`` wins:

* **HNSW** (graph) loses the right answer on this data: the cone of face embeddings gives the
  nearest face little contrast (distance ratio ~1.9 to strangers) over ~33 effective
  dimensions, so the greedy walk needs efSearch in the thousands (0.970 at 1,024); it also
  took 11 minutes to build at 10^6 on a quiet host (every start without a snapshot) and 1.5x
  the vectors' memory. A larger M raises recall slowly and build time about linearly; M=64
  was not built at 10^6 here (the M=32 build alone took 55 minutes on this shared host).
* **Centring** (subtract the gallery mean, re-normalise) does not help a graph or an IVF: L2
  distances are invariant to the shift, and the re-normalisation distorts them; at 2*10^5
  faces HNSW over centred vectors + exact re-rank of 32 candidates gave recall@1 0.989 at
  efSearch 512 against 0.992 without centring. Nor does it rescue fast-scan PQ with
  inner-product codes (recall@1 0.82 with 1,024 candidates at 2*10^5, centred or not: its
  8-bit look-up tables lose the cone's small differences); the ``pq`` codes use L2, which on
  unit vectors gives the cosine's order (0.998 there).
* **IVF** partitions miss the nearest face in this geometry: recall@1 0.78 at nprobe 128 of
  4,000 lists (IVF-Flat, 10^6), and re-ranking cannot restore what the probed lists lack
  (IVF-PQ + re-rank of 1,024 above).
* **PQ fast-scan over every face + exact re-rank** (``index.FaceIndex`` kind ``pq``): scanning
  all codes is a SIMD pass of a few ms at 10^6 on one core, nothing is pruned by a partition
  or a graph, and the exact re-rank makes the answer exact whenever the true best face is
  among the candidates. 32 codes per face (16 B) lost real LFW faces (their fine structure
  differs from the synthetic bulk the codebooks were trained on); 64 codes (32 B) with 512
  candidates found every exact answer. Builds in under a minute at 10^6 (k-means on 65,536
  faces + coding), and its memory is the float vectors (512 B/face, needed for the exact
  re-rank) + 32 B/face of codes + 8 B/face of ids.

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
