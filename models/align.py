"""Face-chip alignment: 5 landmarks -> the 150x150 chip the dlib ResNet embedder expects.

This reproduces ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` (dlib's
``get_face_chip_details`` + ``extract_image_chips``; ``../shared/notes/dlib-models.md`` §5):

1. **Chip details** (float64, CPU, per face): the Umeyama similarity from dlib's 5-point
   template (scaled into chip pixels with the padding) to the landmarks gives an angle and
   a scale; the chip rectangle is ``centered_drect(T(S/2, S/2), S*scale, S*scale)``.
2. **Crop**: dlib works in a sub-image: the rotated chip rectangle grown by ``grow`` pixels
   (2, or ``2*grow+2`` per pyramid level), clipped to the image, corners rounded with
   ``lround``. Sample coordinates are relative to that crop and the bilinear validity rule
   applies to the crop's bounds.
3. **Large faces**: while ``rect_down(rect)`` (corners ``p/2 - (1.25, 0.75)``) still has an
   area above ``S*S``, the chip is taken from a ``pyramid_down<2>`` level of the crop instead
   (separable [1,4,6,4,1] filter, integer sums divided by 256 with truncation, output
   ``(n-3)//2`` per side, only the valid part), with the rectangle mapped down the same way.
4. **Sampling**: chip pixel (col j, row i) maps to ``M @ (j, i) + TL``, where the columns of
   ``M`` are ``(TR-TL)/(S-1)`` and ``(BL-TL)/(S-1)`` (the rectangle's rotated corners), i.e.
   corner to corner. Bilinear in float64; the pixel is 0 unless all four neighbours lie in
   the crop; each channel is truncated to uint8.

Each face gets its own crop, exactly as ``dlib.get_face_chip`` does for one face (dlib's
multi-face ``get_face_chips`` crops the union of all faces, which changes pyramid-level
pixels slightly; single-face semantics keep a face's chip independent of the other faces).

The sampling runs with torch on any device, every face of the image in one batched gather
(``grid_sample`` is not used: its border handling differs from dlib's).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.device import resolve_device

__all__ = [
    "FIVE_POINT_TEMPLATE",
    "ChipDetails",
    "chip_details",
    "chip_details_from_transform",
    "chip_sampling",
    "extract_chips",
    "pyramid_down",
    "similarity_transform",
]

# dlib's 5-point reference positions in [0, 1] (x, y), same point order as the predictor.
FIVE_POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``x -> M @ x + t`` taking ``src`` points to ``dst`` points.

    Umeyama's method as in dlib's ``find_similarity_transform`` (float64, with its reflection
    rule). ``src``: (P, 2) or (N, P, 2); ``dst``: (N, P, 2). Returns ``M`` (N, 2, 2) and
    ``t`` (N, 2).
    """
    dst = np.asarray(dst, dtype=np.float64)
    src = np.broadcast_to(np.asarray(src, dtype=np.float64), dst.shape)
    n_pts = dst.shape[-2]
    mean_src = src.mean(axis=-2)
    mean_dst = dst.mean(axis=-2)
    ds = src - mean_src[:, None]
    dd = dst - mean_dst[:, None]
    sigma_src = (ds * ds).sum(axis=(-2, -1)) / n_pts
    cov = np.einsum("npi,npj->nij", dd, ds) / n_pts
    u, d, vt = np.linalg.svd(cov)
    det_cov = np.linalg.det(cov)
    flip = (det_cov < 0) | ((det_cov == 0) & (np.linalg.det(u) * np.linalg.det(vt) < 0))
    s = np.ones((dst.shape[0], 2))
    smaller_second = d[:, 1] < d[:, 0]
    s[flip & smaller_second, 1] = -1.0
    s[flip & ~smaller_second, 0] = -1.0
    r = np.einsum("nij,nj,njk->nik", u, s, vt)
    safe_sigma = np.where(sigma_src != 0, sigma_src, 1.0)
    c = np.where(sigma_src != 0, (d * s).sum(axis=1) / safe_sigma, 1.0)
    m = c[:, None, None] * r
    t = mean_dst - np.einsum("nij,nj->ni", m, mean_src)
    return m, t


@dataclass(frozen=True)
class ChipDetails:
    """dlib's ``chip_details``: a rotated rectangle (l, t, r, b; float) and an output size."""

    left: float
    top: float
    right: float
    bottom: float
    angle: float
    size: int  # chip is size x size

    @property
    def rect(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.right, self.bottom)


def chip_details_from_transform(m: np.ndarray, t: np.ndarray, size: int) -> ChipDetails:
    """Chip rectangle and angle of the similarity ``chip pixel -> image`` (``M``, ``t``)."""
    m00, m01, m10, m11 = (float(v) for v in np.asarray(m, dtype=np.float64).reshape(4))
    t0, t1 = (float(v) for v in np.asarray(t, dtype=np.float64).reshape(2))
    # p = M @ (1, 0): angle and scale of the similarity.
    angle = math.atan2(m10, m00)
    scale = math.sqrt(m00 * m00 + m10 * m10)
    half = size / 2.0
    cx = (m00 * half + m01 * half) + t0
    cy = (m10 * half + m11 * half) + t1
    extent = size * scale - 1.0  # centered_drect: width - 1
    return ChipDetails(
        cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2, angle, int(size)
    )


def chip_details(
    landmarks: np.ndarray | torch.Tensor, size: int = 150, padding: float = 0.25
) -> list[ChipDetails]:
    """dlib's ``get_face_chip_details`` for each face of ``landmarks`` (N, 5, 2).

    ``padding`` is rounded to float32 first, as dlib's Python API does (exact for 0.25).
    """
    pts = _as_landmarks(landmarks)
    if size < 2:
        raise ValueError(f"chip size must be at least 2, got {size}")
    pad = float(np.float32(padding))
    if pad < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    template = ((pad + FIVE_POINT_TEMPLATE) / (2 * pad + 1)) * float(size)
    if len(pts) == 0:
        return []
    m, t = similarity_transform(template, pts)
    return [chip_details_from_transform(m[i], t[i], size) for i in range(len(pts))]


# ------------------------------------------------------------------------------------------
# dlib geometry helpers (scalar float64, the same operation order as dlib)
# ------------------------------------------------------------------------------------------

_Rect = tuple[float, float, float, float]


def _rect_down(r: _Rect) -> _Rect:
    """``pyramid_down<2>::rect_down``: both corners mapped with ``p/2 - (1.25, 0.75)``."""
    return (r[0] / 2.0 - 1.25, r[1] / 2.0 - 0.75, r[2] / 2.0 - 1.25, r[3] / 2.0 - 0.75)


def _area(r: _Rect) -> float:
    """``drectangle::area``: ``(r-l+1)*(b-t+1)``, 0 for an empty rectangle."""
    if r[1] > r[3] or r[0] > r[2]:
        return 0.0
    return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)


def _rotated_corners(r: _Rect, angle: float) -> list[tuple[float, float]]:
    """tl, tr, bl, br of ``r`` rotated by ``angle`` about its centre (``rotate_point``)."""
    cx = (r[0] + r[2]) / 2.0
    cy = (r[1] + r[3]) / 2.0
    s, c = math.sin(angle), math.cos(angle)
    out = []
    for x, y in ((r[0], r[1]), (r[2], r[1]), (r[0], r[3]), (r[2], r[3])):
        dx, dy = x - cx, y - cy
        out.append((c * dx - s * dy + cx, s * dx + c * dy + cy))
    return out


def _lround(v: float) -> int:
    """C ``lround``: halves away from zero."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


@dataclass(frozen=True)
class _Plan:
    """Where and how one chip is sampled."""

    basic: bool  # dlib's plain-copy branch (angle 0, rect exactly size x size)
    crop: tuple[int, int, int, int] | None  # integer sub-image (l, t, r, b) in the image
    level: int  # -1 = the crop itself, k >= 0 = k+1 times pyramid_down of the crop
    m: tuple[float, float, float, float]  # chip (j, i) -> source: (m00, m01, m10, m11)
    b: tuple[float, float]  # ... + (b0, b1), in the coordinates of the source image


def chip_sampling(det: ChipDetails, height: int, width: int) -> _Plan:
    """dlib's ``extract_image_chips`` bookkeeping for one chip in an ``height x width`` image."""
    size = det.size
    n_out = float(size * size)
    rect: _Rect = det.rect

    if (
        det.angle == 0
        and not (rect[1] > rect[3] or rect[0] > rect[2])
        and rect[3] - rect[1] + 1 == size
        and rect[2] - rect[0] + 1 == size
    ):
        # Plain copy of the integer rectangle (lround of each side), zero outside the image.
        left, top = _lround(rect[0]), _lround(rect[1])
        return _Plan(True, None, -1, (1.0, 0.0, 0.0, 1.0), (float(left), float(top)))

    # Pyramid depth and crop margin (first loop of extract_image_chips).
    depth, grow = 0, 2.0
    down = _rect_down(rect)
    while _area(down) > n_out:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2
    corners = _rotated_corners(rect, det.angle)
    xs = [p[0] for p in corners]
    ys = [p[1] for p in corners]
    gl, gt = max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0)
    gr, gb = min(max(xs) + grow, float(width - 1)), min(max(ys) + grow, float(height - 1))
    crop = (_lround(gl), _lround(gt), _lround(gr), _lround(gb))
    if crop[0] > crop[2] or crop[1] > crop[3]:
        crop = None  # nothing of the chip is in the image: all black
        ox, oy = 0, 0
    else:
        ox, oy = crop[0], crop[1]

    # Level choice (second loop), in crop coordinates.
    local: _Rect = (rect[0] - ox, rect[1] - oy, rect[2] - ox, rect[3] - oy)
    level = -1
    while _area(_rect_down(local)) > n_out:
        level += 1
        local = _rect_down(local)
    level = min(level, depth - 1)  # dlib builds `depth` levels (equal except in fp corner cases)

    tl, tr, bl, _ = _rotated_corners(local, det.angle)
    k = float(size - 1)
    m = ((tr[0] - tl[0]) / k, (bl[0] - tl[0]) / k, (tr[1] - tl[1]) / k, (bl[1] - tl[1]) / k)
    return _Plan(False, crop, level, m, (tl[0], tl[1]))


# ------------------------------------------------------------------------------------------
# pyramid_down<2> and the batched bilinear gather (torch)
# ------------------------------------------------------------------------------------------


def pyramid_down(img: torch.Tensor) -> torch.Tensor:
    """dlib's ``pyramid_down<2>`` of an (H, W, C) integer image; returns int32 (h, w, C).

    Separable [1, 4, 6, 4, 1] filter over the valid part only, every other row and column,
    ``(n - 3) // 2`` outputs per side, the 2-D integer sum divided by 256 (truncating).
    Images with a side of 8 or less give an empty result, as in dlib.
    """
    h, w = img.shape[0], img.shape[1]
    if h <= 8 or w <= 8:
        return img.new_zeros((0, 0, img.shape[2]), dtype=torch.int32)
    x = img.to(torch.int32)
    nc, nr = (w - 3) // 2, (h - 3) // 2

    def taps(a: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        def s(k: int) -> torch.Tensor:
            return a.narrow(dim, k, 2 * n - 1)[(slice(None),) * dim + (slice(None, None, 2),)]

        return s(0) + 4 * s(1) + 6 * s(2) + 4 * s(3) + s(4)

    rows = taps(x, nc, 1)  # (h, nc, C)
    return torch.div(taps(rows, nr, 0), 256, rounding_mode="floor")


def _bilinear(
    src: torch.Tensor,
    base: torch.Tensor,
    stride: torch.Tensor,
    bounds: torch.Tensor,
    origin: torch.Tensor,
    m: torch.Tensor,
    b: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Sample ``size x size`` chips for a group of faces from one flat pixel buffer.

    ``src``: (K, C) uint8 pixel rows. Per face: ``base`` (flat offset of its source image),
    ``stride`` (source row length), ``bounds`` (width, height a sample's 2x2 neighbourhood
    must fit in, measured from the crop corner), ``origin`` (x, y of the crop corner in the
    source), ``m`` (2, 2) and ``b`` (2,): chip (col, row) -> crop coordinates.
    Returns (N, size, size, C) uint8.
    """
    dev = src.device
    n = m.shape[0]
    channels = src.shape[1]
    j = torch.arange(size, device=dev, dtype=torch.float64).view(1, 1, size)
    i = torch.arange(size, device=dev, dtype=torch.float64).view(1, size, 1)
    mm = m.view(n, 4, 1, 1)
    # dlib: (m*p) + b, with m*p = m00*c + m01*r
    x = (mm[:, 0] * j + mm[:, 1] * i) + b[:, 0].view(n, 1, 1)
    y = (mm[:, 2] * j + mm[:, 3] * i) + b[:, 1].view(n, 1, 1)
    x0f, y0f = torch.floor(x), torch.floor(y)
    lr = (x - x0f).reshape(-1)
    tb = (y - y0f).reshape(-1)
    x0, y0 = x0f.to(torch.int64), y0f.to(torch.int64)
    valid = (
        (x0 >= 0)
        & (y0 >= 0)
        & (x0 + 1 < bounds[:, 0].view(n, 1, 1))
        & (y0 + 1 < bounds[:, 1].view(n, 1, 1))
    )
    # Flat index of the top-left neighbour (clamped so the gather never leaves the buffer;
    # invalid samples are zeroed afterwards).
    st = stride.view(n, 1, 1)
    top_left = (
        base.view(n, 1, 1)
        + (y0 + origin[:, 1].view(n, 1, 1)) * st
        + (x0 + origin[:, 0].view(n, 1, 1))
    ).reshape(-1)
    stv = st.expand(n, size, size).reshape(-1)
    last = src.shape[0] - 1
    idx = torch.stack([top_left, top_left + 1, top_left + stv, top_left + stv + 1]).clamp_(0, last)
    # (4, M, C) -> (4, C, M) float64, contiguous so that per-sample weights broadcast cheaply.
    g = src.index_select(0, idx.reshape(-1)).view(4, -1, channels).transpose(1, 2)
    g = g.to(torch.float64, memory_format=torch.contiguous_format)
    tl, tr, bl, br = g[0], g[1], g[2], g[3]
    one_lr, one_tb = 1 - lr, 1 - tb
    # dlib's expression, term by term in float64:
    #   (1-tb)*((1-lr)*tl + lr*tr) + tb*((1-lr)*bl + lr*br)
    tl.mul_(one_lr).add_(tr.mul_(lr)).mul_(one_tb)
    bl.mul_(one_lr).add_(br.mul_(lr)).mul_(tb)
    val = tl.add_(bl).to(torch.uint8)  # truncation, as static_cast<unsigned char>
    val.mul_(valid.reshape(1, -1).to(torch.uint8))
    return val.view(channels, n, size, size).permute(1, 2, 3, 0).contiguous()


def extract_chips(
    image: np.ndarray | torch.Tensor,
    landmarks: np.ndarray | torch.Tensor | Sequence,
    size: int = 150,
    padding: float = 0.25,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Aligned face chips ``(N, size, size, 3)`` uint8 on ``device``, as dlib.get_face_chip.

    ``image``: (H, W, 3) RGB (or (H, W) grey, replicated to 3 channels) uint8, NumPy or torch.
    ``landmarks``: (N, 5, 2) dlib 5-point landmarks (x, y) in image pixels. ``device``:
    ``None`` uses the image tensor's device, or the default device for a NumPy image.
    """
    if device is None and isinstance(image, torch.Tensor):
        dev = image.device
    else:
        dev = resolve_device(device)
    if isinstance(image, torch.Tensor):
        img = image
    else:
        arr = np.asarray(image)
        with warnings.catch_warnings():  # read-only arrays are fine: the image is never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            img = torch.as_tensor(arr)
    if img.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img.unsqueeze(-1).expand(-1, -1, 3)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {tuple(img.shape)}")
    img = img.to(dev).contiguous()
    height, width = int(img.shape[0]), int(img.shape[1])

    details = chip_details(landmarks, size=size, padding=padding)
    n = len(details)
    if n == 0:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=dev)
    plans = [chip_sampling(d, height, width) for d in details]

    flat = img.view(-1, 3)
    out = torch.zeros((n, size, size, 3), dtype=torch.uint8, device=dev)
    direct = [k for k, p in enumerate(plans) if p.basic or (p.crop is not None and p.level < 0)]
    pyr = [k for k, p in enumerate(plans) if not p.basic and p.crop is not None and p.level >= 0]

    if direct:
        rows = []
        for k in direct:
            p = plans[k]
            if p.basic:
                # plain copy: lr = tb = 0 gives exactly the top-left pixel; a pixel is valid
                # when it lies inside the image, hence bounds one larger than the image.
                rows.append((0, width, width + 1, height + 1, 0, 0))
            else:
                cl, ct, cr, cb = p.crop  # type: ignore[misc]
                rows.append((0, width, cr - cl + 1, cb - ct + 1, cl, ct))
        out[direct] = _run(flat, rows, [plans[k] for k in direct], size, dev)

    if pyr:
        buffers, rows, offset = [], [], 0
        for k in pyr:
            p = plans[k]
            cl, ct, cr, cb = p.crop  # type: ignore[misc]
            level_img = img[ct : cb + 1, cl : cr + 1]
            for _ in range(p.level + 1):
                level_img = pyramid_down(level_img)
            lh, lw = int(level_img.shape[0]), int(level_img.shape[1])
            buffers.append(level_img.reshape(-1, 3).to(torch.uint8))
            rows.append((offset, lw, lw, lh, 0, 0))
            offset += lh * lw
        src = torch.cat(buffers) if offset else flat.new_zeros((1, 3))
        if offset == 0:
            rows = [(0, 0, 0, 0, 0, 0) for _ in rows]
        out[pyr] = _run(src, rows, [plans[k] for k in pyr], size, dev)
    return out


def _run(
    src: torch.Tensor, rows: list[tuple[int, ...]], plans: list[_Plan], size: int, dev: torch.device
) -> torch.Tensor:
    geo = torch.tensor(rows, dtype=torch.int64, device=dev)  # base, stride, w, h, ox, oy
    m = torch.tensor([p.m for p in plans], dtype=torch.float64, device=dev)
    b = torch.tensor([p.b for p in plans], dtype=torch.float64, device=dev)
    if src.shape[0] == 0:
        src = src.new_zeros((1, src.shape[1]))
    return _bilinear(src, geo[:, 0], geo[:, 1], geo[:, 2:4], geo[:, 4:6], m, b, size)


def _as_landmarks(landmarks: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
    if isinstance(landmarks, torch.Tensor):
        landmarks = landmarks.detach().cpu().numpy()
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim == 2 and pts.shape == (5, 2):
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (5, 2):
        if pts.size == 0:
            return np.zeros((0, 5, 2))
        raise ValueError(f"landmarks must be (N, 5, 2), got shape {pts.shape}")
    return pts
