"""dlib's ResNet face embedder (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

A 29-convolution ResNet that maps an aligned 150x150 RGB chip to a 128-d descriptor; dlib's
published weights (CC0) are read from the ``.dat`` file by :func:`convert_dlib`, which is the
only place that knows dlib's layer order, parameter packing and transposes. The network
itself is plain torch: small block modules assembled from :data:`STAGES`.

Two details decide whether the output matches dlib to ~1e-7 (notes section 2):

* inputs are ``(pixel - mean) / 256`` in RGB order, with the mean of :data:`DLIB_V1`;
* a down block adds its (smaller) residual branch and its average-pooled shortcut with zero
  padding at the *high* end of every dimension (channels, last rows, last columns). In the
  last two stages the spatial sizes differ (3x3 vs 4x4 and 1x1 vs 2x2), so cropping, centring
  or interpolating gives a different network.

``affine`` layers are dlib's frozen batch norm (per-channel scale and shift, no statistics).
:meth:`DlibResNet.fold_affine` folds them into the preceding convolutions for inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.dlib_format import DlibFormatError, DnnLayer, check_finite, read_dnn

__all__ = [
    "CHIP_SIZE",
    "DLIB_V1",
    "EMBEDDING_SIZE",
    "MODEL_VERSION",
    "STAGES",
    "Affine",
    "DlibResNet",
    "PretrainedConfig",
    "ResidualBlock",
    "StageConfig",
    "convert_dlib",
    "embed_chips",
    "load_embedder",
    "zero_padded_add",
]


@dataclass(frozen=True)
class PretrainedConfig:
    """What a set of published weights expects and is (input contract, provenance)."""

    version: str
    source_file: str
    license: str
    input_size: int
    mean_rgb: tuple[float, float, float]  # subtracted from 0..255 pixel values
    scale: float  # then divided by this (dlib uses 256, not 255, and no std)
    embedding_size: int


DLIB_V1 = PretrainedConfig(
    version="dlib-resnet-v1",
    source_file="dlib_face_recognition_resnet_model_v1.dat",
    license="CC0-1.0",
    input_size=150,
    mean_rgb=(122.782, 117.001, 104.298),
    scale=256.0,
    embedding_size=128,
)

MODEL_VERSION = DLIB_V1.version
EMBEDDING_SIZE = DLIB_V1.embedding_size
CHIP_SIZE = DLIB_V1.input_size


@dataclass(frozen=True)
class StageConfig:
    """One resolution level: ``depth`` residual blocks of ``width`` channels; if ``down``,
    the first block halves the resolution (stride-2 conv, 2x2 average-pooled shortcut)."""

    width: int
    depth: int
    down: bool


# dlib's alevel4 .. alevel0, input to output.
STAGES: tuple[StageConfig, ...] = (
    StageConfig(32, 3, down=False),
    StageConfig(64, 4, down=True),
    StageConfig(128, 3, down=True),
    StageConfig(256, 3, down=True),
    StageConfig(256, 1, down=True),
)
STEM_WIDTH = 32
STEM_KERNEL = 7


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """Per-channel ``y = weight * x + bias``: dlib's ``affine_`` (batch norm frozen at export).

    The values are buffers, not parameters: dlib never trains them, and fine-tuning keeps
    them fixed as frozen batch-norm statistics are.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.folded = False  # True once fold_affine moved the values into the conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return x
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, folded={self.folded}"


def fold_conv_affine(conv: nn.Conv2d, affine: Affine) -> None:
    """Move ``affine`` into ``conv`` (``affine(conv(x)) == conv'(x)``) and make it identity.

    The buffers are reset to 1/0, so a state dict saved afterwards still means the same
    network when loaded into an unfolded model.
    """
    if affine.folded:
        return
    with torch.no_grad():
        g = affine.weight.to(conv.weight.dtype)
        conv.weight.mul_(g.view(-1, 1, 1, 1))
        assert conv.bias is not None
        conv.bias.mul_(g).add_(affine.bias.to(conv.bias.dtype))
        affine.weight.fill_(1.0)
        affine.bias.zero_()
    affine.folded = True


def zero_padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev`` for tensors of different shapes: the result has the larger size in
    every dimension and each operand counts only where it exists (zero padding at the high
    end of channels, rows and columns; no centring, cropping or broadcasting)."""
    if a.shape == b.shape:
        return a + b
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    c, h, w = (max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True))
    return _pad_high(a, c, h, w) + _pad_high(b, c, h, w)


def _pad_high(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    _, xc, xh, xw = x.shape
    if (xc, xh, xw) == (c, h, w):
        return x
    return F.pad(x, (0, w - xw, 0, h - xh, 0, c - xc))


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Conv2d:
    # dlib's template default: "same" padding at stride 1, none at stride 2.
    padding = kernel // 2 if stride == 1 else 0
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=True)


class Stem(nn.Module):
    """7x7 stride-2 conv (no padding), affine, ReLU, 3x3 stride-2 max pool: 150 -> 35."""

    def __init__(self, width: int = STEM_WIDTH) -> None:
        super().__init__()
        self.conv = _conv(3, width, STEM_KERNEL, 2)
        self.affine = Affine(width)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.affine(self.conv(x))))


class ResidualBlock(nn.Module):
    """``relu(affine(conv(relu(affine(conv(x))))) ⊕ shortcut(x))``.

    dlib's ``ares`` (identity shortcut) or, with ``stride=2``, ``ares_down`` (2x2 average
    pool shortcut; ⊕ is :func:`zero_padded_add` because the branch has more channels and, in
    the last stages, fewer rows and columns than the pooled input).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        if stride == 1 and c_in != c_out:
            raise ValueError("an identity shortcut needs c_in == c_out")
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.affine1 = Affine(c_out)
        self.conv2 = _conv(c_out, c_out, 3, 1)
        self.affine2 = Affine(c_out)
        self.shortcut: nn.Module = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.affine1(self.conv1(x)))
        out = self.affine2(self.conv2(out))
        return F.relu(zero_padded_add(out, self.shortcut(x)))


class DlibResNet(nn.Module):
    """The dlib face-recognition ResNet; ``forward`` gives L2-normalised 128-d embeddings.

    Input: float ``(N, 3, 150, 150)`` RGB pixel values in 0..255 (normalisation is inside, so
    every caller feeds raw chips). ``forward_raw`` returns dlib's unnormalised descriptor.
    """

    mean: torch.Tensor

    def __init__(
        self,
        stages: tuple[StageConfig, ...] = STAGES,
        config: PretrainedConfig = DLIB_V1,
    ) -> None:
        super().__init__()
        self.config = config
        self.embedding_size = config.embedding_size
        # Input normalisation is data of the weights, not learnt: not in the state dict.
        mean = torch.tensor(config.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.scale = config.scale

        self.stem = Stem(STEM_WIDTH)
        c_in = STEM_WIDTH
        stage_modules = []
        for stage in stages:
            blocks = []
            for i in range(stage.depth):
                stride = 2 if stage.down and i == 0 else 1
                blocks.append(ResidualBlock(c_in, stage.width, stride))
                c_in = stage.width
            stage_modules.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stage_modules)
        self.fc = nn.Linear(c_in, config.embedding_size, bias=False)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.scale

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's descriptor (not normalised; its length is about 1.2-1.5 on faces)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB input, got {tuple(x.shape)}")
        x = self.stages(self.stem(self.normalize_input(x)))
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward_raw(x), dim=1)

    def blocks(self) -> list[nn.Module]:
        """Units for partial freezing when fine-tuning, input to output."""
        return [self.stem, *(b for stage in self.stages for b in stage), self.fc]

    def fold_affine(self) -> DlibResNet:
        """Fold every affine layer into its convolution (inference speed; same function up to
        float32 rounding). Returns ``self``."""
        for conv, affine in self._conv_affine_pairs():
            fold_conv_affine(conv, affine)
        return self

    def _conv_affine_pairs(self) -> Iterator[tuple[nn.Conv2d, Affine]]:
        yield self.stem.conv, self.stem.affine
        for stage in self.stages:
            for block in stage:
                yield block.conv1, block.affine1
                yield block.conv2, block.affine2


# ------------------------------------------------------------------------------------------
# conversion from the dlib file
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Expect:
    """One entry of the layer list the file must have (file order, input to output)."""

    kind: str  # dlib layer kind, or "tag_or_skip"
    name: str = ""  # state-dict prefix for layers with parameters
    shape: tuple[int, ...] = ()  # conv (out, in, k, k); affine (C,); fc (in, out)
    stride: int = 1
    padding: int = 0


def _expected_layers(stages: tuple[StageConfig, ...] = STAGES) -> list[_Expect]:
    """dlib's file order for :class:`DlibResNet`, with the state-dict name of each layer."""

    def conv(name: str, c_in: int, c_out: int, k: int, stride: int) -> list[_Expect]:
        pad = k // 2 if stride == 1 else 0
        return [_Expect("con", name, (c_out, c_in, k, k), stride, pad)]

    def affine(name: str, c: int) -> list[_Expect]:
        return [_Expect("affine", name, (c,))]

    relu, tag = _Expect("relu"), _Expect("tag_or_skip")
    out = [
        *conv("stem.conv", 3, STEM_WIDTH, STEM_KERNEL, 2),
        *affine("stem.affine", STEM_WIDTH),
        relu,
        _Expect("max_pool", shape=(3, 3), stride=2),
    ]
    c_in = STEM_WIDTH
    for s, stage in enumerate(stages):
        for i in range(stage.depth):
            p, c = f"stages.{s}.{i}", stage.width
            down = stage.down and i == 0
            branch = [
                *conv(f"{p}.conv1", c_in, c, 3, 2 if down else 1),
                *affine(f"{p}.affine1", c),
                relu,
                *conv(f"{p}.conv2", c, c, 3, 1),
                *affine(f"{p}.affine2", c),
            ]
            if down:  # tag1, branch, tag2, skip1, avg_pool, add_prev2, relu
                pool = _Expect("avg_pool", shape=(2, 2), stride=2)
                out += [tag, *branch, tag, tag, pool, _Expect("add_prev"), relu]
            else:  # tag1, branch, add_prev1, relu
                out += [tag, *branch, _Expect("add_prev"), relu]
            c_in = c
    out.append(_Expect("avg_pool", shape=(0, 0), stride=1))  # avg_pool_everything
    out.append(_Expect("fc", "fc", (c_in, EMBEDDING_SIZE)))
    return out


_EMBEDDER = f"dlib's ResNet face embedder ({DLIB_V1.source_file})"


def _check(ok: bool, path: str, what: str, detail: str) -> None:
    if not ok:
        raise DlibFormatError(path, None, f"{_EMBEDDER}: {what}", detail)


def _conv_arrays(layer: DnnLayer, e: _Expect, where: str, path: str) -> dict[str, np.ndarray]:
    c_out, c_in, k, _ = e.shape
    f = layer.fields
    geometry = (f["num_filters"], f["nr"], f["nc"], f["stride_y"], f["stride_x"])
    _check(
        geometry == (c_out, k, k, e.stride, e.stride)
        and (f["padding_y"], f["padding_x"]) == (e.padding, e.padding),
        path,
        f"{where}: a {k}x{k} stride-{e.stride} pad-{e.padding} conv with {c_out} filters",
        f"found {f['num_filters']} filters {f['nr']}x{f['nc']} stride "
        f"{f['stride_y']},{f['stride_x']} pad {f['padding_y']},{f['padding_x']}",
    )
    _check(
        f["filters"] == e.shape and f["biases"] == (1, c_out, 1, 1) and f["use_bias"],
        path,
        f"{where}: filters {e.shape} with a bias",
        f"found filters {f['filters']}, biases {f['biases']}",
    )
    n_w = c_out * c_in * k * k
    params = _flat_params(layer, n_w + c_out, where, path)
    return {
        f"{e.name}.weight": params[:n_w].reshape(e.shape).copy(),
        f"{e.name}.bias": params[n_w:].copy(),
    }


def _affine_arrays(layer: DnnLayer, e: _Expect, where: str, path: str) -> dict[str, np.ndarray]:
    (c,) = e.shape
    f = layer.fields
    _check(
        f["mode"] == 0 and not f["disabled"] and f["gamma"] == (1, c, 1, 1),
        path,
        f"{where}: a per-channel affine layer of {c} channels",
        f"found mode {f['mode']}, gamma {f['gamma']}, disabled={f['disabled']}",
    )
    params = _flat_params(layer, 2 * c, where, path)
    return {f"{e.name}.weight": params[:c].copy(), f"{e.name}.bias": params[c:].copy()}


def _fc_arrays(layer: DnnLayer, e: _Expect, where: str, path: str) -> dict[str, np.ndarray]:
    n_in, n_out = e.shape
    f = layer.fields
    _check(
        (f["num_inputs"], f["num_outputs"]) == (n_in, n_out) and not f["use_bias"],
        path,
        f"{where}: a {n_in}->{n_out} fc layer without bias",
        f"found {f['num_inputs']}->{f['num_outputs']}, bias={f['use_bias']}",
    )
    params = _flat_params(layer, n_in * n_out, where, path)
    # dlib stores W[in, out] (y = x @ W); nn.Linear wants weight[out, in].
    return {f"{e.name}.weight": np.ascontiguousarray(params.reshape(n_in, n_out).T)}


def _flat_params(layer: DnnLayer, count: int, where: str, path: str) -> np.ndarray:
    params = layer.params
    size = 0 if params is None else params.size
    _check(size == count, path, f"{where}: {count} parameters", f"found {size}")
    assert params is not None
    return params.reshape(-1).astype(np.float32, copy=False)


def _check_fields(layer: DnnLayer, e: _Expect, where: str, path: str) -> None:
    f = layer.fields
    if e.kind in ("max_pool", "avg_pool"):
        found = (f["nr"], f["nc"], f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"])
        want = (*e.shape, e.stride, e.stride, 0, 0)
        _check(found == want, path, f"{where}: {e.kind} {want}", f"found {found}")
    elif e.kind == "relu":
        _check(not f["disabled"], path, f"{where}: an enabled relu", "found a disabled one")


def convert_dlib(path: str | Path) -> dict[str, np.ndarray]:
    """Weights of ``dlib_face_recognition_resnet_model_v1.dat`` under :class:`DlibResNet`'s
    state-dict names. Raises :class:`DlibFormatError` (naming the file) if the file is
    unreadable or is not this network (layer list, geometry and shapes are all checked)."""
    source = str(path)
    try:
        net = read_dnn(path)
    except DlibFormatError as exc:
        raise exc.for_model(_EMBEDDER) from exc
    _check(
        net.loss.kind == "loss_metric",
        source,
        "a metric-learning (loss_metric) network",
        f"found {net.loss.version!r}",
    )
    inp = net.input.fields
    size = (inp.get("nr"), inp.get("nc"))
    _check(
        net.input.version == "input_rgb_image_sized" and size == (CHIP_SIZE, CHIP_SIZE),
        source,
        f"a {CHIP_SIZE}x{CHIP_SIZE} RGB input layer",
        f"found {net.input.version!r} {size}",
    )
    _check(
        np.allclose(inp["avg_rgb"], DLIB_V1.mean_rgb, rtol=0, atol=1e-4),
        source,
        f"input mean {DLIB_V1.mean_rgb}",
        f"found {inp['avg_rgb']}",
    )
    expected = _expected_layers()
    found = [layer.kind for layer in net.layers]
    if found != [e.kind for e in expected]:
        first = next(
            (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b.kind),
            min(len(found), len(expected)),
        )
        got = found[first] if first < len(found) else "end of network"
        want = expected[first].kind if first < len(expected) else "end of network"
        raise DlibFormatError(
            source,
            None,
            f"the dlib ResNet embedder ({len(expected)} layers incl. tag/skip)",
            f"{len(found)} layers; entry {first} is {got!r}, expected {want!r}",
        )

    out: dict[str, np.ndarray] = {}
    converters: dict[str, Any] = {"con": _conv_arrays, "affine": _affine_arrays, "fc": _fc_arrays}
    for i, (layer, e) in enumerate(zip(net.layers, expected, strict=True)):
        where = f"layer {i} ({e.name or e.kind})"
        if e.kind in converters:
            out |= converters[e.kind](layer, e, where, source)
        else:
            _check_fields(layer, e, where, source)
    check_finite(out, source, _EMBEDDER)
    return out


# ------------------------------------------------------------------------------------------
# loading and inference
# ------------------------------------------------------------------------------------------


def load_embedder(
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    fold: bool = True,
) -> DlibResNet:
    """The dlib ResNet with its published weights, in eval mode on ``device``.

    Weights come from the converted-weights cache (converted from the dlib file on first use).
    ``fold`` merges the affine layers into the convolutions (faster; same function up to
    float32 rounding).
    """
    from models.device import resolve_device
    from models.weights import dlib_model_path, load_converted

    dev = resolve_device(device)
    state = load_converted(
        "embedder",
        dlib_model_path("embedder"),
        convert_dlib,
        Path(cache_dir) if cache_dir is not None else None,
    )
    model = DlibResNet()
    model.load_state_dict(state, strict=True)
    if fold:
        model.fold_affine()
    model = model.to(dev).eval()
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def embed_chips(
    model: nn.Module,
    chips: np.ndarray | torch.Tensor,
    flip: bool = False,
    batch_size: int = 64,
) -> torch.Tensor:
    """L2-normalised embeddings ``(N, D)`` float32 on the CPU of uint8 chips ``(N, S, S, 3)``;
    ``S`` is the model's chip size (150 for dlib's, 112 for the ArcFace family), ``D`` its
    output size (128 for dlib's; exported and ONNX models may differ).

    With ``flip`` each embedding is the renormalised mean of the chip's and its mirror's
    (test-time augmentation). Batches go to the model's device as uint8 (4x less to copy).
    Chips must be exactly the aligned size: the network runs on other sizes (global average
    pool) but gives vectors that mean nothing, or fails deep inside on small ones.
    """
    if isinstance(chips, np.ndarray):
        # Views such as mirrored chips (negative strides) are not valid torch storage.
        chips = np.ascontiguousarray(chips)
    x = torch.as_tensor(chips)
    if x.dtype != torch.uint8:
        raise TypeError(f"chips must be uint8 pixel values, got {x.dtype}")
    # ONNX embedders (models.backends.onnx_embedder) say their chip size as ``input_size``.
    size = getattr(model, "input_size", None) or getattr(
        getattr(model, "config", None), "input_size", CHIP_SIZE
    )
    if x.ndim != 4 or tuple(x.shape[1:]) != (size, size, 3):
        raise ValueError(f"chips must be (N, {size}, {size}, 3) RGB, got {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    n = x.shape[0]
    device, dtype = _model_device_dtype(model)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            part = x[start : start + batch_size].to(device, non_blocking=True)
            # NHWC -> NCHW view: already channels_last in memory, no copy.
            batch = part.permute(0, 3, 1, 2).to(dtype)
            if flip:
                m = batch.shape[0]
                both = model(torch.cat([batch, batch.flip(3)]))
                emb = F.normalize(both[:m] + both[m:], dim=1)
            else:
                emb = model(batch)
            if out is None:
                out = torch.empty((n, emb.shape[1]), dtype=torch.float32)
            out[start : start + emb.shape[0]] = emb.float().cpu()
    if out is None:  # no chips: as wide as the model's embeddings would be
        out = torch.empty((0, int(getattr(model, "embedding_size", EMBEDDING_SIZE))))
    return out
