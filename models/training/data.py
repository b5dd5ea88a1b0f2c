"""Training data: identity folders -> aligned 150x150 chips (cached) -> augmented batches.

``DIR/<identity>/<photo>``: one sub-folder per person. A photo that is already a 150x150
image is taken as an aligned chip; any other photo is aligned **once** by the face pipeline
(detect, 5 landmarks, dlib chip) and the chip cached under the SHA-256 of the photo's bytes
plus the alignment version, so a second run (or another run on overlapping folders) does
not detect again. Photos in which no face is found are listed and skipped (also cached).

Augmentation suits faces: horizontal flips (faces are roughly symmetric, and the service may
average flipped embeddings), a small scale and shift jitter (the aligner's landmark noise),
small brightness, contrast and saturation changes (lighting). No vertical flips and no
large rotations: an aligned face is always upright, and learning invariance to that would only
waste capacity.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "ALIGN_VERSION",
    "CHIP_SIZE",
    "AugmentConfig",
    "ChipCache",
    "FaceChips",
    "augment_batch",
    "choose_face",
    "prepare_chips",
    "scan_identities",
    "split_identities",
    "to_input",
]

CHIP_SIZE = 150
# Part of every cache key: bump when detection or alignment changes what a chip looks like.
ALIGN_VERSION = "dlib-mmod+5pt/chip150-pad0.25/v1"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def scan_identities(root: str | Path) -> dict[str, list[Path]]:
    """``{identity: [photo paths]}`` from ``root/<identity>/*``, both sorted; hidden entries
    and non-image files are ignored. Raises if there is nothing to train on."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} does not exist")
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if photos:
            out[folder.name] = photos
    if not out:
        raise ValueError(f"{root} holds no identity sub-folders with images")
    return out


@dataclass
class FaceChips:
    """Aligned chips in memory: ``chips`` (N,150,150,3) uint8, ``labels`` (N,) into ``names``."""

    chips: np.ndarray
    labels: np.ndarray
    names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.names))
        return {name: int(c[i]) for i, name in enumerate(self.names)}

    def select(
        self, names: Sequence[str], max_per_identity: int | None = None, seed: int = 0
    ) -> FaceChips:
        """The chips of ``names`` (relabelled 0..len-1 in the given order); optionally at most
        ``max_per_identity`` of each, chosen with ``seed``."""
        index = {name: i for i, name in enumerate(self.names)}
        rng = np.random.default_rng(seed)
        picked: list[np.ndarray] = []
        new_labels: list[np.ndarray] = []
        for new, name in enumerate(names):
            rows = np.flatnonzero(self.labels == index[name])
            if max_per_identity is not None and len(rows) > max_per_identity:
                rows = np.sort(rng.choice(rows, size=max_per_identity, replace=False))
            picked.append(rows)
            new_labels.append(np.full(len(rows), new, dtype=np.int64))
        rows = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        return FaceChips(
            chips=self.chips[rows],
            labels=np.concatenate(new_labels) if new_labels else np.zeros(0, dtype=np.int64),
            names=list(names),
            paths=[self.paths[i] for i in rows],
        )


@dataclass
class PreparedData:
    chips: FaceChips
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    given_as_chips: int = 0
    aligned_now: int = 0
    from_cache: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "identities": len(self.chips.names),
            "images": len(self.chips),
            "given_as_chips": self.given_as_chips,
            "aligned_now": self.aligned_now,
            "from_cache": self.from_cache,
            "no_face": len(self.no_face),
            "unreadable": len(self.unreadable),
        }


class ChipCache:
    """Content-addressed chips: ``<root>/<k[:2]>/<k>.png`` (lossless), ``<k>.noface`` markers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(data: bytes) -> str:
        h = hashlib.sha256(ALIGN_VERSION.encode())
        h.update(b"\0")
        h.update(data)
        return h.hexdigest()

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> np.ndarray | bool | None:
        """The chip, ``False`` if no face was found before, ``None`` if never seen."""
        png = self._path(key, ".png")
        if png.is_file():
            with Image.open(png) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        if self._path(key, ".noface").is_file():
            return False
        return None

    def put(self, key: str, chip: np.ndarray | None) -> None:
        target = self._path(key, ".png" if chip is not None else ".noface")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        if chip is None:
            tmp.write_bytes(b"")
        else:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(chip)).save(buf, format="PNG", compress_level=1)
            tmp.write_bytes(buf.getvalue())
        tmp.replace(target)  # atomic: a killed run never leaves a half-written chip


def choose_face(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int) -> int:
    """Which detected face is the identity's: among faces at least half as large (by area) as
    the largest, the one nearest the photo centre. Folder photos show their person large and
    central (LFW's deep-funneled images are centred on theirs), bystanders small or aside."""
    areas = [max(r - x0 + 1, 0) * max(b - y0 + 1, 0) for x0, y0, r, b in boxes]
    big = max(areas)
    cx, cy = (width - 1) / 2, (height - 1) / 2

    def off_centre(i: int) -> float:
        x0, y0, x1, y1 = boxes[i]
        return math.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy)

    candidates = [i for i, a in enumerate(areas) if a >= 0.5 * big]
    return min(candidates, key=off_centre)


def prepare_chips(
    root: str | Path,
    cache_dir: str | Path,
    pipeline_factory: Callable[[], Any] | None = None,
    progress: bool = True,
    max_images_per_identity: int | None = None,
    seed: int = 0,
) -> PreparedData:
    """Load every identity's chips, aligning (and caching) raw photos through the pipeline.

    ``pipeline_factory`` builds a ``FacePipeline`` (default: CPU-or-GPU ``FacePipeline()``);
    it is only called if some photo is not yet in the cache, so cached runs never load the
    detector. ``max_images_per_identity`` caps very large identities (seeded choice) before
    any alignment work.
    """
    from models.imageio import ImageError, decode_image

    identities = scan_identities(root)
    cache = ChipCache(cache_dir)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, Path]] = []
    for name, photos in identities.items():
        if max_images_per_identity is not None and len(photos) > max_images_per_identity:
            keep = np.sort(rng.choice(len(photos), max_images_per_identity, replace=False))
            photos = [photos[i] for i in keep]
        jobs.extend((name, p) for p in photos)

    pipeline = None
    out = PreparedData(chips=_empty_chips())
    chips: list[np.ndarray] = []
    owners: list[str] = []
    paths: list[str] = []
    bar = _progress(jobs, progress, "aligning")
    for name, path in bar:
        try:
            data = path.read_bytes()
        except OSError:
            out.unreadable.append(str(path))
            continue
        key = cache.key(data)
        cached = cache.get(key)
        if cached is False:
            out.no_face.append(str(path))
            continue
        if cached is not None:
            chip = cached
            out.from_cache += 1
        else:
            try:
                image = decode_image(data)
            except ImageError:
                out.unreadable.append(str(path))
                continue
            if image.shape[:2] == (CHIP_SIZE, CHIP_SIZE):
                chip = image
                out.given_as_chips += 1
            else:
                if pipeline is None:
                    pipeline = (pipeline_factory or _default_pipeline)()
                chip = _align_one(pipeline, image)
                cache.put(key, chip)
                if chip is None:
                    out.no_face.append(str(path))
                    continue
                out.aligned_now += 1
        chips.append(chip)
        owners.append(name)
        paths.append(str(path))

    names = sorted(set(owners))
    index = {n: i for i, n in enumerate(names)}
    out.chips = FaceChips(
        chips=np.stack(chips) if chips else _empty_chips().chips,
        labels=np.asarray([index[o] for o in owners], dtype=np.int64),
        names=names,
        paths=paths,
    )
    return out


def _empty_chips() -> FaceChips:
    empty = np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    return FaceChips(empty, np.zeros(0, np.int64), [], [])


def _default_pipeline() -> Any:
    from models.pipeline import FacePipeline

    return FacePipeline()


def _align_one(pipeline: Any, image: np.ndarray) -> np.ndarray | None:
    faces = pipeline.detect(image)
    if not faces:
        return None
    h, w = image.shape[:2]
    best = choose_face([f.box.as_tuple() for f in faces], w, h)
    return np.asarray(pipeline.align(image, [faces[best]])[0], dtype=np.uint8)


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", leave=False)


def split_identities(
    names: Sequence[str], val_fraction: float, seed: int, counts: dict[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """Seeded split *by identity*: a person is never on both sides.

    Validation takes ``round(val_fraction * n)`` (at least 2) of the ``n`` identities with two
    or more images, so each gives genuine pairs. Identities with a single image cannot train
    (no positive pair); they join the validation side as extra impostors.
    """
    names = sorted(names)
    counts = counts or {n: 2 for n in names}
    rng = np.random.default_rng([seed, 0x5EED])
    usable = [n for n in names if counts[n] >= 2]
    singles = [n for n in names if counts[n] < 2]
    if val_fraction <= 0:
        return usable, []
    n_val = max(2, round(val_fraction * len(usable)))
    if len(usable) - n_val < 2:
        raise ValueError(
            f"{len(usable)} identities with 2+ images are too few to hold out {n_val} for "
            "validation and still train on 2+; add identities or lower --val-fraction"
        )
    order = rng.permutation(len(usable))
    val = sorted([usable[i] for i in order[:n_val]] + singles)
    train = sorted(usable[i] for i in order[n_val:])
    return train, val


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 0.06  # zoom factor in [1 - scale, 1 + scale]
    shift: float = 0.03  # translation, fraction of the chip side
    brightness: float = 0.2  # multiplicative, [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2


def to_input(chips: torch.Tensor | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B,150,150,3) chips -> float (B,3,150,150) pixel values 0..255 (the model input)."""
    x = torch.as_tensor(np.asarray(chips) if not torch.is_tensor(chips) else chips)
    return x.to(device).permute(0, 3, 1, 2).float().contiguous()


def augment_batch(
    chips: torch.Tensor | np.ndarray,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Augmented model input (B,3,150,150) float 0..255 from uint8 chips (B,150,150,3).

    Every random number comes from ``generator`` (on the CPU), so a batch is reproducible
    from the generator's seed whatever the device.
    """
    x = to_input(chips, device)
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(b, generator=generator)).to(x.device)

    flip = (torch.rand(b, generator=generator) < config.flip).to(x.device)
    zoom = uniform(1 - config.scale, 1 + config.scale)
    tx = uniform(-2 * config.shift, 2 * config.shift)  # grid units: the side is 2 long
    ty = uniform(-2 * config.shift, 2 * config.shift)
    bright = uniform(1 - config.brightness, 1 + config.brightness)
    contrast = uniform(1 - config.contrast, 1 + config.contrast)
    sat = uniform(1 - config.saturation, 1 + config.saturation)

    # Horizontal flip folded into the affine map (negative x scale); y is never mirrored.
    sx = torch.where(flip, -1.0, 1.0).to(x.dtype) / zoom
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = grey + sat[:, None, None, None] * (x - grey)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = mean + contrast[:, None, None, None] * (x - mean)
    x = x * bright[:, None, None, None]
    return x.clamp_(0.0, 255.0)
