"""Group unknown faces into people: clustering of L2-normalised embeddings.

Two algorithms, chosen between by measurement (``faceserve eval cluster``):

* ``chinese-whispers`` (dlib's ``chinese_whispers``, as in its face-clustering example): a
  graph with an edge between two faces when their cosine similarity is at least the
  threshold, every face starting as its own label; repeatedly, in random order, each face
  takes the label with the largest summed edge weight among its neighbours. The graph comes
  from an exact FAISS k-nearest-neighbour search, so memory is O(N k) and 10^5 faces fit.
* ``average`` / ``complete`` (agglomerative linkage, scipy): merge while the mean (average)
  or the smallest (complete) similarity between two groups is at least the threshold. Exact,
  but it needs the N x N distance matrix: O(N^2) memory (10^5 faces: 40 GB), so it is for
  thousands of faces, not hundreds of thousands.

Measured on 6,000 LFW faces of 2,136 people (README "Clustering"): average linkage at 0.93
has BCubed F 0.934 (pairwise precision 0.90, recall 0.93) and the best F is flat around it
(0.93-0.935); chinese whispers chains people together through the few impostor pairs above
any threshold (each face has ~N x FAR of them), so its best threshold climbs with N (0.94 at
2,500 faces, 0.945+ at 6,000) and its best F is lower (0.936 at 0.945, with 23% of faces
left alone against 17% truly alone). Average linkage is the default; chinese whispers is for
collections too large for the N x N matrix.

The threshold is a cosine similarity on the service's scale, but not the verify threshold
(``service.config``, 0.915 for dlib): that accepts ~0.17% of impostor pairs, right for one
comparison, while a clustering of N faces makes N^2/2 of them, and at 0.915 average linkage
merges more people (BCubed F 0.838 on the 6,000 faces).

Two constraints hold for every algorithm:

* **cannot-link**: faces of one photo (same ``photos`` value) are different people, so they
  never end in one cluster. Agglomerative linkage sees them at the largest distance;
  afterwards (every algorithm) a cluster holding two faces of one photo keeps the face most
  similar to the rest and the others leave as singletons.
* **incremental assignment** (:meth:`Clustering.add`): a new face joins the existing cluster
  it would join under the algorithm's own rule (chinese whispers: the largest summed edge
  weight; average: mean similarity; complete: smallest similarity, at least the threshold)
  and not blocked by cannot-link; faces joining nobody are clustered together with the
  faces still alone, and everything else is left as it was. :meth:`Clustering.fit` is the
  full recluster.

Labels: ``-1`` for a face left alone (an unclustered face: a cluster of one), else cluster ids
``0..K-1`` numbered by decreasing size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import sparse

__all__ = [
    "ALGORITHMS",
    "CLUSTER_THRESHOLD",
    "VERIFY_THRESHOLD",
    "Algorithm",
    "Clustering",
    "chinese_whispers",
    "cluster",
    "enforce_cannot_link",
    "knn_graph",
    "linkage_clusters",
    "relabel",
]

Algorithm = Literal["chinese-whispers", "average", "complete"]
ALGORITHMS: tuple[str, ...] = ("chinese-whispers", "average", "complete")

# The service's verify threshold (service.config.DEFAULT_THRESHOLD; a test holds them equal):
# it accepts ~0.17% of impostor pairs, fine for one comparison, but clustering compares every
# pair, and on LFW it merges people (`faceserve eval cluster`, README "Clustering").
VERIFY_THRESHOLD = 0.915
# Measured on the LFW clustering subset: the best BCubed F of average linkage, and a false
# accept rate of about 5e-4 on the model's impostor reference (models/calibration).
CLUSTER_THRESHOLD = 0.93

KNN = 64  # graph neighbours per face: more than a person usually has in a photo album
CW_ITERATIONS = 50
CW_BATCHES = 8  # faces updated together per step: near-asynchronous, and vectorised


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def knn_graph(vectors: np.ndarray, threshold: float, k: int = KNN) -> sparse.csr_matrix:
    """Symmetric sparse graph: edge weight = cosine similarity, kept when >= threshold.

    Exact inner-product search (FAISS ``IndexFlatIP``); each face keeps at most ``k``
    neighbours, then the graph is made symmetric (an edge either side keeps).
    """
    import faiss

    v = _unit(vectors)
    n = len(v)
    if n < 2:
        return sparse.csr_matrix((n, n), dtype=np.float32)
    k = min(k + 1, n)
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    sims, idx = index.search(v, k)
    rows = np.repeat(np.arange(n), k)
    keep = (sims.ravel() >= threshold) & (idx.ravel() != rows) & (idx.ravel() >= 0)
    g = sparse.csr_matrix((sims.ravel()[keep], (rows[keep], idx.ravel()[keep])), shape=(n, n))
    return g.maximum(g.T).tocsr()


def chinese_whispers(
    graph: sparse.csr_matrix, *, iterations: int = CW_ITERATIONS, seed: int = 0
) -> np.ndarray:
    """Chinese whispers on a weighted graph; returns a label per node (not renumbered).

    Faces are updated in ``CW_BATCHES`` random batches per sweep (one sparse product each)
    rather than one at a time: the same fixed points, at numpy speed. Stops when a sweep
    changes no label.
    """
    n = graph.shape[0]
    labels = np.arange(n)
    if n == 0 or graph.nnz == 0:
        return labels
    rng = np.random.default_rng(seed)
    has_edge = np.diff(graph.indptr) > 0
    nodes = np.flatnonzero(has_edge)
    for _ in range(iterations):
        changed = 0
        order = rng.permutation(nodes)
        for batch in np.array_split(order, min(CW_BATCHES, len(order))):
            onehot = sparse.csr_matrix(
                (np.ones(n, np.float32), (np.arange(n), labels)), shape=(n, n)
            )
            votes = graph[batch] @ onehot  # (batch, labels): summed edge weight per label
            best = np.asarray(votes.argmax(axis=1)).ravel()
            changed += int(np.count_nonzero(labels[batch] != best))
            labels[batch] = best
        if changed == 0:
            break
    return labels


def linkage_clusters(
    vectors: np.ndarray,
    threshold: float,
    method: Literal["average", "complete"],
    photos: Sequence[object] | None = None,
) -> np.ndarray:
    """Agglomerative clustering cut where the linkage similarity falls below ``threshold``.

    Faces of one photo are put at the largest cosine distance (2): complete linkage then
    never merges them, average linkage only when the rest outweighs it (fixed afterwards).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    v = _unit(vectors).astype(np.float64)
    n = len(v)
    if n < 2:
        return np.arange(n)
    dist = np.clip(pdist(v, "cosine"), 0.0, 2.0)
    if photos is not None:
        for members in _photo_groups(photos).values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1:]:
                    i, j = min(a, b), max(a, b)
                    dist[n * i - i * (i + 1) // 2 + (j - i - 1)] = 2.0
    tree = linkage(dist, method=method)
    # Merge while distance <= 1 - threshold, i.e. similarity >= threshold.
    return fcluster(tree, t=1.0 - threshold, criterion="distance") - 1


def _photo_groups(photos: Sequence[object]) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for i, p in enumerate(photos):
        if p is not None:
            groups.setdefault(p, []).append(i)
    return {p: m for p, m in groups.items() if len(m) > 1}


def enforce_cannot_link(
    labels: np.ndarray, vectors: np.ndarray, photos: Sequence[object] | None
) -> np.ndarray:
    """Labels where no cluster holds two faces of one photo.

    Of the faces of one photo inside one cluster, the one with the highest mean similarity
    to the cluster's other faces stays; the others get new labels of their own.
    """
    labels = np.asarray(labels).copy()
    if photos is None:
        return labels
    v = _unit(vectors)
    next_label = int(labels.max()) + 1 if len(labels) else 0
    for members in _photo_groups(photos).values():
        by_cluster: dict[int, list[int]] = {}
        for i in members:
            by_cluster.setdefault(int(labels[i]), []).append(i)
        for lab, clash in by_cluster.items():
            if len(clash) < 2:
                continue
            rest = np.setdiff1d(np.flatnonzero(labels == lab), clash)
            score = (v[clash] @ v[rest].T).mean(axis=1) if len(rest) else np.zeros(len(clash))
            keep = clash[int(np.argmax(score))]
            for i in clash:
                if i != keep:
                    labels[i] = next_label
                    next_label += 1
    return labels


def relabel(labels: np.ndarray, min_size: int = 2) -> np.ndarray:
    """Clusters of at least ``min_size`` numbered 0.. by decreasing size (ties: first face);
    the rest ``-1``."""
    labels = np.asarray(labels)
    out = np.full(len(labels), -1, dtype=np.int64)
    if not len(labels):
        return out
    uniq, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    order = sorted(range(len(uniq)), key=lambda c: (-counts[c], first[c]))
    new_id = np.full(len(uniq), -1, dtype=np.int64)
    nxt = 0
    for c in order:
        if counts[c] >= min_size:
            new_id[c] = nxt
            nxt += 1
    out[:] = new_id[inverse.ravel()]
    return out


def cluster(
    vectors: np.ndarray,
    threshold: float,
    *,
    algorithm: str = "average",
    photos: Sequence[object] | None = None,
    seed: int = 0,
    knn: int = KNN,
) -> np.ndarray:
    """Full clustering: a label per face (``-1`` alone, else 0.. by decreasing size)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if photos is not None and len(photos) != len(vectors):
        raise ValueError("photos must name one photo per face")
    if algorithm == "chinese-whispers":
        raw = chinese_whispers(knn_graph(vectors, threshold, knn), seed=seed)
    else:
        raw = linkage_clusters(vectors, threshold, algorithm, photos)  # type: ignore[arg-type]
    return relabel(enforce_cannot_link(raw, vectors, photos))


@dataclass
class Clustering:
    """Faces and their clusters, kept so new faces can be assigned without a recluster."""

    threshold: float
    algorithm: str = "average"
    seed: int = 0
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    photos: list[object] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def fit(self, vectors: np.ndarray, photos: Sequence[object] | None = None) -> np.ndarray:
        """Full recluster of these faces (replacing any held)."""
        self.vectors = _unit(vectors)
        self.photos = list(photos) if photos is not None else [None] * len(self.vectors)
        self.labels = cluster(self.vectors, self.threshold, algorithm=self.algorithm,
                              photos=self.photos, seed=self.seed)
        return self.labels

    def recluster(self) -> np.ndarray:
        """Full recluster of every face held."""
        return self.fit(self.vectors, self.photos)

    def add(self, vectors: np.ndarray, photos: Sequence[object] | None = None) -> np.ndarray:
        """Assign new faces; returns the labels of all faces (existing ones keep theirs,
        except faces alone until now, which may form new clusters with the new faces)."""
        new = _unit(vectors)
        new_photos = list(photos) if photos is not None else [None] * len(new)
        if len(new_photos) != len(new):
            raise ValueError("photos must name one photo per face")
        if not len(self.vectors):
            return self.fit(new, new_photos)
        joined = self._assign(new, new_photos)
        old_n = len(self.vectors)
        vectors_all = np.concatenate([self.vectors, new])
        photos_all = self.photos + new_photos
        labels = np.concatenate([self.labels, joined])
        # Faces alone (old singletons and new faces that joined nobody) cluster among
        # themselves; clusters already formed are not touched.
        alone = np.flatnonzero(labels < 0)
        if len(alone) > 1:
            sub = cluster(vectors_all[alone], self.threshold, algorithm=self.algorithm,
                          photos=[photos_all[i] for i in alone], seed=self.seed)
            base = int(labels.max()) + 1 if (labels >= 0).any() else 0
            labels[alone] = np.where(sub >= 0, sub + base, -1)
        self.vectors, self.photos = vectors_all, photos_all
        self.labels = relabel(_singletons_apart(labels))
        assert old_n + len(new) == len(self.labels)
        return self.labels

    def _assign(self, new: np.ndarray, new_photos: list[object]) -> np.ndarray:
        """Existing cluster each new face joins (-1: none), one face at a time so two faces
        of one new photo cannot both join one cluster."""
        out = np.full(len(new), -1, dtype=np.int64)
        clustered = np.flatnonzero(self.labels >= 0)
        if not len(clustered):
            return out
        n_clusters = int(self.labels.max()) + 1
        member_photos: dict[int, set[object]] = {}
        for i in clustered:
            if self.photos[i] is not None:
                member_photos.setdefault(int(self.labels[i]), set()).add(self.photos[i])
        lab = self.labels[clustered]
        onehot = sparse.csr_matrix(
            (np.ones(len(clustered), np.float32), (np.arange(len(clustered)), lab)),
            shape=(len(clustered), n_clusters),
        )
        counts = np.bincount(lab, minlength=n_clusters).astype(np.float64)
        members = self.vectors[clustered]
        for start in range(0, len(new), 256):
            sims = new[start:start + 256] @ members.T  # (b, clustered faces)
            score, ok = self._cluster_scores(sims, onehot, counts, lab, n_clusters)
            for r in range(len(sims)):
                i = start + r
                allowed = np.flatnonzero(ok[r])
                for c in allowed[np.argsort(-score[r, allowed])]:
                    if new_photos[i] is not None and new_photos[i] in member_photos.get(
                            int(c), set()):
                        continue
                    out[i] = c
                    if new_photos[i] is not None:
                        member_photos.setdefault(int(c), set()).add(new_photos[i])
                    break
        return out

    def _cluster_scores(
        self, sims: np.ndarray, onehot: sparse.csr_matrix, counts: np.ndarray,
        lab: np.ndarray, n_clusters: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(score, allowed) per new face and cluster under the algorithm's joining rule."""
        if self.algorithm == "chinese-whispers":
            edges = np.where(sims >= self.threshold, sims, 0.0).astype(np.float32)
            score = np.asarray((onehot.T @ edges.T).T)
            return score, score > 0
        if self.algorithm == "average":
            score = np.asarray((onehot.T @ sims.T).T) / counts
            return score, score >= self.threshold
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], np.arange(n_clusters))
        score = np.minimum.reduceat(sims[:, order], starts, axis=1)
        return score, score >= self.threshold


def _singletons_apart(labels: np.ndarray) -> np.ndarray:
    """-1 (alone) made into distinct labels, so relabel keeps them apart."""
    labels = labels.copy()
    alone = np.flatnonzero(labels < 0)
    base = int(labels.max()) + 1 if len(labels) else 0
    labels[alone] = base + np.arange(len(alone))
    return labels
