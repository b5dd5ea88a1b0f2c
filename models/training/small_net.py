"""A small CNN with the DlibResNet forward contract, for from-scratch training and tests.

Same input and output as ``models.embedder.DlibResNet``: float ``(N, 3, 150, 150)`` RGB pixel
values 0..255 in, ``(N, D)`` L2-normalised out, with the pixel normalisation inside, so the
trainer, exporter and service treat both alike. It halves the chip to 75x75 first (faces
stay recognisable; four times less work) and has about 0.3 M parameters and 18 M
multiply-adds per face: a few hundred CPU steps move it well away from chance, which is
what the tests need. It is not meant to compete with the dlib network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallFaceNet", "small_net"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallFaceNet(nn.Module):
    """5x5 stride-2 stem, stride-2 stages of two 3x3 convs, global average pool, linear."""

    def __init__(
        self, embedding_size: int = 128, stem: int = 16, widths: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.stem = _conv_bn(3, stem, 5, 2)
        stages = []
        c_in = stem
        for width in widths:
            stages.append(nn.Sequential(_conv_bn(c_in, width, 3, 2), _conv_bn(width, width, 3, 1)))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(c_in, embedding_size)

    def blocks(self) -> list[nn.Module]:
        """Units for ``--freeze``, input to output (as DlibResNet: the projection last)."""
        return [self.stem, *self.stages, self.fc]

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d((x - 128.0) / 64.0, 2)  # 150 -> 75
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward_raw(x), dim=1)


def small_net(embedding_size: int = 128) -> SmallFaceNet:
    return SmallFaceNet(embedding_size=embedding_size)
