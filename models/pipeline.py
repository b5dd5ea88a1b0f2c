"""The face pipeline façade: image -> faces (box, landmarks) -> aligned chips -> embeddings.

Every caller (the HTTP service, evaluation, training data preparation, the CLI) goes through
``FacePipeline`` so that all of them see the same detector settings, alignment and model
version. Detection and alignment are per image; embedding is batched across images and faces,
which is what the service's micro-batcher relies on (``embed_chips``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.align import FIVE_POINT_TEMPLATE, similarity_transform
from models.backends.geometry import ChipGeometry, GeometryError, align_chips, face_width
from models.detector import WINDOW_PX, detection_scale, load_detector
from models.device import resolve_device
from models.embedder import CHIP_SIZE
from models.embedding_model import EmbeddingModel, load_embedding_model
from models.faces import Box, Face
from models.landmarks import load_shape_predictor

__all__ = ["CHIP_FACE_PX", "MIN_FACE_PX_RANGE", "FacePipeline", "chip_face_px", "upsampling_for"]

CHIP_PADDING = 0.25  # dlib's padding for descriptor chips

# Images whose longer side is under this get a second detection at one more upsampling step
# when the first finds nothing: a phone's tight face crop (~100 px, face ~60 px) is under
# MMOD's ~80 px minimum, and on such small images the retry costs little (see README,
# "Faces that arrive already cropped").
SMALL_IMAGE_RETRY_PX = 300

# The smallest face a request may ask for (two upsamplings: 80/4 px; below that faces have
# too few pixels for the embedder) and the largest (beyond any photo the service accepts).
MIN_FACE_PX_RANGE = (20, 4096)


def upsampling_for(min_face_px: float) -> int:
    """How many 2x upsamplings bring faces of ``min_face_px`` up to the detector's window."""
    steps = 0
    while WINDOW_PX / 2**steps > min_face_px and steps < 2:
        steps += 1
    return steps


# The face's width in an aligned chip: the 5-point template spans 1/(1 + 2*padding) of it.
# A face decoded at least this wide loses nothing the chip would keep.
CHIP_FACE_PX = CHIP_SIZE / (1 + 2 * CHIP_PADDING)


def chip_face_px(geometry: ChipGeometry) -> float:
    """How wide the face (dlib's template unit square: the part a detector's box holds) is
    in ``geometry``'s chip: :data:`CHIP_FACE_PX` for dlib's 150 px chip, ~68 px for
    ArcFace's 112 px one (``models.backends.geometry.face_width``)."""
    return face_width(geometry)


# Where the MMOD box of the face sits in an image that is one cropped face (x0, y0, x1, y1
# as fractions of the width and height, end-exclusive): a crop padded by 35% of the box width
# on every side, as phone apps cut faces (models/evaluation/crops.py), has the detector's own
# box at pad / (1 + 2 pad) = 0.206 .. 0.794. Re-detecting 2,000 such LFW crops agrees within
# the detector's pyramid steps (its box widths come in steps of 5/6; `faceserve eval crops`
# reports the median box), and the chip-space box below corrects the rest.
FACE_CROP_BOX = (0.206, 0.206, 0.794, 0.794)
# The chip-space detection that confirms a face crop must be centred within this many chip
# pixels of the chip centre (a 150 px chip has the face's box at about its middle).
_CHIP_CENTRE_TOLERANCE = 25.0


class FacePipeline:
    """Loads the detector, landmark and embedding models once and runs them on one device.

    ``model`` picks the embedder: ``None``/``"dlib"`` for the published dlib ResNet, the path of
    a file written by ``faceserve export`` (detection and alignment stay dlib's, which is what
    such a model was trained on), or an ONNX model added with ``faceserve models add`` (a path,
    or its name in ``model_dir``), whose manifest says how its chips are cut
    (``models.backends.geometry``). ``detector``: ``None``/``"dlib"`` for dlib's MMOD and
    5-point predictor, or an added SCRFD model, which gives the five points (eye centres, nose
    tip, mouth corners) ArcFace chips are aligned on; a model whose template needs those points
    cannot run behind dlib's detector (``GeometryError`` says so), while dlib-chip models behind
    SCRFD get dlib's 5 points from its boxes. ``upsample`` doubles the photo before detection
    (finds faces below ~80 px, 4x slower); ``max_side`` shrinks very large photos before
    detection (boxes are mapped back), which bounds detection time and memory for 12-megapixel
    phone photos; ``min_face_px``, when set, replaces ``upsample``: the smallest face (box side,
    in the photo's pixels) that must be found; above the 80 px window the photo is shrunk so the
    scan starts at that size (``models.detector.detection_scale``), below it the photo is
    upsampled. SCRFD honours the same three: by default it sees the photo letterboxed to its
    input (640 px, faces from 16 px of it), ``upsample`` doubles that scale, ``min_face_px``
    sets it to bring faces of that size to its 16 px anchor, ``max_side`` caps it
    (``models.backends.scrfd.scan_scale``). ``flip`` averages each embedding with that of
    the mirrored chip.
    """

    chip_size = CHIP_SIZE

    def __init__(
        self,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        flip: bool = False,
        upsample: int = 0,
        max_side: int | None = 2048,
        batch_size: int = 64,
        model: str | Path | None = None,
        small_image_retry_px: int | None = SMALL_IMAGE_RETRY_PX,
        min_face_px: int | None = None,
        detector: str | Path | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        self.device = resolve_device(device)
        cache = Path(cache_dir) if cache_dir is not None else None
        self.model: EmbeddingModel = load_embedding_model(model, self.device, cache, model_dir)
        self.geometry = self.model.geometry
        self._chip_face_px = chip_face_px(self.geometry)  # per photo in decode_reduction
        self.chip_size = self.geometry.size
        self.landmark_scheme = self.geometry.landmarks
        self.detector_name = "dlib" if detector in (None, "", "dlib") else str(detector)
        if self.detector_name == "dlib":
            if self.geometry.landmarks != "dlib5":
                raise GeometryError(
                    f"model {self.model.name!r} aligns chips on eye centres, nose tip and "
                    "mouth corners, which dlib's 5-point predictor does not give: set "
                    "FACESERVE_DETECTOR to an SCRFD model added with `faceserve models add "
                    "FILE --preset scrfd`"
                )
            self.detector = load_detector(device=self.device, cache_dir=cache)
            self.detector_version = "dlib-mmod"
        else:
            from models.backends.onnx_file import resolve_model_file
            from models.backends.scrfd import load_scrfd

            path = resolve_model_file(detector, model_dir, "detector")  # type: ignore[arg-type]
            self.detector = load_scrfd(path, self.device)
            self.detector_version = self.detector.version
        # dlib's predictor: behind MMOD always; behind SCRFD for models cut on dlib's points.
        self.landmarker = (
            load_shape_predictor(cache_dir=cache) if self.landmark_scheme == "dlib5" else None
        )
        self.embedder = self.model.module
        self.model_version = self.model.version
        self.embedding_size = self.model.embedding_size
        self.model_manifest = self.model.manifest  # {} for the dlib model
        self.model_licence = self.model.licence
        self.flip = flip
        self.upsample = upsample
        self.max_side = max_side
        self.batch_size = batch_size
        self.small_image_retry_px = small_image_retry_px or 0
        self.min_face_px = min_face_px

    def _scan(self, min_face_px: int | None) -> tuple[int | None, int]:
        """The minimum face in force (the request's, else the pipeline's; None: neither)
        and the upsampling it needs (``upsample`` when no minimum is set)."""
        m = min_face_px if min_face_px is not None else self.min_face_px
        return m, self.upsample if m is None else upsampling_for(m)

    def smallest_face(self, min_face_px: int | None = None, width: int | None = None,
                      height: int | None = None) -> float:
        """The smallest face (px) a detection finds with this request's ``min_face_px``.

        MMOD: the minimum, else its 80 px window over the upsampling. SCRFD: its 16 px
        anchor over the scale it scans a ``width`` x ``height`` photo at
        (``models.backends.scrfd.scan_scale``), which depends on the photo unless the
        minimum is set (without a size: the minimum, else a 640 px photo's)."""
        m, upsample = self._scan(min_face_px)
        if self.detector_name != "dlib":
            from models.backends.scrfd import SCRFD_MIN_FACE_PX

            if width is None or height is None:
                if m is not None:
                    return float(m)
                width = height = self.detector.input_size
            scale = self.detector.scale_for(height, width, self.upsample, self.max_side, m)
            return SCRFD_MIN_FACE_PX / scale
        return float(m) if m is not None else WINDOW_PX / 2**upsample

    def decode_reduction(self, width: int, height: int, min_face_px: int | None = None) -> int:
        """How much smaller (1, 2, 4 or 8) a ``width`` x ``height`` photo may be decoded.

        Two conditions, so that nothing changes but the time: the detector must still get
        at least the size it scans (``detection_scale`` for MMOD, ``scan_scale`` for
        SCRFD), and the smallest face it must find must still be as wide as it is in the
        aligned chip (:func:`chip_face_px` of the model's geometry), so landmarks and chips
        are as sharp as from the full photo. A 4000x3000 JPEG with ``min_face_px=200`` is
        decoded at 2000x1500; at the defaults (faces from 80 px, ``max_side`` 2048) a photo
        is decoded whole.
        """
        m = self.smallest_face(min_face_px, width, height)
        if self.detector_name != "dlib":
            scan = self.detector.scale_for(height, width, self.upsample, self.max_side,
                                           self._scan(min_face_px)[0])
        else:
            _, upsample = self._scan(min_face_px)
            scan = detection_scale(height, width, self.max_side, m, upsample) * 2**upsample
        need = max(scan, self._chip_face_px / m)
        factor = 1
        while factor < 8 and 1.0 / (2 * factor) >= need:
            factor *= 2
        return factor

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list[Face]:
        """Faces with boxes, confidences and 5-point landmarks, most confident first.

        ``min_face_px`` overrides the pipeline's for this photo. A small image without a
        face is tried once more with one more upsampling step (``small_image_retry_px``):
        cheap there, and it is how tightly cropped faces below the detector's ~80 px
        minimum are found without upsampling every photo. A request that raised the
        minimum above the window gets no retry: it said small faces do not matter.
        """
        image = _as_rgb(image)
        if self.detector_name != "dlib":
            return self._scrfd_faces(image, self._scan(min_face_px)[0])
        boxes = self._boxes(image, self.small_image_retry_px, min_face_px)
        return self._with_landmarks(image, boxes)

    def _scrfd_faces(self, image: np.ndarray, min_face_px: int | None) -> list[Face]:
        """SCRFD's faces, scanned for ``min_face_px`` (None: the letterbox default)."""
        dets = self.detector.detect(image, upsample=self.upsample, max_side=self.max_side,
                                    min_face_px=min_face_px)
        if self.landmark_scheme == "arcface5":
            return [Face(box=b, confidence=c, landmarks=p) for b, c, p in dets]
        return self._with_landmarks(image, [(b, c) for b, c, _ in dets])

    def _boxes(
        self, image: np.ndarray, retry_below: int, min_face_px: int | None = None
    ) -> list[tuple[Box, float]]:
        m, upsample = self._scan(min_face_px)
        extra = {} if m is None else {"min_face_px": m}
        dets = self.detector.detect(image, upsample=upsample, max_side=self.max_side, **extra)
        shrunk = m is not None and m > WINDOW_PX / 2**upsample
        if not dets and not shrunk and max(image.shape[:2]) < retry_below:
            dets = self.detector.detect(image, upsample=upsample + 1, max_side=self.max_side)
        return dets

    def detect_face_crop(self, image: np.ndarray) -> list[Face]:
        """The face of an image that is one cropped face (``face_crop=true``), or ``[]`` when
        the image is not a face.

        No search: the face's box is taken where the detector puts it on a padded face crop
        (:data:`FACE_CROP_BOX`), the 5 landmarks are found in it and the face is aligned. The
        detector then runs once on that 150 px chip, where a face is ~100 px whatever the
        upload's size: a detection at the chip's centre confirms the face, and its box,
        mapped back into the image, replaces the assumed one (landmarks found again), so
        crops tighter or looser than assumed, and dlib-aligned chips, align as well as
        detected faces. When the chip shows no face (a bad first guess, or not a face),
        the detector on the whole image decides (with the small-image retry) and its largest
        face is the answer.
        """
        image = _as_rgb(image)
        if self.detector_name != "dlib":
            return self._scrfd_face_crop(image)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = FACE_CROP_BOX
        guess = Box(round(x0 * w), round(y0 * h), round(x1 * w) - 1, round(y1 * h) - 1)
        landmarks = self.landmarker.predict(image, [guess])[0]
        chip = self.align(image, [Face(box=guess, confidence=0.0, landmarks=landmarks)])[0]
        centre = CHIP_SIZE / 2.0
        confirmed = [
            (box, conf)
            for box, conf in self.detector.detect(chip)
            if abs((box.left + box.right + 1) / 2 - centre) <= _CHIP_CENTRE_TOLERANCE
            and abs((box.top + box.bottom + 1) / 2 - centre) <= _CHIP_CENTRE_TOLERANCE
        ]
        if confirmed:
            chip_box, conf = confirmed[0]
            box = _chip_box_to_image(chip_box, landmarks)
            return self._with_landmarks(image, [(box, conf)])
        # The small-image retry always applies here: a face crop is usually a small image.
        retry_below = max(self.small_image_retry_px, SMALL_IMAGE_RETRY_PX)
        faces = self._with_landmarks(image, self._boxes(image, retry_below))
        return [max(faces, key=lambda f: (f.box.area, f.confidence))] if faces else []

    def _scrfd_face_crop(self, image: np.ndarray) -> list[Face]:
        """SCRFD on a face crop: the photo as it is, then (a crop can be too tight for the
        detector) on a canvas with a 35% black margin on every side, mapped back; the
        largest face wins. Both at the letterbox scale whatever the minimum face in force:
        the crop's face fills it, so a minimum meant for photos would only lose it."""
        faces = self._scrfd_faces(image, None)
        if not faces:
            h, w = image.shape[:2]
            py, px = round(0.35 * h), round(0.35 * w)
            canvas = np.zeros((h + 2 * py, w + 2 * px, 3), np.uint8)
            canvas[py : py + h, px : px + w] = image
            faces = [
                Face(
                    box=Box(f.box.left - px, f.box.top - py, f.box.right - px,
                            f.box.bottom - py),
                    confidence=f.confidence,
                    landmarks=np.asarray(f.landmarks) - (px, py),
                )
                for f in self._scrfd_faces(canvas, None)
            ]
        return [max(faces, key=lambda f: (f.box.area, f.confidence))] if faces else []

    def _with_landmarks(self, image: np.ndarray, dets: list[tuple[Box, float]]) -> list[Face]:
        if not dets:
            return []
        assert self.landmarker is not None
        boxes = [box for box, _ in dets]
        points = self.landmarker.predict(image, boxes)
        return [
            Face(box=box, confidence=float(conf), landmarks=points[i])
            for i, (box, conf) in enumerate(dets)
        ]

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Aligned RGB chips as the model wants them (150x150 dlib chips by default, 112x112
        for the ArcFace family), one per face, all faces of the image in one call."""
        size = self.chip_size
        if not faces:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        landmarks = np.stack([np.asarray(f.landmarks, dtype=np.float64) for f in faces])
        chips = align_chips(_as_rgb(image), landmarks, self.geometry, device=self.device)
        return chips.cpu().numpy()

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """L2-normalised float32 embeddings ``(N, D)`` of aligned chips ``(N, S, S, 3)``."""
        chips = np.asarray(chips)
        size = self.chip_size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
            raise ValueError(f"chips must be (N, {size}, {size}, 3), got {chips.shape}")
        return self.model.embed_chips(chips, flip=self.flip, batch_size=self.batch_size)

    def embed(
        self,
        images: Sequence[np.ndarray],
        max_faces: int | None = None,
        min_face_px: int | None = None,
    ) -> list[list[Face]]:
        """Detect, align and embed every face of every image; one embedding pass for all."""
        per_image: list[list[Face]] = []
        chip_batches: list[np.ndarray] = []
        for image in images:
            faces = self.detect(image, min_face_px)
            if max_faces is not None:
                faces = faces[:max_faces]
            per_image.append(faces)
            chip_batches.append(self.align(image, faces))
        chips = (np.concatenate(chip_batches) if chip_batches
                 else np.zeros((0, self.chip_size, self.chip_size, 3)))
        vectors = self.embed_chips(chips.astype(np.uint8)) if len(chips) else None
        out: list[list[Face]] = []
        i = 0
        for faces in per_image:
            done = []
            for face in faces:
                assert vectors is not None
                done.append(
                    Face(
                        box=face.box,
                        confidence=face.confidence,
                        landmarks=face.landmarks,
                        embedding=vectors[i],
                        chip=chips[i],
                        model=self.model_version,
                    )
                )
                i += 1
            out.append(done)
        return out

    def embed_image(self, image: np.ndarray, max_faces: int | None = None) -> list[Face]:
        return self.embed([image], max_faces=max_faces)[0]


def _chip_box_to_image(chip_box: Box, landmarks: np.ndarray) -> Box:
    """A box found on the aligned chip of ``landmarks``, as a square box in the image: its
    centre through the chip's similarity transform, its width times the transform's scale."""
    template = (CHIP_PADDING + FIVE_POINT_TEMPLATE) / (2 * CHIP_PADDING + 1) * CHIP_SIZE
    m, t = similarity_transform(template, np.asarray(landmarks, np.float64)[None])
    centre = np.array([(chip_box.left + chip_box.right + 1) / 2,
                       (chip_box.top + chip_box.bottom + 1) / 2])
    cx, cy = m[0] @ centre + t[0]
    half = chip_box.width * float(np.sqrt(abs(np.linalg.det(m[0])))) / 2
    return Box(round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W) greyscale or (H, W, 3) RGB uint8; anything else is a caller bug."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    return np.ascontiguousarray(image)
