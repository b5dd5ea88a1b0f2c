"""dlib's 5-point shape predictor (an ensemble-of-regression-trees cascade) in NumPy.

The model is ``shape_predictor_5_face_landmarks.dat`` (CC0): 15 cascade levels, each with
800 feature pixels and 500 complete depth-4 regression trees whose leaves are 10-vectors
(5 points x (x, y)) added to the current shape. Layout and semantics are in
``../shared/notes/dlib-models.md`` section 4. The computation here reproduces dlib's
integer landmark positions exactly (0 px difference in the tests):

* the current shape is float32 and each tree's leaf is added to it **one tree after another**
  (float32 rounding per addition: a NumPy reduction along a slow axis, which adds in order);
* per level, the 2x2 part of the Umeyama similarity (initial shape -> current shape) is
  computed in float64 and cast to float32; feature offsets ``A @ delta + anchor`` are float32;
* a normalised point (u, v) maps to the image as ``(l + u*(r-l), t + v*(b-t))`` and is rounded
  with ``floor(x + 0.5)``; pixels outside the image read as 0;
* intensity is the grey value, or ``(R+G+B) // 3`` for RGB; split test is a strict ``>``.

All faces of an image are processed together: per level one gather for the 800 feature
pixels of every face, every split of every tree tested at once, then 4 lookups walk all 500
trees of every face.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.dlib_format import check_finite, read_shape_predictor
from models.faces import Box

__all__ = [
    "NUM_LANDMARKS",
    "ShapePredictor",
    "convert_dlib",
    "load_shape_predictor",
    "similarity_linear_part",
]

NUM_LANDMARKS = 5

_KEYS = (
    "initial_shape",  # (P, 2) float32, normalised box coordinates
    "split_idx1",  # (L, T, S) int32 feature indices (S = 2**depth - 1 split nodes)
    "split_idx2",  # (L, T, S) int32
    "split_thresh",  # (L, T, S) float32
    "leaves",  # (L, T, S+1, 2P) float32
    "anchor_idx",  # (L, F) int32, landmark each feature pixel hangs off
    "deltas",  # (L, F, 2) float32 offsets in normalised shape space
)


def convert_dlib(path: str | Path) -> dict[str, np.ndarray]:
    """Parse the dlib ``.dat`` file into the arrays ``ShapePredictor`` needs (pure Python, ~5 s)."""
    data = read_shape_predictor(path)
    out = {key: np.ascontiguousarray(getattr(data, key)) for key in _KEYS}
    check_finite(out, str(path), "a dlib shape_predictor")
    return out


def load_shape_predictor(cache_dir: str | Path | None = None) -> ShapePredictor:
    """The 5-point predictor from the converted-weights cache (converted on first use)."""
    from models.weights import dlib_model_path, load_converted

    tensors = load_converted(
        "landmarks",
        dlib_model_path("landmarks"),
        convert_dlib,
        Path(cache_dir) if cache_dir is not None else None,
    )
    return ShapePredictor.from_arrays({k: v.numpy() for k, v in tensors.items()})


def similarity_linear_part(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x2 linear part ``c*R`` of the least-squares similarity taking ``src`` to ``dst``.

    Umeyama's method as in dlib's ``find_similarity_transform`` (float64, with its reflection
    rule). ``src``: (P, 2) or (N, P, 2); ``dst``: (N, P, 2). Returns (N, 2, 2) float64.
    """
    dst = np.asarray(dst, dtype=np.float64)
    src = np.broadcast_to(np.asarray(src, dtype=np.float64), dst.shape)
    n_pts = dst.shape[-2]
    mean_src = src.mean(axis=-2, keepdims=True)
    mean_dst = dst.mean(axis=-2, keepdims=True)
    ds = src - mean_src
    dd = dst - mean_dst
    sigma_src = (ds * ds).sum(axis=(-2, -1)) / n_pts
    cov = np.einsum("npi,npj->nij", dd, ds) / n_pts
    u, d, vt = np.linalg.svd(cov)
    det_cov = np.linalg.det(cov)
    flip = (det_cov < 0) | ((det_cov == 0) & (np.linalg.det(u) * np.linalg.det(vt) < 0))
    s = np.ones((dst.shape[0], 2))
    # d is sorted descending by LAPACK; dlib flips the smaller singular direction.
    s[flip & (d[:, 1] < d[:, 0]), 1] = -1.0
    s[flip & ~(d[:, 1] < d[:, 0]), 0] = -1.0
    r = np.einsum("nij,nj,njk->nik", u, s, vt)
    c = np.where(sigma_src != 0, (d * s).sum(axis=1) / np.where(sigma_src != 0, sigma_src, 1), 1.0)
    return c[:, None, None] * r


def _similarity_2x2(
    src: np.ndarray, ds: np.ndarray, sigma: float, dst: np.ndarray
) -> np.ndarray:
    """``similarity_linear_part(src, dst)`` in closed form (fast path for the cascade), with
    the source's centred points ``ds`` (P, 2) and their variance ``sigma`` precomputed: the
    cascade's source is always the initial shape.

    Without a reflection (``det(cov) > 0``), Umeyama's ``c*R`` in 2-D is
    ``[[a, -b], [b, a]]`` with ``a = (cov00 + cov11) / sigma``, ``b = (cov10 - cov01) / sigma``.
    This agrees with the SVD route to the last bits of a double, far below the float32 the
    cascade casts it to. Other cases (reflections, degenerate shapes) take the SVD route.
    """
    dst = np.asarray(dst, dtype=np.float64)
    dd = dst - dst.mean(axis=-2, keepdims=True)  # (N, P, 2)
    cov = np.einsum("npi,pj->nij", dd, ds) / dst.shape[-2]
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    a = (cov[:, 0, 0] + cov[:, 1, 1]) / sigma
    b = (cov[:, 1, 0] - cov[:, 0, 1]) / sigma
    out = np.empty((dst.shape[0], 2, 2))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = a, -b, b, a
    bad = ~(det > 0) | (sigma == 0)
    if bad.any():
        out[bad] = similarity_linear_part(src, dst[bad])
    return out


class ShapePredictor:
    """Regression-tree cascade; ``predict(image, boxes)`` -> (N, 5, 2) float32 pixel positions."""

    def __init__(
        self,
        initial_shape: np.ndarray,
        split_idx1: np.ndarray,
        split_idx2: np.ndarray,
        split_thresh: np.ndarray,
        leaves: np.ndarray,
        anchor_idx: np.ndarray,
        deltas: np.ndarray,
    ) -> None:
        self.initial_shape = np.asarray(initial_shape, dtype=np.float32).reshape(-1, 2)
        self.split_idx1 = np.asarray(split_idx1, dtype=np.intp)
        self.split_idx2 = np.asarray(split_idx2, dtype=np.intp)
        self.split_thresh = np.asarray(split_thresh, dtype=np.float32)
        self.leaves = np.asarray(leaves, dtype=np.float32)
        self.anchor_idx = np.asarray(anchor_idx, dtype=np.intp)
        self.deltas = np.asarray(deltas, dtype=np.float32)

        n_levels, n_trees, n_splits = self.split_idx1.shape
        n_parts = self.initial_shape.shape[0]
        depth = int(np.log2(n_splits + 1))
        if 2**depth - 1 != n_splits:
            raise ValueError(f"trees must be complete; got {n_splits} splits per tree")
        if self.leaves.shape != (n_levels, n_trees, n_splits + 1, 2 * n_parts):
            raise ValueError(f"leaves have shape {self.leaves.shape}, inconsistent with splits")
        n_feats = self.anchor_idx.shape[1]
        if self.deltas.shape != (n_levels, n_feats, 2):
            raise ValueError(f"deltas have shape {self.deltas.shape}")
        if self.split_idx1.max() >= n_feats or self.split_idx2.max() >= n_feats:
            raise ValueError("a split refers to a feature pixel that does not exist")
        if self.anchor_idx.max() >= n_parts:
            raise ValueError("a feature pixel is anchored to a landmark that does not exist")
        self.num_parts = n_parts
        self.depth = depth
        # The cascade's similarity always starts from the initial shape: centre it once.
        self._src = self.initial_shape.astype(np.float64)
        self._src_centred = self._src - self._src.mean(axis=0)
        self._src_sigma = float((self._src_centred * self._src_centred).sum() / n_parts)
        # Per level, every split of every tree in one flat row (tree * S + node), and the
        # leaves so that one row index (tree * leaves_per_tree + leaf) picks a leaf.
        self._leaves_flat = self.leaves.reshape(n_levels, n_trees * (n_splits + 1), 2 * n_parts)
        self._n_splits = n_splits
        self._n_trees = n_trees
        self._i1 = self.split_idx1.reshape(n_levels, -1)
        self._i2 = self.split_idx2.reshape(n_levels, -1)
        self._th = self.split_thresh.reshape(n_levels, -1)
        self._tree_base = np.arange(n_trees) * n_splits
        self._tree_leaf_base = np.arange(n_trees) * (n_splits + 1)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ShapePredictor:
        missing = [k for k in _KEYS if k not in arrays]
        if missing:
            raise KeyError(f"converted shape predictor lacks {missing}")
        return cls(**{k: np.asarray(arrays[k]) for k in _KEYS})

    # ------------------------------------------------------------------------------------
    def predict(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """Landmarks of each box: (N, P, 2) float32 integer-valued pixel (x, y) positions.

        ``image``: (H, W) grey or (H, W, 3) RGB uint8. Boxes are dlib-style (inclusive
        right/bottom) and may extend past the image.
        """
        pixels, h, w = _pixels(image)
        n = len(boxes)
        if n == 0:
            return np.zeros((0, self.num_parts, 2), dtype=np.float32)
        rects = np.array([_box_tuple(b) for b in boxes], dtype=np.float64)  # (N, 4)
        origin = rects[:, None, 0:2]  # (N, 1, 2): l, t
        extent = rects[:, None, 2:4] - rects[:, None, 0:2]  # (N, 1, 2): r-l, b-t  (not +1)

        cur = np.repeat(self.initial_shape[None], n, axis=0)  # (N, P, 2) float32
        # Flat position of face k's tree t in the (N * T * S) split outcomes of a level.
        split_rows = (np.arange(n) * (self._n_trees * self._n_splits))[:, None] + self._tree_base
        for level in range(self.split_idx1.shape[0]):
            a = _similarity_2x2(self._src, self._src_centred, self._src_sigma, cur)
            a = a.astype(np.float32)  # (N, 2, 2)
            d = self.deltas[level]  # (F, 2)
            anchors = np.take(cur, self.anchor_idx[level], axis=1)  # (N, F, 2) float32
            # float32, same operation order as dlib: (a00*dx + a01*dy) + anchor
            dx, dy = d[None, :, 0], d[None, :, 1]
            ux = (a[:, None, 0, 0] * dx + a[:, None, 0, 1] * dy) + anchors[..., 0]
            uy = (a[:, None, 1, 0] * dx + a[:, None, 1, 1] * dy) + anchors[..., 1]
            x = np.floor(origin[..., 0] + extent[..., 0] * ux.astype(np.float64) + 0.5)
            y = np.floor(origin[..., 1] + extent[..., 1] * uy.astype(np.float64) + 0.5)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            lin = np.where(inside, y * w + x, 0).astype(np.intp)
            feats = np.where(inside, _gather_intensity(pixels, lin), 0).astype(np.float32)

            # Every split of every tree at once (7,500 comparisons cost less than four
            # rounds of small gathers), then the walk only reads outcomes: at node i a tree
            # goes to 2i+1 when the split says left, else to 2i+2.
            left = (feats[:, self._i1[level]] - feats[:, self._i2[level]]) > self._th[level]
            left = left.reshape(-1)
            node = np.zeros((n, self._n_trees), dtype=np.intp)
            for _ in range(self.depth):
                node = 2 * node + 2 - np.take(left, split_rows + node)
            leaf_rows = self._tree_leaf_base + (node - self._n_splits)
            vals = np.take(self._leaves_flat[level], leaf_rows, axis=0)  # (N, T, 2P)
            # dlib adds the trees' leaves one after another in float32. A reduction along an
            # axis that is not the fastest in memory adds in order (NumPy uses pairwise
            # summation only along the fast axis), as cumsum would, at half its cost.
            vals[:, 0] += cur.reshape(n, -1)
            cur = np.add.reduce(vals, axis=1, dtype=np.float32).reshape(n, -1, 2)
        out = np.floor(origin + extent * cur.astype(np.float64) + 0.5)
        return out.astype(np.float32)

    __call__ = predict


def _box_tuple(box: Box | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(box, Box):
        return box.as_tuple()
    left, top, right, bottom = (int(v) for v in box)
    return left, top, right, bottom


def _pixels(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The image as (H*W,) grey or (H*W, 3) RGB uint8 rows, plus its height and width."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img.reshape(-1), img.shape[0], img.shape[1]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3) uint8, got shape {img.shape}")
    return img.reshape(-1, 3), img.shape[0], img.shape[1]


def _gather_intensity(pixels: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """dlib's ``get_pixel_intensity`` at flat indices: grey value, or ``(R+G+B)//3`` for RGB."""
    if pixels.ndim == 1:
        return pixels[lin]
    return pixels[lin].sum(axis=-1, dtype=np.uint16) // 3
