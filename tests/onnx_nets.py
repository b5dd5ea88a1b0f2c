"""Tiny networks with the contracts of the ArcFace family and SCRFD, exported to ONNX.

No real weights can be downloaded here, so the ONNX path is tested on random-weight
networks of the same shape: an IResNet-style embedder (conv stem, BN-conv-BN-PReLU-conv-BN
residual blocks, BN-flatten-linear-BN head: ``(N, 3, 112, 112) -> (N, D)``) and an
SCRFD-style detector (a strided backbone, a shared head per stride giving 2 anchors' score,
box distances and five points: nine outputs ``(K, 1)``, ``(K, 4)``, ``(K, 10)`` at strides 8,
16, 32). Exported with opset 13, as InsightFace's files are.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.backends.geometry import ARCFACE_TEMPLATE_112

ARCFACE_TEMPLATE = ARCFACE_TEMPLATE_112.reshape(-1).astype("float32")

__all__ = ["IResNetTiny", "ScrfdTiny", "export_embedder", "export_scrfd"]


class IBlock(nn.Module):
    """IResNet's block: BN, conv, BN, PReLU, conv (stride), BN, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.down(x)


class IResNetTiny(nn.Module):
    """112x112 -> 7x7 through four stride-2 stages, then the ArcFace head."""

    def __init__(self, embedding_size: int = 64, width: int = 8, size: int = 112) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.PReLU(width))
        chans = [width, width, 2 * width, 2 * width, 4 * width]
        self.stages = nn.Sequential(*[IBlock(chans[i], chans[i + 1], 2) for i in range(4)])
        self.bn = nn.BatchNorm2d(chans[-1])
        side = size // 16
        self.fc = nn.Linear(chans[-1] * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stages(self.stem(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


class ScrfdTiny(nn.Module):
    """Feature maps at strides 8, 16, 32 and a head per stride: 2 anchors x (1, 4, 10).

    ``bright=True`` (for service runs, where the test must know where the faces are): the
    heads read the input's mean brightness per stride-32 cell instead of the features, so a
    bright 32x32 square on the 32-pixel grid of the letterboxed input is one face, its box
    that square and its five points ArcFace's template scaled into it; nothing else scores.
    """

    strides = (8, 16, 32)

    def __init__(self, width: int = 8, bright: bool = False) -> None:
        super().__init__()
        self.bright = bright
        if bright:
            self.bright_score = nn.Conv2d(1, 2, 1)
            self.bright_box = nn.Conv2d(1, 8, 1)
            self.bright_kps = nn.Conv2d(1, 20, 1)
            with torch.no_grad():
                self.bright_score.weight.fill_(40.0)
                self.bright_score.bias.fill_(-12.0)  # mean above 0.3 normalised (~166): a face
                self.bright_box.weight.zero_()
                self.bright_box.bias.copy_(torch.tensor([0.0, 0, 1, 1] * 2))
                self.bright_kps.weight.zero_()
                self.bright_kps.bias.copy_(torch.tensor(ARCFACE_TEMPLATE / 112.0).repeat(2))
        self.s8 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(),
                                nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
                                nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.s16 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.s32 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.score = nn.ModuleList(nn.Conv2d(width, 2, 3, 1, 1) for _ in self.strides)
        self.box = nn.ModuleList(nn.Conv2d(width, 8, 3, 1, 1) for _ in self.strides)
        self.kps = nn.ModuleList(nn.Conv2d(width, 20, 3, 1, 1) for _ in self.strides)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.bright:
            return self._bright(x)
        f8 = self.s8(x)
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        scores, boxes, kps = [], [], []
        for i, f in enumerate((f8, f16, f32)):
            # (1, C*2, H, W) -> (H*W*2, C): each location's two anchors together, as SCRFD.
            scores.append(torch.sigmoid(self.score[i](f)).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(torch.relu(self.box[i](f)).permute(0, 2, 3, 1).reshape(-1, 4))
            kps.append(self.kps[i](f).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *kps)


    def _bright(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grey = x.mean(dim=1, keepdim=True)
        scores, boxes, kps = [], [], []
        for stride in self.strides:
            cells = F.avg_pool2d(grey, stride)
            score = torch.sigmoid(self.bright_score(cells))
            if stride != 32:
                score = score * 0.0
            scores.append(score.permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(self.bright_box(cells).permute(0, 2, 3, 1).reshape(-1, 4))
            kps.append(self.bright_kps(cells).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *kps)


def _randomise_bn(net: nn.Module, seed: int) -> None:
    """BN statistics away from identity, so a conversion that mishandles them shows."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def export_embedder(
    out: Path, embedding_size: int = 64, seed: int = 0, size: int = 112,
    dynamic_batch: bool = True, opset: int = 13,
) -> tuple[Path, IResNetTiny]:
    torch.manual_seed(seed)
    net = IResNetTiny(embedding_size, size=size)
    _randomise_bn(net, seed)
    net.eval()
    x = torch.randn(2, 3, size, size)
    axes = {"input.1": {0: "None"}, "embedding": {0: "None"}} if dynamic_batch else None
    if not dynamic_batch:
        x = x[:1]
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; opset 13 needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), str(out), input_names=["input.1"],
                          output_names=["embedding"], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
    return out, net


def export_scrfd(
    out: Path, seed: int = 0, size: int = 640, bright: bool = False, dynamic: bool = False
) -> tuple[Path, ScrfdTiny]:
    """``dynamic``: the input's height and width are free, as in InsightFace's
    ``det_10g.onnx`` (otherwise fixed at ``size``, as the ``shape640x640`` exports)."""
    torch.manual_seed(seed)
    net = ScrfdTiny(bright=bright).eval()
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in ScrfdTiny.strides]
    axes = None
    if dynamic:
        axes = {"input.1": {2: "height", 3: "width"}, **{n: {0: f"k_{n}"} for n in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), str(out),
                          input_names=["input.1"], output_names=names, opset_version=13,
                          dynamic_axes=axes, dynamo=False)
    return out, net
