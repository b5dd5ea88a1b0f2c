"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) in PyTorch.

The network is small (six 5x5 conv+BN+ReLU layers and a 9x9 score conv); what makes dlib's
boxes come out is everything around it, reproduced here step by step so that the same
photo gives the same boxes and scores as ``dlib.cnn_face_detection_model_v1``:

1. all pyramid levels (each 5/6 of the last) are tiled into **one** padded image, so one
   forward pass scans every scale (``pyramid_layout``/``build_pyramid``);
2. every score-map position above the threshold is an 80x80 window, mapped back through
   the level it lies in (``scores_to_boxes``);
3. dlib's greedy NMS, whose "IoU" divides by the enclosing rectangle (``models.boxes``).

On CPUs with bf16 units step 2 scores the pyramid in bf16 first and only the windows near the
threshold in float32 (``models.detector_screening``): the same boxes and confidences, in less
than half the time.

``upsample=n`` doubles the photo n times first with a bit-exact copy of dlib's
``pyramid_up`` (so small faces are found exactly where dlib finds them); ``max_side``
shrinks large photos first, which bounds time and memory.
Layouts and semantics: ``../shared/notes/dlib-models.md`` section 3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.boxes import dlib_nms
from models.cpu_share import rebalance
from models.detector_screening import ScreenedScorer, bf16_is_fast
from models.device import resolve_device
from models.dlib_format import DlibFormatError, DnnLayer, check_finite, read_dnn
from models.faces import Box
from models.weights import dlib_model_path, load_converted

__all__ = [
    "WINDOW_PX",
    "DetectorConfig",
    "FaceDetector",
    "MMODNet",
    "TapSumConv",
    "build_pyramid",
    "convert_dlib",
    "detection_scale",
    "dlib_pyramid_up",
    "load_detector",
    "pyramid_layout",
    "scores_to_boxes",
]

# (out_channels, in_channels, kernel, stride, padding) of the conv+BN+ReLU layers, then of
# the score conv; the converter checks the file against exactly this.
_FEATURE_CONVS = (
    (16, 3, 5, 2, 0),
    (32, 16, 5, 2, 0),
    (32, 32, 5, 2, 0),
    (45, 32, 5, 1, 2),
    (45, 45, 5, 1, 2),
    (45, 45, 5, 1, 2),
)
_SCORE_CONV = (1, 45, 9, 1, 4)
_PYRAMID_RATE = 5.0 / 6.0  # dlib's pyramid_down<6>: (N-1.0)/N
# The network's window: the smallest face the pyramid's first level finds (mmod's 80x80).
WINDOW_PX = 80
# Windows scoring above this are faces (dlib's default): every reported confidence is a raw
# MMOD score > 0, with no upper bound (faces of ordinary photos ~0.95-1.15; training margin 1).
DETECTION_THRESHOLD = 0.0
_MIN_LEVEL_HEIGHT = 5


def _output_to_input_affine() -> tuple[int, int]:
    """Score-map position p lies at input-tensor position ``a*p + b`` (composing, from the
    output back, ``p*stride - pad + k//2`` for each conv, as dlib does)."""
    a, b = 1, 0
    for _, _, k, s, pad in reversed((*_FEATURE_CONVS, _SCORE_CONV)):
        a, b = a * s, b * s - pad + k // 2
    return a, b


_STRIDE, _OFFSET = _output_to_input_affine()  # (8, 14)


def _min_input_side() -> int:
    """Smallest tensor side for which every conv still has at least one output."""
    n = 1
    for _, _, k, s, pad in reversed((*_FEATURE_CONVS, _SCORE_CONV)):
        n = (n - 1) * s + k - 2 * pad
    return n


_MIN_TENSOR_SIDE = _min_input_side()


# ------------------------------------------------------------------------------------ network


class TapSumConv(nn.Conv2d):
    """A same-size convolution with few output channels, as one matrix product and a fold.

    oneDNN computes a convolution with one output channel (MMOD's 9x9 score layer) at a few
    GFLOP/s: on a 250x250 photo it took 3.5 ms of the ~22 ms float32 pass for 1.5% of the
    arithmetic. Here every input cell is first multiplied by all the kernel's taps at once
    (a 1x1 product to ``out * k * k`` planes, a matrix product at full speed), and the planes
    are then summed at their taps' offsets by ``F.fold`` (kernel flipped, since fold scatters
    where a convolution gathers), in float32 whatever the input's type: 3.5x faster, equal
    to ``nn.Conv2d`` to float32 rounding (the sums run in another order).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 padding: int) -> None:
        if kernel_size != 2 * padding + 1:
            raise ValueError("TapSumConv is a same-size convolution: kernel = 2 * padding + 1")
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.kernel_size[0]
        taps = self.weight.flip(2, 3).permute(1, 0, 2, 3).reshape(c, -1)  # (C, out*k*k)
        cells = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when channels-last
        planes = (cells @ taps).reshape(n, h * w, -1).transpose(1, 2).float()
        out = F.fold(planes, (h, w), k, padding=self.padding)
        assert self.bias is not None
        return out.add_(self.bias.float().view(1, -1, 1, 1)).to(x.dtype)


class MMODNet(nn.Module):
    """The 19-layer detector CNN with its batch norms folded into the convolutions.

    Input: ``(N, 3, H, W)`` float, already normalised (``(pixel - mean) / 256``, RGB) and
    usually the tiled pyramid. Output: ``(N, 1, h, w)`` raw detection scores; position
    ``(r, c)`` is the 80x80 window centred at input pixel ``(8c + 14, 8r + 14)``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for out_c, in_c, k, s, pad in _FEATURE_CONVS:
            layers += [nn.Conv2d(in_c, out_c, k, stride=s, padding=pad), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        out_c, in_c, k, s, pad = _SCORE_CONV
        assert s == 1
        self.score = TapSumConv(in_c, out_c, k, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                rebalance()  # a long photo takes the cores other stages leave it, as they go
            x = layer(x)
        rebalance()
        return self.score(x)


# ---------------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class DetectorConfig:
    """The non-weight settings stored in the dlib file, kept with the converted weights."""

    avg_rgb: tuple[float, float, float]
    pyramid_padding: int = 10
    pyramid_outer_padding: int = 11
    window: tuple[int, int] = (80, 80)  # width, height
    nms_iou: float = 0.3382761351109955
    nms_percent_covered: float = 1.0

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "config.avg_rgb": np.asarray(self.avg_rgb, dtype=np.float32),
            "config.pyramid_padding": np.asarray(
                [self.pyramid_padding, self.pyramid_outer_padding], dtype=np.int64
            ),
            "config.window": np.asarray(self.window, dtype=np.int64),
            "config.nms": np.asarray([self.nms_iou, self.nms_percent_covered], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Tensor | np.ndarray]) -> DetectorConfig:
        def get(key: str) -> np.ndarray:
            value = arrays[key]
            return value.numpy() if isinstance(value, Tensor) else np.asarray(value)

        avg = get("config.avg_rgb").astype(np.float32)
        pad, outer = (int(v) for v in get("config.pyramid_padding"))
        w, h = (int(v) for v in get("config.window"))
        iou, covered = (float(v) for v in get("config.nms"))
        return cls((float(avg[0]), float(avg[1]), float(avg[2])), pad, outer, (w, h), iou, covered)


_DETECTOR = "dlib's MMOD CNN face detector (mmod_human_face_detector.dat)"


def _not_detector(path: Path, why: str) -> DlibFormatError:
    return DlibFormatError(str(path), None, _DETECTOR, why)


def _check_conv(path: Path, layer: DnnLayer, spec: tuple[int, int, int, int, int], i: int) -> None:
    out_c, in_c, k, s, pad = spec
    f = layer.fields
    got = (f["num_filters"], f["filters"][1], f["nr"], f["nc"], f["stride_y"], f["stride_x"],
           f["padding_y"], f["padding_x"], f["use_bias"], f["use_relu"])  # fmt: skip
    want = (out_c, in_c, k, k, s, s, pad, pad, True, False)
    if got != want:
        raise _not_detector(path, f"conv {i} is {got}, expected {want}")
    assert layer.params is not None
    if layer.params.size != out_c * in_c * k * k + out_c:
        raise _not_detector(path, f"conv {i} has {layer.params.size} parameters")


def convert_dlib(path: str | Path) -> dict[str, np.ndarray]:
    """Read the dlib file into MMODNet's state dict (``net.*``) plus ``config.*`` arrays.

    dlib stores the batch norms in training form (``bn_con2``); at inference it uses them as
    a per-channel affine ``g = gamma/sqrt(var+eps)``, ``b = beta - g*mean``, which we fold
    into the preceding conv (in float64) so the forward pass is convs and ReLUs only.
    """
    path = Path(path)
    try:
        net = read_dnn(path)
    except DlibFormatError as exc:
        raise exc.for_model(_DETECTOR) from exc
    if net.loss.kind != "loss_mmod":
        raise _not_detector(path, f"loss layer is {net.loss.version!r}, not loss_mmod_")
    if net.input.version not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise _not_detector(path, f"input layer is {net.input.version!r}")
    layers = net.real_layers()
    kinds = [layer.kind for layer in layers]
    expected = ["con", "bn_con", "relu"] * len(_FEATURE_CONVS) + ["con"]
    if kinds != expected:
        raise _not_detector(path, f"layer kinds {kinds}")

    out: dict[str, np.ndarray] = {}
    # Corrupt weights or statistics (signalling NaN, negative variance, huge values) give
    # NaN/inf here; check_finite reports them below instead of numpy warnings.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for i, spec in enumerate(_FEATURE_CONVS):
            con, bn = layers[3 * i], layers[3 * i + 1]
            _check_conv(path, con, spec, i)
            out_c, in_c, k, _, _ = spec
            assert con.params is not None and bn.params is not None
            p = con.params.reshape(-1).astype(np.float64)
            weight = p[: out_c * in_c * k * k].reshape(out_c, in_c, k, k)
            bias = p[out_c * in_c * k * k :]
            bnp = bn.params.reshape(-1).astype(np.float64)
            if bnp.size != 2 * out_c:
                raise _not_detector(path, f"batch norm {i} has {bnp.size} parameters")
            gamma, beta = bnp[:out_c], bnp[out_c:]
            mean = bn.fields["running_means"].reshape(-1).astype(np.float64)
            var = bn.fields["running_variances"].reshape(-1).astype(np.float64)
            if mean.size != out_c or var.size != out_c:
                raise _not_detector(path, f"batch norm {i} has {mean.size}/{var.size} statistics")
            g = gamma / np.sqrt(var + float(bn.fields["eps"]))
            shift = beta - g * mean
            out[f"net.features.{2 * i}.weight"] = (weight * g[:, None, None, None]).astype(
                np.float32
            )
            out[f"net.features.{2 * i}.bias"] = (bias * g + shift).astype(np.float32)
    score = layers[-1]
    _check_conv(path, score, _SCORE_CONV, len(_FEATURE_CONVS))
    out_c, in_c, k, _, _ = _SCORE_CONV
    assert score.params is not None
    p = score.params.reshape(-1)
    out["net.score.weight"] = p[: out_c * in_c * k * k].reshape(out_c, in_c, k, k).copy()
    out["net.score.bias"] = p[out_c * in_c * k * k :].copy()

    opts = net.loss.fields
    if (opts["window_width"], opts["window_height"]) != (80, 80):
        raise _not_detector(path, f"detector window {opts['window_width']}x{opts['window_height']}")
    config = DetectorConfig(
        avg_rgb=tuple(float(v) for v in net.input.fields["avg_rgb"]),  # type: ignore[arg-type]
        pyramid_padding=int(net.input.fields["pyramid_padding"]),
        pyramid_outer_padding=int(net.input.fields["pyramid_outer_padding"]),
        window=(int(opts["window_width"]), int(opts["window_height"])),
        nms_iou=float(opts["nms_iou_thresh"]),
        nms_percent_covered=float(opts["nms_percent_covered_thresh"]),
    )
    check_finite(out, str(path), _DETECTOR)
    out |= config.to_arrays()
    return out


# ------------------------------------------------------------------------------------- pyramid


def pyramid_layout(
    height: int, width: int, padding: int = 10, outer_padding: int = 11
) -> tuple[np.ndarray, int, int]:
    """Where dlib's tiled pyramid puts each level: ``(rects (L, 4) int64, NR, NC)``.

    ``rects`` are inclusive ``(left, top, right, bottom)`` in the tiled image. Levels run
    down the left column, then the rest come back up the right side until one would touch
    level 0; those that do not fit are dropped (as in dlib).
    """
    if height * width == 0:
        return np.zeros((0, 4), dtype=np.int64), 0, 0
    sizes = [(height, width)]
    h, w = height, width
    while True:
        h, w = math.floor(_PYRAMID_RATE * h), math.floor(_PYRAMID_RATE * w)
        if h * w == 0 or h < _MIN_LEVEL_HEIGHT:
            break
        sizes.append((h, w))

    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    column_height, prev_width = 0, 0
    for h, w in sizes:
        if w <= width - prev_width - padding and (column_height - height) * 2 >= (
            total_height - height
        ):
            break
        column_height += h + padding
        prev_width = w
    column_height -= padding
    nr, nc = column_height + 2 * outer_padding, width + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    i = 0
    while y < column_height + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    l0, t0, r0, b0 = rects[0]
    while i < len(sizes):
        h, w = sizes[i]
        right, bottom = outer_padding + width - 1, y - 1
        left, top = right - (w - 1), bottom - (h - 1)
        if max(l0, left) <= min(r0, right) and max(t0, top) <= min(b0, bottom):
            break
        rects.append((left, top, right, bottom))
        y -= h + padding
        i += 1
    return np.asarray(rects, dtype=np.int64).reshape(-1, 4), nr, nc


def build_pyramid(
    image: Tensor, avg_rgb: Tensor, padding: int = 10, outer_padding: int = 11
) -> tuple[Tensor, np.ndarray]:
    """The network input for one ``(H, W, 3)`` image: ``((1, 3, NR, NC) float32, rects)``,
    channels-last.

    Level 0 is ``(pixel - mean)/256``; each further level is an align-corners bilinear
    resize of the **previous level** in that normalised float domain (dlib resizes the
    tensor, not the photo). The background is 0, i.e. the mean colour.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    rects, nr, nc = pyramid_layout(height, width, padding, outer_padding)
    # Built channels-last (the layout the network runs in): the photo's (H, W, 3) rows copy
    # straight in and the resizes take the fast kernel, 1.45x faster, the same values.
    pixels = torch.zeros((1, nr, nc, 3), dtype=torch.float32, device=image.device)
    tensor = pixels.permute(0, 3, 1, 2)
    if len(rects) == 0:
        return tensor, rects
    l0, t0 = int(rects[0, 0]), int(rects[0, 1])
    level0 = pixels[0, t0 : t0 + height, l0 : l0 + width]
    level0.copy_(image)
    level0.sub_(avg_rgb.to(image.device, torch.float32)).div_(256.0)
    for prev, cur in itertools.pairwise(rects):
        pl, pt, pr, pb = (int(v) for v in prev)
        cl, ct, cr, cb = (int(v) for v in cur)
        src = tensor[:, :, pt : pb + 1, pl : pr + 1]
        tensor[:, :, ct : cb + 1, cl : cr + 1] = F.interpolate(
            src, size=(cb - ct + 1, cr - cl + 1), mode="bilinear", align_corners=True
        )
    return tensor, rects


def _lround(values: np.ndarray) -> np.ndarray:
    """C's ``lround``: nearest integer, halves away from zero (exact, no ``x+0.5`` error)."""
    whole = np.trunc(values)
    frac = values - whole
    return (whole + np.where(np.abs(frac) >= 0.5, np.sign(frac), 0.0)).astype(np.int64)


def scores_to_boxes(
    rows: np.ndarray,
    cols: np.ndarray,
    rects: np.ndarray,
    window: tuple[int, int] = (80, 80),
) -> np.ndarray:
    """Score-map positions -> integer image boxes ``(P, 4)`` int64, as dlib's ``to_label``.

    Each position is the window centred at ``(8c+14, 8r+14)`` in the tiled tensor; the level
    is the first rect containing that centre (else the nearest one); the box is moved to
    that level's origin and scaled up level-many times with ``p*6/5 + 0.3``.
    """
    x = cols.astype(np.float64) * _STRIDE + _OFFSET
    y = rows.astype(np.float64) * _STRIDE + _OFFSET
    half_w, half_h = (window[0] - 1) / 2.0, (window[1] - 1) / 2.0
    corners = np.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=1)
    # Level lookup on the window centre (integer here, as dlib rounds it to a point).
    cx, cy = np.floor(x + 0.5)[:, None], np.floor(y + 0.5)[:, None]
    left, top, right, bottom = (rects[None, :, j].astype(np.float64) for j in range(4))
    inside = (left <= cx) & (cx <= right) & (top <= cy) & (cy <= bottom)
    dx = np.clip(cx, left, right) - cx
    dy = np.clip(cy, top, bottom) - cy
    nearest = np.argmin(np.sqrt(dx * dx + dy * dy), axis=1)
    level = np.where(inside.any(axis=1), inside.argmax(axis=1), nearest)
    origin = rects[level][:, [0, 1, 0, 1]].astype(np.float64)
    corners = corners - origin
    up = 6 / (6 - 1.0)
    for step in range(int(level.max(initial=0))):
        sel = level > step
        corners[sel] = corners[sel] * up + 0.3
    return _lround(corners)


# ----------------------------------------------------------------------------- image helpers


def dlib_pyramid_up(image: Tensor) -> Tensor:
    """2x upsample ``(H, W, 3)`` uint8 -> ``(2H+1, 2W+2, 3)`` uint8, bit-exact with dlib.

    dlib's ``pyramid_up`` (used by ``detect(img, n)``) takes the size from
    ``pyramid_down<2>::rect_up`` and resizes with its SSE bilinear routine: columns stepped
    in float32 4 at a time, rows in double, float32 weights, truncation to uint8, and a
    double-precision tail for the last few columns. Copying that arithmetic keeps
    upsampled detections identical to dlib's (a plain 2x bilinear shifts them by a pixel).
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    out_h, out_w = 2 * h + 1, 2 * w + 2
    device = image.device
    if h * w == 0:
        return image.new_zeros((0, 0, 3))

    y_scale = (h - 1) / max(out_h - 1, 1)
    y = np.cumsum(np.concatenate([[-y_scale], np.full(out_h, y_scale)]))[1:]
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, h - 1)
    tb = y - top

    x_scale = (w - 1) / max(out_w - 1, 1)
    x0 = -4 * x_scale
    lanes = np.asarray([x0, x0 + x_scale, x0 + 2 * x_scale, x0 + 3 * x_scale]).astype(np.float32)
    n_blocks = out_w // 4 + 2
    steps = np.concatenate(
        [lanes[None, :], np.full((n_blocks, 4), np.float32(4 * x_scale), dtype=np.float32)]
    )
    xs = np.cumsum(steps, axis=0, dtype=np.float32)[1:]  # sequential float32 adds, as SSE
    left = xs.astype(np.int64)  # truncation (_mm_cvttps_epi32)
    lr = (xs - left.astype(np.float32)).astype(np.float32)
    stop = int(np.argmax(left[:, 3] + 1 >= w))  # the SSE loop breaks before this block
    n_simd = 4 * stop
    left_s = left[:stop].reshape(-1)
    lr_s = lr[:stop].reshape(-1)

    img = image.to(torch.float32)
    t_top = torch.from_numpy(top).to(device)
    t_bot = torch.from_numpy(bottom).to(device)
    out = torch.empty((out_h, out_w, 3), dtype=torch.uint8, device=device)
    if n_simd:
        tb32 = torch.from_numpy(tb.astype(np.float32)).to(device)[:, None, None]
        itb32 = torch.from_numpy((1 - tb).astype(np.float32)).to(device)[:, None, None]
        lr32 = torch.from_numpy(lr_s).to(device)[None, :, None]
        ilr32 = 1 - lr32
        cl = torch.from_numpy(left_s).to(device)
        cr = cl + 1
        rows_t, rows_b = img[t_top], img[t_bot]
        acc = (itb32 * ilr32) * rows_t[:, cl]
        acc += (itb32 * lr32) * rows_t[:, cr]
        acc += (tb32 * ilr32) * rows_b[:, cl]
        acc += (tb32 * lr32) * rows_b[:, cr]
        out[:, :n_simd] = acc.to(torch.uint8)  # float -> uint8 truncates, like cvttps
        del acc, rows_t, rows_b
    if n_simd < out_w:
        first = -x_scale + n_simd * x_scale
        xt = np.cumsum(np.concatenate([[first], np.full(out_w - n_simd, x_scale)]))[1:]
        lt = np.floor(xt).astype(np.int64)
        rt = np.minimum(lt + 1, w - 1)
        fr = torch.from_numpy(xt - lt).to(device)[None, :, None]
        tb64 = torch.from_numpy(tb).to(device)[:, None, None]
        img64 = image.to(torch.float64)
        ltt, rtt = torch.from_numpy(lt).to(device), torch.from_numpy(rt).to(device)
        upper = (1 - fr) * img64[t_top][:, ltt] + fr * img64[t_top][:, rtt]
        lower = (1 - fr) * img64[t_bot][:, ltt] + fr * img64[t_bot][:, rtt]
        out[:, n_simd:] = ((1 - tb64) * upper + tb64 * lower).to(torch.uint8)
    return out


def _downscale(image: Tensor, scale: float, through_float: bool = False) -> Tensor:
    """Antialiased bilinear shrink of ``(H, W, 3)`` uint8 by ``scale`` (< 1), in uint8.

    torch's uint8 kernel reads the photo as it is: no float copy of a 12-megapixel photo
    (four times its size), and 10x faster than converting first. It rounds differently
    from a float resize in the last bit of some pixels, which moves no box by more than the
    pyramid's own rounding. CUDA has no uint8 kernel for it: there the photo is resized in
    float32 and rounded back (``through_float``), which gives the same pixels to within 1.
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = image.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    if through_float or x.device.type != "cpu":
        x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True,
                          align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    else:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0)


def detection_scale(
    height: int, width: int, max_side: int | None, min_face_px: float | None, upsample: int = 0
) -> float:
    """The factor (<= 1) a photo is shrunk by before its pyramid is scanned.

    The pyramid finds faces from the network's window (80 px, halved by each upsampling)
    upwards; a face smaller than ``min_face_px`` need not be found, so the photo is shrunk
    until ``min_face_px`` *is* the window and the scan starts there: the cost falls with the
    square of the factor. ``max_side`` caps the longer side as before.
    """
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
    reach = WINDOW_PX / 2**upsample
    if min_face_px is not None and min_face_px > reach:
        scale = min(scale, reach / min_face_px)
    return scale


def _as_image(image: np.ndarray | Tensor, device: torch.device) -> Tensor:
    """``(H, W, 3)`` uint8 RGB tensor on ``device``; grayscale is replicated to 3 channels."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype}")
        if not image.flags.writeable:  # torch.from_numpy wants a writable buffer
            image = np.array(image)
        t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype}")
        t = image
    else:
        raise TypeError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    if t.ndim == 3 and t.shape[2] == 1:
        t = t[:, :, 0]
    if t.ndim == 2:
        t = t[:, :, None].expand(-1, -1, 3)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grayscale, got {tuple(t.shape)}")
    return t.to(device)


# ------------------------------------------------------------------------------------ detector


class FaceDetector:
    """Finds faces like ``dlib.cnn_face_detection_model_v1(path)(image, upsample)``.

    ``screening``: score the pyramid in bf16 first and only the windows near the threshold
    in float32 (``models.detector_screening``: same boxes and confidences, 2-4x less time);
    ``None`` turns it on where the CPU has bf16 matrix units.
    """

    def __init__(
        self,
        net: MMODNet,
        config: DetectorConfig,
        device: torch.device,
        screening: bool | None = None,
    ) -> None:
        # Channels-last: oneDNN's convolutions run 1.4x faster on it on a CPU, with scores
        # equal to 1e-5 (benchmarks/bench_detect.py), so the boxes do not change.
        self.net = net.to(device).eval().to(memory_format=torch.channels_last)
        self.config = config
        self.device = device
        self._avg = torch.tensor(config.avg_rgb, dtype=torch.float32, device=device)
        if screening is None:
            screening = device.type == "cpu" and bf16_is_fast()
        self.screener = ScreenedScorer(self.net) if screening else None

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Tensor | np.ndarray],
        device: str | torch.device | None = None,
        screening: bool | None = None,
    ) -> FaceDetector:
        net = MMODNet()
        state = {
            k[len("net.") :]: torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v)
            for k, v in arrays.items()
            if k.startswith("net.")
        }
        net.load_state_dict(state)
        return cls(net, DetectorConfig.from_arrays(arrays), resolve_device(device), screening)

    def _pyramid(self, image: Tensor) -> tuple[Tensor | None, np.ndarray]:
        """The network's channels-last input for ``image``, or ``None`` when the pyramid is
        smaller than the network's receptive field (no window fits)."""
        c = self.config
        tensor, rects = build_pyramid(image, self._avg, c.pyramid_padding, c.pyramid_outer_padding)
        if min(tensor.shape[-2:]) < _MIN_TENSOR_SIDE:
            return None, rects
        return tensor.contiguous(memory_format=torch.channels_last), rects

    @torch.inference_mode()
    def score_map(self, image: Tensor) -> tuple[Tensor, np.ndarray]:
        """Raw float32 ``(h, w)`` scores over the tiled pyramid of an ``(H, W, 3)`` uint8 image."""
        tensor, rects = self._pyramid(image)
        if tensor is None:
            return torch.zeros((0, 0), device=self.device), rects
        return self.net(tensor)[0, 0], rects

    @torch.inference_mode()
    def _thresholded(self, image: Tensor, threshold: float) -> tuple[Tensor, np.ndarray]:
        """The score map, float32 wherever the detector could keep a window (screened:
        below ``threshold`` elsewhere, see ``models.detector_screening``)."""
        if self.screener is None:
            return self.score_map(image)
        tensor, rects = self._pyramid(image)
        if tensor is None:
            return torch.zeros((0, 0), device=self.device), rects
        return self.screener.scores(tensor, threshold), rects

    @torch.inference_mode()
    def detect(
        self,
        image: np.ndarray | Tensor,
        upsample: int = 0,
        max_side: int | None = None,
        threshold: float = DETECTION_THRESHOLD,
        min_face_px: float | None = None,
    ) -> list[tuple[Box, float]]:
        """Faces in an ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grayscale) image.

        ``upsample``: double the image that many times first (finds faces down to about
        40/20 px instead of 80 px, at 4x/16x the cost). ``max_side``: shrink the image first
        so its longer side is at most this. ``min_face_px``: faces smaller than this (box
        side, in the caller's pixels) need not be found, so the photo is shrunk until it
        is the window (``detection_scale``); ``None`` or a size the scan reaches anyway
        changes nothing. ``threshold``: minimum raw score (dlib uses 0).
        Boxes are in the caller's pixel coordinates, may extend past the border, and come
        sorted by confidence, best first.
        """
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        img = _as_image(image, self.device)
        orig_h, orig_w = int(img.shape[0]), int(img.shape[1])
        if orig_h * orig_w == 0:
            return []
        if min_face_px is not None and min_face_px <= 0:
            raise ValueError(f"min_face_px must be positive, got {min_face_px}")
        scale = detection_scale(orig_h, orig_w, max_side, min_face_px, upsample)
        if scale < 1.0:
            img = _downscale(img, scale)
        small_h, small_w = int(img.shape[0]), int(img.shape[1])
        for _ in range(upsample):
            img = dlib_pyramid_up(img)

        scores, rects = self._thresholded(img, threshold)
        keep_mask = scores > threshold
        positions = keep_mask.nonzero().cpu().numpy()
        values = scores[keep_mask].float().cpu()
        if len(positions) == 0:
            return []
        boxes = scores_to_boxes(positions[:, 0], positions[:, 1], rects, self.config.window)
        keep = dlib_nms(
            torch.from_numpy(boxes),
            values,
            self.config.nms_iou,
            self.config.nms_percent_covered,
        ).numpy()
        boxes, conf = boxes[keep], values.numpy()[keep]

        if upsample:
            corners = boxes.astype(np.float64)
            for _ in range(upsample):  # dlib's pyramid_down<2>::point_down, then one lround
                corners = corners / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
            boxes = _lround(corners)
        if (small_h, small_w) != (orig_h, orig_w):
            sx, sy = orig_w / small_w, orig_h / small_h
            scaled = boxes.astype(np.float64) * np.array([sx, sy, sx, sy])
            # left/top edges scale directly; right/bottom are inclusive, so scale r+1.
            scaled[:, 2:] = (boxes[:, 2:] + 1) * np.array([sx, sy])
            boxes = _lround(scaled) - np.array([0, 0, 1, 1])
        return [(Box(*(int(v) for v in box)), float(c)) for box, c in zip(boxes, conf, strict=True)]


def load_detector(
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    screening: bool | None = None,
) -> FaceDetector:
    """The dlib MMOD detector on ``device`` (CUDA when available), converted once and cached;
    ``screening`` as in :class:`FaceDetector`."""
    arrays = load_converted(
        "detector",
        dlib_model_path("detector"),
        convert_dlib,
        Path(cache_dir) if cache_dir is not None else None,
    )
    return FaceDetector.from_arrays(arrays, device, screening)
