"""Gallery-scale search: exact vs approximate FAISS indexes on synthetic face embeddings.

For each gallery size (default 10^4, 10^5, 10^6) and index (IndexFlatIP; HNSW at several
efSearch; IVF-Flat and IVF-PQ at several nprobe) it measures build time, index memory,
single-query and batched latency (p50/p99), and recall@1 / recall@10 against exact search.
Prints a table and writes JSON to benchmarks/results/bench_search.json.

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_search.py

Issue 16 added, side by side in one run (``--indexes``): ``pq``, the service's own
``FaceIndex`` kind (PQ fast-scan over every face + exact re-rank; ``--pq-m``,
``--pq-refine``), ``ivf-refine`` (IVF over fast-scan PQ + ``IndexRefineFlat``),
``hnsw-centred`` (HNSW over mean-removed, re-normalised vectors + exact re-rank) and
``--hnsw-m`` for larger graphs; and ``--lfw EMB.npz`` (an ``eval lfw`` cache), which enrols
one photo of each LFW person among the synthetic faces (the synthetic cone moved onto the
real one) and adds a recall@1 column for real LFW queries. E.g. the 10^6 comparison:

    bench_search.py --sizes 1e6 --indexes flat,pq,ivf-refine,hnsw --pq-m 32,64 \
        --pq-refine 512,1024 --lfw out/eval-lfw/embeddings-dlib-resnet-v1.npz

The generator (:func:`make_gallery`), a two-level model of L2-normalised face embeddings:

* every vector is ``normalize(mu + b_i + w)``: ``mu`` a fixed unit direction shared by all
  faces (real embeddings are not centred), ``b_i ~ N(0, B)`` the identity's offset and
  ``w ~ N(0, W)`` the per-photo noise, with ``|mu|^2 = IMPOSTOR_COS``,
  ``tr B = GENUINE_COS - IMPOSTOR_COS`` and ``tr W = 1 - GENUINE_COS``. Then two photos of
  one identity have cosine ~ ``GENUINE_COS`` and two identities ~ ``IMPOSTOR_COS``;
* ``B`` and ``W`` have a power-law spectrum (eigenvalue ``j`` proportional to
  ``j ** -SPECTRUM_DECAY``) in a random orthonormal basis, so the variance is spread over
  dimensions the way a trained embedding's is rather than sitting on the axes (which would
  flatter product quantisation) or being isotropic (which would make every approximate index
  look worse than on real data);
* the constants below were fitted to the 7,701 LFW View-2 embeddings of dlib-resnet-v1
  (``--fit``): mean same-person (0.952) and different-person (0.832) cosine over the View-2
  pairs, and the decay of the principal-component spectrum of the mean-removed embeddings
  (0.82). dlib's embeddings share a large common component (|mean|^2 = 0.83), hence the high
  impostor cosine. The synthetic data then also matches what was not fitted: 1st percentile
  of same-person cosine 0.911 (LFW 0.904), 99th of different-person 0.897 (LFW 0.908), and
  ~34 effective dimensions (participation ratio; LFW 33);
* a gallery of N faces holds N / FACES_PER_ID identities; every query is a new photo (fresh
  ``w``) of a random enrolled identity: what a 1:n identify request looks like.

Recall is measured against exact search on the same vectors: recall@1 is the fraction of
queries whose exact nearest neighbour is the approximate index's first result, recall@10 the
mean overlap of the two top-10 lists divided by 10. Latency: single queries are searched one
at a time with one OpenMP thread (a request's search on one core; with two threads on a busy
host, OpenMP's barrier waits inflated p50 several-fold), batched queries ``BATCH`` at a time with
``--threads`` OpenMP threads; p50/p99 are over the queries or batches. Memory is the size of
the serialised index, which is what it occupies in RAM (vectors, graph, codes, lists).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 128
GENUINE_COS = 0.952  # fitted: mean cosine of LFW View-2 same-person pairs (see --fit)
IMPOSTOR_COS = 0.832  # fitted: mean cosine of LFW View-2 different-person pairs
SPECTRUM_DECAY = 0.82  # fitted: eigenvalue j ~ j ** -decay (effective dims ~33, as LFW)
FACES_PER_ID = 2
BATCH = 64
K = 10

# The service's HNSW settings (service/gallery/index.py); benchmarked at its efSearch and around it.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
EF_SEARCH = (16, 32, 64, 128, 256)
RERANK_K = 64  # candidates an HNSW over centred vectors hands to the exact re-rank
RERANK_PQ = 1024  # candidates the IVF-PQ variant re-ranks
PQ_FS_M = 32  # 4-bit fast-scan sub-quantisers (16 bytes per face), as the service's pq index
NPROBE_REFINE = (64, 256)
PQ_REFINE = (512, 1024)
NPROBE_FLAT = (8, 32, 128)
NPROBE_PQ = (32, 128)
PQ_M = 16  # 16 sub-quantisers x 8 bits = 16 bytes per face


# ----------------------------------------------------------------------------- data


def _basis_and_scales(rng: np.random.Generator, decay: float) -> tuple[np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    spectrum = np.arange(1, DIM + 1, dtype=np.float64) ** -decay
    return q, np.sqrt(spectrum / spectrum.sum())  # per-direction std for unit total variance


@dataclass(frozen=True)
class Generator:
    genuine_cos: float = GENUINE_COS
    impostor_cos: float = IMPOSTOR_COS
    decay: float = SPECTRUM_DECAY
    faces_per_id: int = FACES_PER_ID
    seed: int = 0


def make_gallery(
    n: int, n_queries: int, gen: Generator,
    frame: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery ``(n, 128)`` and queries ``(n_queries, 128)``, float32 unit vectors (see the
    module docstring), and each query's identity; gallery face ``i`` is identity
    ``i % (n // faces_per_id)``. ``frame`` = (mean, principal axes) of real embeddings puts
    the synthetic cone where real faces are (for mixing them in) instead of a random one."""
    rng = np.random.default_rng(gen.seed)
    basis, scales = _basis_and_scales(rng, gen.decay)
    mu = rng.standard_normal(DIM)
    if frame is not None:
        mu, basis = frame[0].astype(np.float64), frame[1]
    mu *= np.sqrt(gen.impostor_cos) / np.linalg.norm(mu)
    sd_b = np.sqrt(gen.genuine_cos - gen.impostor_cos) * scales
    sd_w = np.sqrt(1.0 - gen.genuine_cos) * scales
    n_ids = max(1, n // gen.faces_per_id)
    centres = (rng.standard_normal((n_ids, DIM)) * sd_b) @ basis.T + mu

    def faces(ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), DIM), np.float32)
        for s in range(0, len(ids), 200_000):  # bounded temporaries at 10^6
            part = ids[s : s + 200_000]
            x = centres[part] + (rng.standard_normal((len(part), DIM)) * sd_w) @ basis.T
            out[s : s + len(part)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    gallery = faces(np.arange(n) % n_ids)
    query_ids = rng.integers(0, n_ids, n_queries)
    return gallery, faces(query_ids), query_ids


def describe(vectors: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Mean same-identity and different-identity cosine, and the spectrum's effective dims."""
    same, diff = [], []
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(ids)], strict=True):
        if b - a >= 2:
            same.append(float(vectors[order[a]] @ vectors[order[a + 1]]))
        if len(same) >= 2000:
            break
    i, j = rng.integers(0, len(ids), (2, 4000))
    keep = ids[i] != ids[j]
    diff = np.einsum("ij,ij->i", vectors[i[keep]], vectors[j[keep]])
    centred = vectors[: min(len(vectors), 50_000)].astype(np.float64)
    centred = centred - centred.mean(axis=0)
    ev = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    return {
        **_cos_stats(np.array(same), np.asarray(diff)),
        "effective_dims": float(ev.sum() ** 2 / (ev**2).sum()),  # participation ratio
    }


def _cos_stats(same: np.ndarray, diff: np.ndarray) -> dict[str, float]:
    return {
        "genuine_cos_mean": float(same.mean()),
        "genuine_cos_p01": float(np.percentile(same, 1)),
        "impostor_cos_mean": float(diff.mean()),
        "impostor_cos_p99": float(np.percentile(diff, 99)),
    }


def fit_from_embeddings(path: Path, pairs_file: Path) -> dict[str, float]:
    """The generator's constants from an ``eval lfw`` embedding cache and its pairs file."""
    sys.path.insert(0, str(REPO))
    from models.evaluation.pairs import read_pairs

    data = np.load(path)
    keys = [Path(k) for k in data["keys"].tolist()]
    vectors = data["plain"][data["has_plain"]].astype(np.float64)
    keys = [k for k, h in zip(keys, data["has_plain"], strict=True) if h]
    index = {f"{k.parent.name}/{k.name}": i for i, k in enumerate(keys)}
    pairs = read_pairs(pairs_file)
    left = np.array([index[p.left] for p in pairs.pairs])
    right = np.array([index[p.right] for p in pairs.pairs])
    cos = np.einsum("ij,ij->i", vectors[left], vectors[right])
    labels = pairs.labels
    centred = vectors - vectors.mean(axis=0)
    ev = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    ev = ev / ev.sum()
    j = np.arange(1, len(ev) + 1)
    head = slice(0, 64)  # the tail is noise-floor dominated
    decay = -np.polyfit(np.log(j[head]), np.log(ev[head]), 1)[0]
    return {
        "images": len(vectors),
        **_cos_stats(cos[labels], cos[~labels]),
        "mean_vector_norm_sq": float(np.sum(vectors.mean(axis=0) ** 2)),
        "spectrum_decay": float(decay),
        "effective_dims": float(1.0 / (ev**2).sum()),
    }


# ----------------------------------------------------------------------------- measuring


@dataclass
class Row:
    n: int
    index: str
    param: str
    build_s: float
    memory_mib: float
    single_p50_ms: float
    single_p99_ms: float
    batch_p50_ms: float
    batch_p99_ms: float
    recall_at_1: float
    recall_at_10: float
    mate_at_1: float  # queries whose first result is a face of the query's identity
    lfw_recall_at_1: float | None = None  # the same, for real LFW queries (--lfw)


def _memory_mib(index: Any) -> float:
    return faiss.serialize_index(index).nbytes / 2**20


def _latency(index: Any, queries: np.ndarray, n_single: int) -> tuple[float, float, float, float,
                                                                       np.ndarray]:
    """(single p50, p99, batch p50, p99) in ms and the top-K ids of every query."""
    single = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request's search on one core: no OpenMP barrier waits
    for q in queries[:10]:  # warm-up (page faults, lazily built tables)
        index.search(q[None], K)
    for q in queries[:n_single]:
        t0 = time.perf_counter()
        index.search(q[None], K)
        single.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    batches, ids = [], []
    for s in range(0, len(queries), BATCH):
        t0 = time.perf_counter()
        _, found = index.search(queries[s : s + BATCH], K)
        batches.append(time.perf_counter() - t0)
        ids.append(found)
    ms = 1e3 * np.array(single), 1e3 * np.array(batches)
    return (float(np.percentile(ms[0], 50)), float(np.percentile(ms[0], 99)),
            float(np.percentile(ms[1], 50)), float(np.percentile(ms[1], 99)), np.vstack(ids))


def _recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    r1 = float(np.mean(found[:, 0] == exact[:, 0]))
    r10 = float(np.mean([len(np.intersect1d(f, e)) / K for f, e in zip(found, exact, strict=True)]))
    return r1, r10


def load_lfw(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From an ``eval lfw`` cache: (gallery vectors, gallery identity, query vectors, query
    identity). Every person's first image is enrolled; people with several images give one
    query each (their second image), as an identify request would."""
    data = np.load(path)
    has = data["has_plain"]
    vectors = data["plain"][has].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    people = np.array([Path(k).parent.name for k in data["keys"][has].tolist()])
    _, person = np.unique(people, return_inverse=True)
    order = np.argsort(person, kind="stable")
    first = np.r_[True, person[order][1:] != person[order][:-1]]
    second = np.r_[False, first[:-1]] & ~first
    g, q = order[first], order[second]
    return vectors[g], person[g], vectors[q], person[q]


def real_frame(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean direction and principal axes (largest variance first) of real embeddings."""
    mean = vectors.mean(axis=0).astype(np.float64)
    centred = vectors.astype(np.float64) - mean
    _, axes = np.linalg.eigh(centred.T @ centred)
    return mean / np.linalg.norm(mean), axes[:, ::-1]


def bench_size(n: int, args: argparse.Namespace, gen: Generator, log: list[str]) -> list[Row]:
    rows: list[Row] = []
    t0 = time.perf_counter()
    lfw = load_lfw(args.lfw) if args.lfw else None
    frame = real_frame(np.vstack([lfw[0], lfw[2]])) if lfw else None
    xb, xq, q_ids = make_gallery(n, args.queries, gen, frame)
    n_ids = max(1, n // gen.faces_per_id)
    n_lfw = 0
    if lfw is not None:  # real faces enrolled among the synthetic ones; their queries last
        n_lfw = len(lfw[2])
        xb = np.vstack([xb, lfw[0]])
        xq = np.vstack([xq, lfw[2]])
    print(f"\n[{n:,} faces{f' + {len(lfw[0]):,} LFW' if lfw else ''}] generated in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    def measure(name: str, param: str, index: Any, build_s: float, exact: np.ndarray) -> Row:
        p50, p99, b50, b99, found = _latency(index, xq, args.single)
        memory = index.memory_mib() if isinstance(index, Searcher) else _memory_mib(index)
        syn = slice(0, len(xq) - n_lfw)
        r1, r10 = _recall(found[syn], exact[syn])
        mate = float(np.mean(found[syn, 0] % n_ids == q_ids))
        lfw_r1 = None
        if n_lfw:
            lfw_r1 = float(np.mean(found[-n_lfw:, 0] == exact[-n_lfw:, 0]))
        row = Row(n, name, param, build_s, memory, p50, p99, b50, b99, r1, r10, mate, lfw_r1)
        print(f"  {name:9s} {param:16s} build {build_s:7.1f} s  mem {row.memory_mib:7.0f} MiB  "
              f"1q p50 {p50:7.3f} p99 {p99:7.3f} ms  batch p50 {b50:8.2f} ms  R@1 {r1:.4f} "
              f"R@10 {r10:.3f} mate@1 {mate:.3f}"
              + (f" LFW R@1 {lfw_r1:.4f}" if lfw_r1 is not None else ""),
              flush=True)
        rows.append(row)
        return row

    # Exact search: the reference for recall, and the "flat" index the service uses.
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(xb)
    build = time.perf_counter() - t0
    _, exact = flat.search(xq, K)
    if "flat" in args.indexes:
        measure("flat", "exact", flat, build, exact)
    del flat

    def measure_rr(name: str, param: str, searcher: Searcher, build_s: float) -> Row:
        return measure(name, param, searcher, build_s, exact)

    if "pq" in args.indexes:
        bench_face_index(xb, args, measure_rr)
    if "ivf-refine" in args.indexes:
        bench_ivf_refine(len(xb), xb, args, measure_rr)
    if "hnsw" in args.indexes:
        for m in args.hnsw_m:
            bench_hnsw(n, xb, args, exact, measure, m)
    if "hnsw-centred" in args.indexes:
        bench_hnsw_centred(xb, args, measure_rr)
    if "ivf" not in args.indexes:
        return rows
    if n > args.ivf_max:
        log.append(f"IVF skipped at {n:,} faces (--ivf-max {args.ivf_max:,})")
        return rows
    bench_ivf(n, xb, exact, measure)
    return rows


def bench_hnsw(n: int, xb: np.ndarray, args: argparse.Namespace, exact: np.ndarray,
               measure: Any, m: int = HNSW_M) -> None:
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(xb)
    build = time.perf_counter() - t0
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        measure("hnsw", f"M{m} efS={ef}", hnsw, build, exact)
    del hnsw


def bench_ivf(n: int, xb: np.ndarray, exact: np.ndarray, measure: Any) -> None:
    # IVF: nlist = 4 sqrt(N), k-means on 30 points per list. On unit vectors the L2 order is
    # the inner-product order, and L2 k-means partitions them evenly (inner-product k-means
    # with unnormalised centroids does not), so the IVF indexes use L2.
    nlist = int(4 * np.sqrt(n))
    train = xb[np.random.default_rng(1).permutation(n)[: min(n, 30 * nlist)]]
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatL2(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_L2)
    ivf.train(train)
    train_s = time.perf_counter() - t0
    ivf.add(xb)
    build = time.perf_counter() - t0
    for nprobe in NPROBE_FLAT:
        ivf.nprobe = nprobe
        measure("ivf-flat", f"nl={nlist} np={nprobe}", ivf, build, exact)
    del ivf
    # IVF-PQ re-uses the trained coarse quantizer (same lists); its build time counts the
    # coarse training too, so the two rows compare.
    t0 = time.perf_counter()
    ivfpq = faiss.IndexIVFPQ(quantizer, DIM, nlist, PQ_M, 8, faiss.METRIC_L2)
    ivfpq.train(train)
    ivfpq.add(xb)
    build = time.perf_counter() - t0 + train_s
    for nprobe in NPROBE_PQ:
        ivfpq.nprobe = nprobe
        measure("ivf-pq", f"nl={nlist} np={nprobe} m={PQ_M}", ivfpq, build, exact)
    del ivfpq, quantizer


# ------------------------------------------------------------------ re-ranking variants (#16)


class Searcher:
    """One search method behind ``search(x, k) -> (sims, ids)``: the timing and recall code
    treats raw FAISS indexes and the service's ``FaceIndex`` alike."""

    def __init__(self, search: Any, memory: Any) -> None:
        self.search, self._memory = search, memory

    def memory_mib(self) -> float:
        return float(self._memory())


def _rerank(xb: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Exact inner products of each query with its candidates (ids = rows of ``xb``)."""
    sims = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    for i, (row, c) in enumerate(zip(q, cand, strict=True)):
        c = c[c >= 0]
        s = xb[c] @ row
        top = np.argsort(-s)[:k]
        sims[i, : len(top)], ids[i, : len(top)] = s[top], c[top]
    return sims, ids


def bench_hnsw_centred(xb: np.ndarray, args: argparse.Namespace, measure: Any) -> None:
    """HNSW over the centred, re-normalised vectors (the cone opened up), exact re-rank of
    the ``RERANK_K`` candidates against the original vectors."""
    mean = xb.mean(axis=0)

    def centre(x: np.ndarray) -> np.ndarray:
        y = x - mean
        return np.ascontiguousarray(y / np.linalg.norm(y, axis=1, keepdims=True),
                                    dtype=np.float32)

    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(centre(xb))
    build = time.perf_counter() - t0
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = max(ef, RERANK_K)

        def search(x: np.ndarray, k: int, hnsw: Any = hnsw) -> tuple[np.ndarray, np.ndarray]:
            _, cand = hnsw.search(centre(x), max(k, RERANK_K))
            return _rerank(xb, x, cand, k)

        measure("hnsw-cen", f"M{HNSW_M} efS={max(ef, RERANK_K)} rr{RERANK_K}",
                Searcher(search, lambda h=hnsw: _memory_mib(h) + xb.nbytes / 2**20), build)
    del hnsw


def bench_ivf_refine(n: int, xb: np.ndarray, args: argparse.Namespace, measure: Any) -> None:
    """IVF over 4-bit fast-scan PQ codes, the best candidates re-ranked exactly
    (``IndexRefineFlat``): what re-ranking buys IVF."""
    nlist = int(np.sqrt(n))
    train = xb[np.random.default_rng(1).permutation(n)[: min(n, 100 * nlist, 100_000)]]
    t0 = time.perf_counter()
    # L2: on unit vectors the same order as the inner product, and fast-scan's quantised
    # look-up tables keep it (with the inner product they lose the cone's small differences).
    base = faiss.index_factory(DIM, f"IVF{nlist},PQ{PQ_FS_M}x4fs", faiss.METRIC_L2)
    index = faiss.IndexRefineFlat(base)
    index.train(train)
    index.add(xb)
    build = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(base)
    for nprobe in args.nprobe_refine:
        ivf.nprobe = min(nprobe, nlist)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = RERANK_PQ / K
        measure("ivfpq-rr", f"nl={nlist} np={ivf.nprobe} rr{RERANK_PQ}",
                Searcher(lambda x, k, p=params, i=index: i.search(x, k, params=p),
                         lambda i=index: _memory_mib(i)), build)


def bench_face_index(xb: np.ndarray, args: argparse.Namespace, measure: Any) -> None:
    """The service's own ``FaceIndex(kind="pq")``: PQ fast-scan over every face, exact
    re-rank (what ``index=auto`` uses at scale); timed through its Python ``search``."""
    from service.gallery.index import FaceIndex

    ids = np.arange(len(xb), dtype=np.int64)
    for pq_m, refine in [(m, r) for m in args.pq_m for r in args.pq_refine]:
        t0 = time.perf_counter()
        fi = FaceIndex(DIM, "pq", pq_refine=refine, pq_m=pq_m)
        for s in range(0, len(xb), 100_000):  # as the gallery's rebuild adds it, in chunks
            fi.add(ids[s : s + 100_000], xb[s : s + 100_000])
        build = time.perf_counter() - t0

        def search(x: np.ndarray, k: int, fi: Any = fi) -> tuple[np.ndarray, np.ndarray]:
            out = fi.search(x, k)
            sims = np.full((len(x), k), -np.inf, np.float32)
            found = np.full((len(x), k), -1, np.int64)
            for i, (s_, f_) in enumerate(out):
                sims[i, : len(s_)], found[i, : len(f_)] = s_, f_
            return sims, found

        measure("pq-rr", f"PQ{fi._params['pq_m']}x4fs rr{refine}",
                Searcher(search, lambda fi=fi: _memory_mib(fi._index)), build)
        del fi


def print_table(rows: list[Row]) -> None:
    head = (f"{'faces':>9s} {'index':9s} {'params':18s} {'build s':>8s} {'MiB':>7s} "
            f"{'1q p50':>8s} {'1q p99':>8s} {'b64 p50':>8s} {'b64 p99':>8s} {'R@1':>6s} "
            f"{'R@10':>6s} {'mate@1':>6s} {'LFW R@1':>7s}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.n:>9,d} {r.index:9s} {r.param:18s} {r.build_s:8.1f} {r.memory_mib:7.0f} "
              f"{r.single_p50_ms:8.3f} {r.single_p99_ms:8.3f} {r.batch_p50_ms:8.2f} "
              f"{r.batch_p99_ms:8.2f} {r.recall_at_1:6.3f} {r.recall_at_10:6.3f} "
              f"{r.mate_at_1:6.3f} "
              + (f"{r.lfw_recall_at_1:7.4f}" if r.lfw_recall_at_1 is not None else f"{'-':>7s}"))
    print("latencies in ms; single = one query per search() call, b64 = a batch of "
          f"{BATCH} queries per call; recall vs exact search (IndexFlatIP); mate@1 = first "
          "result is a photo of the query's identity")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                    default=[10_000, 100_000, 1_000_000], help="comma-separated, e.g. 1e4,1e5")
    ap.add_argument("--queries", type=int, default=1024, help="queries for batch + recall")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    ap.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION)
    ap.add_argument("--ef-search", type=lambda s: [int(x) for x in s.split(",")],
                    default=list(EF_SEARCH), help="comma-separated efSearch values")
    ap.add_argument("--indexes", type=lambda s: set(s.split(",")),
                    default={"flat", "hnsw", "ivf"},
                    help="subset of flat,hnsw,ivf,pq,ivf-refine,hnsw-centred (the last three: "
                         "exact re-rank of candidates; pq is the service's FaceIndex kind)")
    ap.add_argument("--hnsw-m", type=lambda s: [int(x) for x in s.split(",")], default=[HNSW_M],
                    help="HNSW graph degrees to build, e.g. 32,64")
    ap.add_argument("--pq-refine", type=lambda s: [int(x) for x in s.split(",")],
                    default=list(PQ_REFINE), help="candidates the pq index re-ranks")
    ap.add_argument("--pq-m", type=lambda s: [int(x) for x in s.split(",")], default=[32],
                    help="sub-quantisers of the pq index (4 bits each), e.g. 32,64")
    ap.add_argument("--nprobe-refine", type=lambda s: [int(x) for x in s.split(",")],
                    default=list(NPROBE_REFINE), help="nprobe of the ivf-refine variant")
    ap.add_argument("--lfw", type=Path, metavar="EMBEDDINGS_NPZ",
                    help="an `eval lfw` embedding cache: enrol its people among the synthetic "
                         "faces (synthetic cone moved onto theirs) and report LFW recall@1")
    ap.add_argument("--name", default="bench_search", help="JSON file name (without .json)")
    ap.add_argument("--ivf-max", type=int, default=1_000_000,
                    help="skip IVF indexes above this many faces")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--fit", nargs=2, type=Path, metavar=("EMBEDDINGS_NPZ", "PAIRS_TXT"),
                    help="print the generator constants fitted to an eval-lfw cache and exit")
    args = ap.parse_args()

    if args.fit:
        fitted = fit_from_embeddings(*args.fit)
        print(json.dumps(fitted, indent=2))
        gen = Generator(genuine_cos=fitted["genuine_cos_mean"],
                        impostor_cos=fitted["impostor_cos_mean"], decay=fitted["spectrum_decay"])
        xb, _, _ = make_gallery(20_000, 1, gen)
        ids = np.arange(20_000) % (20_000 // gen.faces_per_id)
        print("synthetic with these constants:",
              json.dumps(describe(xb, ids, np.random.default_rng(0))))
        return 0

    faiss.omp_set_num_threads(args.threads)
    gen = Generator()
    xb, _, _ = make_gallery(20_000, 1, gen)
    ids = np.arange(20_000) % (20_000 // gen.faces_per_id)
    check = describe(xb, ids, np.random.default_rng(0))
    print(f"generator {asdict(gen)} -> {json.dumps(check)}")
    del xb

    start = time.perf_counter()
    rows: list[Row] = []
    log: list[str] = []
    for n in args.sizes:
        rows += bench_size(n, args, gen, log)
    total = time.perf_counter() - start
    print_table(rows)
    for line in log:
        print(line)
    print(f"total {total:.0f} s, FAISS {faiss.__version__}, {args.threads} OpenMP threads")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps({
        "generator": {**asdict(gen), "dim": DIM, "check": check},
        "settings": {"queries": args.queries, "single": args.single, "batch": BATCH, "k": K,
                     "threads": args.threads, "hnsw_m": HNSW_M, "ef_search": args.ef_search,
                     "indexes": sorted(args.indexes),
                     "ef_construction": args.ef_construction, "pq_m": PQ_M,
                     "hnsw_m_list": args.hnsw_m, "pq_refine": args.pq_refine,
                     "nprobe_refine": args.nprobe_refine, "rerank_k": RERANK_K,
                     "lfw": str(args.lfw) if args.lfw else None},
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "faiss": faiss.__version__},
        "total_s": total,
        "notes": log,
        "rows": [asdict(r) for r in rows],
    }, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
