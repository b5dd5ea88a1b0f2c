"""bf16 screening of the MMOD score map, with exact float32 scores where they decide anything.

On CPUs with bf16 matrix units (AMX, AVX512-BF16) the detector network runs about 3.6x
faster in bf16, but its scores move by up to ~0.04, enough to flip a window at the threshold
or reorder two neighbours in NMS (plain bf16 gives other boxes on 79 of 312 photos,
``bench_detect.py``).
So bf16 only *screens*: every window it scores below ``threshold - margin`` is no face (the
margin is several times the largest bf16 error seen on real photos, ``bench_detect.py``
reports it), and every other window is scored again in float32 from the pyramid, on a crop
just large enough that its scores equal the full float32 pass (``exact_scores``). The
candidates are the few windows around faces, so the float32 work is a small part of the
photo's; the boxes, their order and their confidences are the float32 detector's.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.cpu_share import rebalance

__all__ = [
    "DEFAULT_MARGIN",
    "ScreenedScorer",
    "bf16_is_fast",
    "candidate_rects",
    "crop_plan",
    "exact_scores",
]

# Windows the bf16 screen scores more than this below the threshold are not rescored. The
# largest |bf16 - float32| score difference on the group photos and 300 LFW photos is 0.042
# (bench_detect.py; a test keeps it under a third of this); 0.25 leaves a factor of six.
DEFAULT_MARGIN = 0.25
# Above this share of the score map in crops, one float32 pass over everything is cheaper.
_FULL_PASS_SHARE = 0.6


def bf16_is_fast() -> bool:
    """Whether this CPU computes bf16 convolutions natively (AMX tiles or AVX512-BF16);
    elsewhere oneDNN emulates bf16 and screening would be slower than float32."""
    cpu = torch.cpu
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def _geometry(net: nn.Module) -> tuple[dict[int, int], int, int, int]:
    """What cropping ``net``'s input must respect: the paddings of the same-size convolutions
    after the strided ones (by module id), the score-map cells of context a score needs on
    each side (their sum), the strided part's total stride, and the input pixels behind one
    feature cell (its receptive field)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    strided = [c for c in convs if c.stride != (1, 1)]
    if any(c.padding != (0, 0) for c in strided) or convs[: len(strided)] != strided:
        raise ValueError("screening needs unpadded strided convolutions first")
    pads = {id(c): int(c.padding[0]) for c in convs[len(strided) :]}
    stride, receptive = 1, 1
    for c in reversed(strided):
        receptive = (receptive - 1) * int(c.stride[0]) + int(c.kernel_size[0])
        stride *= int(c.stride[0])
    return pads, sum(pads.values()), stride, receptive


def candidate_rects(mask: Tensor, gap: int) -> np.ndarray:
    """Rectangles ``(r0, c0, r1, c1)`` (inclusive) covering every ``True`` cell of ``mask``;
    cells with at most ``gap`` empty cells between them share one rectangle (merging saves a
    crop's context)."""
    cells = mask.nonzero().cpu().numpy()
    if len(cells) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    rects = np.concatenate([cells, cells], axis=1).astype(np.int64)
    reach = gap + 1
    while True:
        merged: list[np.ndarray] = []
        free = np.ones(len(rects), dtype=bool)
        for i in range(len(rects)):
            if not free[i]:
                continue
            cur = rects[i].copy()
            while True:
                near = free & (rects[:, 0] <= cur[2] + reach) & (rects[:, 2] >= cur[0] - reach)
                near &= (rects[:, 1] <= cur[3] + reach) & (rects[:, 3] >= cur[1] - reach)
                if not near.any():
                    break
                free &= ~near
                group = rects[near]
                cur = np.array(
                    [
                        min(cur[0], group[:, 0].min()),
                        min(cur[1], group[:, 1].min()),
                        max(cur[2], group[:, 2].max()),
                        max(cur[3], group[:, 3].max()),
                    ]
                )
            merged.append(cur)
        if len(merged) == len(rects):
            return np.stack(merged)
        rects = np.stack(merged)


def _with_context(
    rect: tuple[int, int, int, int], context: int, map_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``rect`` (inclusive ``r0, c0, r1, c1``) grown by ``context`` cells on every side,
    clipped to the map: the cells a crop that scores ``rect`` exactly must hold."""
    r0, c0, r1, c1 = rect
    h, w = map_shape
    return (
        max(0, r0 - context),
        max(0, c0 - context),
        min(h - 1, r1 + context),
        min(w - 1, c1 + context),
    )


def exact_scores(
    net: nn.Module,
    tensor: Tensor,
    rect: tuple[int, int, int, int],
    map_shape: tuple[int, int],
    plan: tuple[list[nn.Module], dict[int, int], int, int, int] | None = None,
) -> Tensor:
    """float32 scores of the score-map cells ``rect`` (inclusive ``r0, c0, r1, c1``), equal to
    ``net(tensor)`` there, computed from a crop of ``tensor``.

    The strided convolutions have no padding, so a crop starting at a multiple of their
    stride gives exactly the full pass's features; each same-size convolution after them pads
    with zeros, which is right at the map's true border and wrong within ``padding`` cells of
    a crop edge. The crop therefore carries the paddings' sum of context on every side that
    is not the border, and each layer drops the cells its padding spoiled. ``plan``:
    ``crop_plan(net)``, computed once by callers that score many rectangles.
    """
    layers, pads, context, stride, receptive = plan if plan is not None else crop_plan(net)
    h, w = map_shape
    r0, c0, r1, c1 = rect
    top, left, bottom, right = _with_context(rect, context, map_shape)  # global cells x holds
    x = tensor[..., top * stride : bottom * stride + receptive,
               left * stride : right * stride + receptive]  # fmt: skip
    for module in layers:
        if isinstance(module, nn.Conv2d):
            rebalance()  # the cores this photo's stage may use now (models.cpu_share)
        pad = pads.get(id(module), 0)
        if not pad:
            x = module(x)
            continue
        # Cells within `pad` of a crop edge that is not the border would be spoiled: they
        # are dropped (what the later layers need lies further in), and a plain convolution
        # never computes them: it pads the true border only and convolves unpadded.
        dt = pad if top > 0 else 0
        db = pad if bottom < h - 1 else 0
        dl = pad if left > 0 else 0
        dr = pad if right < w - 1 else 0
        if type(module) is nn.Conv2d and dt + db + dl + dr:
            x = F.pad(x, (pad - dl, pad - dr, pad - dt, pad - db))
            x = F.conv2d(x, module.weight, module.bias, module.stride, 0, module.dilation,
                         module.groups)
        else:
            x = module(x)
            x = x[..., dt : x.shape[-2] - db, dl : x.shape[-1] - dr]
        top, bottom, left, right = top + dt, bottom - db, left + dl, right - dr
    return x[0, 0, r0 - top : r1 - top + 1, c0 - left : c1 - left + 1]


def crop_plan(net: nn.Module) -> tuple[list[nn.Module], dict[int, int], int, int, int]:
    """``net``'s layers in order (convolutions and activations, flattened), then what
    ``_geometry`` says of it: all that ``exact_scores`` needs to know of the network."""
    layers = [m for m in net.modules() if not list(m.children())]
    return (layers, *_geometry(net))


class ScreenedScorer:
    """Scores windows like ``net`` in float32, computing most of the map in bf16.

    ``scores(tensor, threshold)`` returns the full score map in which every cell at or above
    ``threshold - margin`` holds its float32 score; the rest hold bf16 scores, all below
    ``threshold`` by construction, so thresholding the map gives the float32 detector's
    windows and confidences.
    """

    def __init__(self, net: nn.Module, margin: float = DEFAULT_MARGIN) -> None:
        self.net = net
        self.margin = margin
        self._bf16 = copy.deepcopy(net).to(torch.bfloat16).to(memory_format=torch.channels_last)
        self._plan = crop_plan(net)
        self._context = self._plan[2]

    @torch.inference_mode()
    def scores(self, tensor: Tensor, threshold: float) -> Tensor:
        screen = self._bf16(tensor.to(torch.bfloat16))[0, 0].float()
        rects = candidate_rects(screen >= threshold - self.margin, self._context)
        if len(rects) == 0:
            return screen
        h, w = screen.shape
        crops = [_with_context(rect, self._context, (h, w)) for rect in rects.tolist()]
        area = sum((bottom - top + 1) * (right - left + 1) for top, left, bottom, right in crops)
        if area > _FULL_PASS_SHARE * h * w:
            return self.net(tensor)[0, 0]
        for r0, c0, r1, c1 in rects.tolist():
            screen[r0 : r1 + 1, c0 : c1 + 1] = exact_scores(
                self.net, tensor, (r0, c0, r1, c1), (h, w), self._plan
            )
        return screen
