"""Chip geometry: what an embedder expects of an aligned face, and how to cut it.

An embedding network is trained on faces cut one particular way: a chip of a given size in
which five facial points land on a fixed template, with a given pixel normalisation and
colour order. Serving the network any other way gives vectors that mean little, so the
geometry is data of the weights (a preset or the ONNX manifest), read by the pipeline.

Two landmark schemes exist, because the two detectors give different points:

* ``dlib5`` (dlib's 5-point shape predictor): the image-right eye's outer and inner corner,
  the image-left eye's outer and inner corner, the base of the nose;
* ``arcface5`` (SCRFD, RetinaFace, InsightFace's models): the image-left eye centre, the
  image-right eye centre, the nose tip, the image-left and image-right mouth corner.

The ``dlib`` geometry is cut by :func:`models.align.extract_chips` (dlib's own chip code,
bit for bit); every other geometry by :func:`warp_chips`, a similarity transform fitted to
the template (Umeyama) and sampled bilinearly with pixel centres on integer coordinates,
as InsightFace's ``norm_crop`` (OpenCV's ``warpAffine``) does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.align import FIVE_POINT_TEMPLATE, extract_chips, similarity_transform

__all__ = [
    "ARCFACE",
    "ARCFACE_TEMPLATE_112",
    "DLIB",
    "GEOMETRY_PRESETS",
    "LANDMARK_SCHEMES",
    "ChipGeometry",
    "GeometryError",
    "align_chips",
    "eye_centres",
    "face_region",
    "face_width",
    "nose_point",
    "warp_chips",
]

LandmarkScheme = Literal["dlib5", "arcface5"]
LANDMARK_SCHEMES: dict[str, str] = {
    "dlib5": "eye corners (image-right eye outer, inner; image-left eye outer, inner) and the "
    "base of the nose, as dlib's 5-point shape predictor gives them",
    "arcface5": "eye centres (image-left, image-right), nose tip, mouth corners (image-left, "
    "image-right), as SCRFD and InsightFace's detectors give them",
}

# InsightFace's ``arcface_dst``: where the five arcface5 points land in a 112x112 chip.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

_DLIB_PADDING = 0.25  # models.pipeline.CHIP_PADDING


class GeometryError(ValueError):
    """A chip geometry that cannot be used (bad template, unknown scheme, bad numbers)."""


@dataclass(frozen=True)
class ChipGeometry:
    """How one embedder wants its faces: chip size, template, normalisation, colours.

    ``template``: where the five points of ``landmarks`` land, in chip pixels (pixel centres
    on integer coordinates). ``mean``/``std``: per channel, in the order the network reads
    the channels (``colour``), applied to 0..255 values: ``(x - mean) / std``.
    """

    name: str
    size: int
    template: tuple[tuple[float, float], ...]
    landmarks: LandmarkScheme
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour: Literal["RGB", "BGR"] = "RGB"

    def __post_init__(self) -> None:
        if self.landmarks not in LANDMARK_SCHEMES:
            raise GeometryError(f"unknown landmark scheme {self.landmarks!r} "
                                f"(known: {', '.join(LANDMARK_SCHEMES)})")
        if not 16 <= int(self.size) <= 1024:
            raise GeometryError(f"chip size {self.size} is outside 16..1024")
        t = np.asarray(self.template, dtype=np.float64)
        if t.shape != (5, 2) or not np.all(np.isfinite(t)):
            raise GeometryError("the template must be five (x, y) points")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise GeometryError("mean and std need three values each, std non-zero")
        if self.colour not in ("RGB", "BGR"):
            raise GeometryError(f"colour must be RGB or BGR, got {self.colour!r}")

    @property
    def template_array(self) -> np.ndarray:
        return np.asarray(self.template, dtype=np.float64)

    @property
    def chip_key(self) -> str:
        """What a stored chip depends on (size, template, landmark scheme; not the
        normalisation, which the network applies): chips are interchangeable between two
        models exactly when their keys are equal."""
        body = json.dumps([self.size, self.landmarks,
                           np.round(self.template_array, 3).tolist()])
        return f"{self.size}px-{self.landmarks}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "template": [list(p) for p in self.template],
            "landmarks": self.landmarks,
            "mean": list(self.mean),
            "std": list(self.std),
            "colour": self.colour,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChipGeometry:
        try:
            return cls(
                name=str(raw.get("name", "custom")),
                size=int(raw["size"]),
                template=tuple((float(x), float(y)) for x, y in raw["template"]),
                landmarks=raw["landmarks"],
                mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
                colour=raw.get("colour", "RGB"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GeometryError):
                raise
            raise GeometryError(f"bad chip geometry {raw!r}: {exc}") from None


def _dlib_template(size: int = 150, padding: float = _DLIB_PADDING) -> np.ndarray:
    return (padding + FIVE_POINT_TEMPLATE) / (2 * padding + 1) * size


# dlib's ResNet: 150x150 chips cut by dlib's get_face_chip (padding 0.25), (x - mean) / 256.
DLIB = ChipGeometry(
    name="dlib",
    size=150,
    template=tuple(map(tuple, _dlib_template().tolist())),  # type: ignore[arg-type]
    landmarks="dlib5",
    mean=(122.782, 117.001, 104.298),
    std=(256.0, 256.0, 256.0),
)
# The ArcFace family (InsightFace's buffalo packs, glint360k/ms1mv3 IResNets, MobileFaceNet):
# 112x112, the arcface_dst template, (x - 127.5) / 127.5, RGB.
ARCFACE = ChipGeometry(
    name="arcface",
    size=112,
    template=tuple(map(tuple, ARCFACE_TEMPLATE_112.tolist())),  # type: ignore[arg-type]
    landmarks="arcface5",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
)
GEOMETRY_PRESETS: dict[str, ChipGeometry] = {"dlib": DLIB, "arcface": ARCFACE}


def eye_centres(landmarks: np.ndarray, scheme: str = "dlib5") -> tuple[np.ndarray, np.ndarray]:
    """(image-right eye centre, image-left eye centre), each (N, 2), of (N, 5, 2) points."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be (N, 5, 2), got {pts.shape}")
    if scheme == "dlib5":
        return pts[:, 0:2].mean(axis=1), pts[:, 2:4].mean(axis=1)
    if scheme == "arcface5":
        return pts[:, 1], pts[:, 0]
    raise GeometryError(f"unknown landmark scheme {scheme!r}")


def nose_point(landmarks: np.ndarray, scheme: str = "dlib5") -> np.ndarray:
    """(N, 2): the nose point of the scheme (dlib: the base, arcface5: the tip)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return pts[:, 4] if scheme == "dlib5" else pts[:, 2]


# dlib's template eye centres (unit square): the reference for the face region below.
_DLIB_UNIT_EYES = np.stack(
    [FIVE_POINT_TEMPLATE[2:4].mean(axis=0), FIVE_POINT_TEMPLATE[0:2].mean(axis=0)]
)


def face_width(geometry: ChipGeometry) -> float:
    """Chip pixels across the face: the side of dlib's template unit square (what a
    detector's box holds) in this chip, by the similarity of :func:`face_region`: 100 for
    dlib's 150 px chip, ~67 for ArcFace's 112 px one."""
    right, left = eye_centres(geometry.template_array[None], geometry.landmarks)
    s0, s1 = (complex(*p) for p in _DLIB_UNIT_EYES)
    return abs((complex(*right[0]) - complex(*left[0])) / (s1 - s0))


def face_region(geometry: ChipGeometry, inset: float = 0.05) -> tuple[slice, slice]:
    """(rows, columns) of the chip that hold the face: dlib's template unit square, shrunk
    by ``inset`` of its side on each edge, mapped into this chip by the similarity that
    takes dlib's template eye centres onto this template's. For the dlib chip that is
    exactly its own square (pixels 30..119 of 150), for ArcFace's about 26..87 x 40..101 of
    112: the same part of the face, so quality measures mean the same under both."""
    right, left = eye_centres(geometry.template_array[None], geometry.landmarks)
    # The similarity through two point pairs, as complex numbers (Umeyama is ambiguous for
    # two points: it may pick the mirror image).
    s0, s1 = (complex(*p) for p in _DLIB_UNIT_EYES)
    d0, d1 = complex(*left[0]), complex(*right[0])
    z = (d1 - d0) / (s1 - s0)

    def to_chip(x: float, y: float) -> tuple[float, float]:
        c = d0 + z * (complex(x, y) - s0)
        return c.real, c.imag

    lo = to_chip(inset, inset)
    hi = to_chip(1 - inset, 1 - inset)
    size = geometry.size

    def span(a: float, b: float) -> slice:
        return slice(max(0, round(min(a, b))), min(size, round(max(a, b))))

    return span(lo[1], hi[1]), span(lo[0], hi[0])


def warp_chips(
    image: np.ndarray | torch.Tensor,
    landmarks: np.ndarray,
    geometry: ChipGeometry,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(N, S, S, 3)`` uint8 chips: each face's points moved onto ``geometry``'s template by
    the least-squares similarity (Umeyama), bilinear, black outside the image.

    Chip pixel ``(j, i)`` is image point ``M @ (j, i) + t``, the inverse of the similarity
    fitted from the landmarks to the template: InsightFace's ``norm_crop`` matrix, inverted
    as OpenCV's ``warpAffine`` does, on the same sampling grid (pixel centres on integers),
    so the chips match what the ArcFace family was trained on up to interpolation rounding.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    img = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
    dev = torch.device(device) if device is not None else img.device
    size = geometry.size
    if len(pts) == 0:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=dev)
    if img.ndim == 2:
        img = img.unsqueeze(-1).expand(-1, -1, 3)
    h, w = int(img.shape[0]), int(img.shape[1])
    # InsightFace's norm_crop fits landmarks -> template (least squares, Umeyama) and lets
    # warpAffine invert it; fitting the inverse direction would weigh the points otherwise.
    template = np.broadcast_to(geometry.template_array, pts.shape)
    m_fit, t_fit = similarity_transform(pts, template)  # image -> chip
    m = np.linalg.inv(m_fit)  # chip -> image
    t = -np.einsum("nij,nj->ni", m, t_fit)
    j = np.arange(size, dtype=np.float64)
    jj, ii = np.meshgrid(j, j)  # (S, S): column, row
    grid_pts = np.stack([jj, ii], axis=-1)  # (S, S, 2) x, y
    src = np.einsum("nab,ijb->nija", m, grid_pts) + t[:, None, None, :]  # (N, S, S, 2)
    # grid_sample with align_corners=True: -1 and +1 are the centres of the edge pixels.
    norm = np.empty_like(src)
    norm[..., 0] = src[..., 0] * 2.0 / max(w - 1, 1) - 1.0
    norm[..., 1] = src[..., 1] * 2.0 / max(h - 1, 1) - 1.0
    grid = torch.from_numpy(norm).to(dev, torch.float32)
    x = img.to(dev).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    x = x.expand(len(pts), -1, -1, -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def align_chips(
    image: np.ndarray,
    landmarks: np.ndarray,
    geometry: ChipGeometry,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The chips ``geometry`` wants: dlib's exact chip code for the dlib geometry, the
    similarity warp for every other."""
    if geometry.chip_key == DLIB.chip_key:
        return extract_chips(image, landmarks, size=DLIB.size, padding=_DLIB_PADDING,
                             device=device)
    return warp_chips(image, landmarks, geometry, device)
