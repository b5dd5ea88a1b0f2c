"""Reader for dlib's binary serialization format (the ``.dat`` model files).

dlib writes models as a bare concatenation of primitives (variable-length integers,
mantissa/exponent floats, length-prefixed strings, raw float32 tensors) with no header or
type tags. This module decodes those primitives and the two container shapes we need: a
``dnn`` network and the 5-point shape predictor. It never imports dlib: the files are read
with the standard library and NumPy only, so dlib stays a test-only oracle.

Layouts are documented in ``../shared/notes/dlib-models.md``; every parse below must consume
its file to the last byte, which is checked.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DlibFormatError",
    "DnnLayer",
    "DnnNetwork",
    "Reader",
    "ShapePredictorData",
    "check_finite",
    "read_dnn",
    "read_shape_predictor",
]

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
    """A ``.dat`` file is truncated, corrupt, or not the kind of model we expected."""

    def __init__(self, source: str, offset: int | None, expected: str, detail: str = "") -> None:
        # offset None: a check on the parsed model (e.g. a layer list), not on one byte range.
        where = f"{source}: at byte {offset}" if offset is not None else source
        msg = f"{where}: expected {expected}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.source = source
        self.offset = offset
        self.expected = expected
        self.detail = detail

    def for_model(self, model: str) -> DlibFormatError:
        """The same error, saying which model file the caller wanted: a user who passed the
        wrong file learns that, not only which low-level field failed to parse."""
        return DlibFormatError(self.source, self.offset, f"{model}: {self.expected}", self.detail)


class Reader:
    """Cursor over the bytes of one dlib file; every read names what it expected on failure."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.source = source
        self.pos = 0

    # -- low level -------------------------------------------------------------------------
    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFormatError(
                self.source,
                self.pos,
                what,
                f"the file ends early: needs {n} bytes, {self.remaining} left",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def expect_end(self) -> None:
        if self.remaining:
            raise DlibFormatError(
                self.source, self.pos, "end of file", f"{self.remaining} unread bytes"
            )

    # -- primitives ------------------------------------------------------------------------
    def int(self, what: str = "integer") -> int:
        start = self.pos
        control = self._take(1, what)[0]
        n = control & 0x0F
        if control & 0x70 or not 1 <= n <= 8:
            raise DlibFormatError(self.source, start, what, f"bad control byte 0x{control:02x}")
        value = int.from_bytes(self._take(n, what), "little")
        return -value if control & 0x80 else value

    def uint(self, what: str = "unsigned integer") -> int:
        start = self.pos
        value = self.int(what)
        if value < 0:
            raise DlibFormatError(self.source, start, what, f"negative value {value}")
        return value

    def float(self, what: str = "float") -> float:
        start = self.pos
        if self.remaining and self.data[self.pos] & 0x70:
            raise DlibFormatError(self.source, start, what, "legacy ASCII float is unsupported")
        mantissa = self.int(what + " mantissa")
        exponent = self.int(what + " exponent")
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:  # dlib never writes these: the bytes are not a float
            raise DlibFormatError(
                self.source, start, what, f"{mantissa} * 2**{exponent} overflows a double"
            ) from None

    def bool(self, what: str = "bool") -> bool:
        start = self.pos
        b = self._take(1, what)[0]
        if b not in (0x30, 0x31):
            raise DlibFormatError(self.source, start, what, f"byte 0x{b:02x} is not '0' or '1'")
        return b == 0x31

    def string(self, what: str = "string") -> str:
        n = self.uint(what + " length")
        raw = bytes(self._take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DlibFormatError(self.source, self.pos - n, what, "not ASCII") from exc

    def tag(self, *allowed: str) -> str:
        """Read a version string and check it is one of ``allowed``."""
        start = self.pos
        s = self.string("version string " + "|".join(allowed))
        if s not in allowed:
            raise DlibFormatError(self.source, start, " or ".join(allowed), f"found {s!r}")
        return s

    def tensor(self, what: str = "tensor") -> np.ndarray:
        start = self.pos
        version = self.int(what + " version")
        if version != 2:
            raise DlibFormatError(self.source, start, what + " version 2", f"found {version}")
        shape = tuple(self.uint(what + " dimension") for _ in range(4))
        count = math.prod(shape)
        raw = self._take(4 * count, f"{what} data ({count} float32)")
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    def alias_tensor(self, what: str = "alias tensor") -> tuple[int, int, int, int]:
        start = self.pos
        version = self.int(what + " version")
        if version != 1:
            raise DlibFormatError(self.source, start, what + " version 1", f"found {version}")
        n, k, nr, nc = (self.uint(what + " dimension") for _ in range(4))
        return (n, k, nr, nc)

    def float_matrix(self, what: str = "matrix") -> np.ndarray:
        # dlib writes -rows and -cols; a positive count means this is not a matrix header.
        dims = []
        for name in ("rows", "cols"):
            start = self.pos
            stored = self.int(f"{what} {name}")
            if stored > 0:
                raise DlibFormatError(
                    self.source, start, f"{what} {name} (stored negated)", f"found {stored}"
                )
            dims.append(-stored)
        nr, nc = dims
        values = [self.float(what + " element") for _ in range(nr * nc)]
        return np.asarray(values, dtype=np.float32).reshape(nr, nc)

    def floats(self, count: int, what: str = "floats") -> list[float]:
        return [self.float(what) for _ in range(count)]


def _open(path: Path, what: str) -> Reader:
    """A reader over the whole file; an empty file is reported as such, not as a short read."""
    data = path.read_bytes()
    if not data:
        raise DlibFormatError(str(path), 0, what, "the file is empty")
    return Reader(data, str(path))


# ------------------------------------------------------------------------------------------
# dnn networks
# ------------------------------------------------------------------------------------------


@dataclass
class DnnLayer:
    """One layer's details blob: its dlib kind (``con``, ``affine``...), params and fields."""

    kind: str
    version: str
    params: np.ndarray | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class DnnNetwork:
    """A parsed dnn file. ``layers`` run input to output; tag/skip wrappers appear as
    ``DnnLayer(kind="tag_or_skip")`` because the file cannot tell them apart."""

    loss: DnnLayer
    input: DnnLayer
    layers: list[DnnLayer]

    def real_layers(self) -> list[DnnLayer]:
        return [layer for layer in self.layers if layer.kind != "tag_or_skip"]


def _read_learning_rates(r: Reader) -> dict[str, float]:
    names = ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult")
    return dict(zip(names, r.floats(4, "learning-rate multiplier"), strict=True))


def _read_layer(r: Reader) -> DnnLayer:
    start = r.pos
    version = r.string("layer version string")
    if version in ("con_4", "con_5", "con_6"):
        params = r.tensor("con params")
        f: dict[str, Any] = {
            "num_filters": r.int(),
            "nr": r.int(),
            "nc": r.int(),
            "stride_y": r.int(),
            "stride_x": r.int(),
            "padding_y": r.int(),
            "padding_x": r.int(),
            "filters": r.alias_tensor(),
            "biases": r.alias_tensor(),
            **_read_learning_rates(r),
        }
        f["use_bias"] = r.bool() if version in ("con_5", "con_6") else True
        f["use_relu"] = r.bool() if version == "con_6" else False
        return DnnLayer("con", version, params, f)
    if version in ("fc_2", "fc_3"):
        f = {"num_outputs": r.int(), "num_inputs": r.int()}
        params = r.tensor("fc params")
        f |= {"weights": r.alias_tensor(), "biases": r.alias_tensor(), "bias_mode": r.int()}
        f |= _read_learning_rates(r)
        f["use_bias"] = r.bool() if version == "fc_3" else f["bias_mode"] == 0
        return DnnLayer("fc", version, params, f)
    if version in ("affine_", "affine_2"):
        params = r.tensor("affine params")
        f = {"gamma": r.alias_tensor(), "beta": r.alias_tensor(), "mode": r.int()}
        f["disabled"] = r.bool() if version == "affine_2" else False
        return DnnLayer("affine", version, params, f)
    if version in ("bn_con2", "bn_fc2"):
        params = r.tensor("bn params")
        f = {"gamma": r.alias_tensor(), "beta": r.alias_tensor()}
        for name in ("means", "invstds", "running_means", "running_variances"):
            f[name] = r.tensor("bn " + name)
        f |= {"num_updates": r.int(), "running_stats_window_size": r.int()}
        f |= _read_learning_rates(r)
        f["eps"] = r.float("bn eps")
        return DnnLayer("bn_con" if version == "bn_con2" else "bn_fc", version, params, f)
    if version in ("relu_", "relu_2"):
        disabled = r.bool() if version == "relu_2" else False
        return DnnLayer("relu", version, None, {"disabled": disabled})
    if version in ("max_pool_2", "avg_pool_2"):
        keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        f = {k: r.int() for k in keys}
        return DnnLayer(version[:-2], version, None, f)
    if version == "add_prev_":
        return DnnLayer("add_prev", version)
    raise DlibFormatError(r.source, start, "a known dnn layer", f"found {version!r}")


def _read_input(r: Reader) -> DnnLayer:
    version = r.tag("input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2")
    avg = tuple(r.floats(3, "input channel mean"))
    f: dict[str, Any] = {"avg_rgb": avg}
    if version == "input_rgb_image_sized":
        f |= {"nr": r.int(), "nc": r.int()}
    elif version == "input_rgb_image_pyramid":
        f |= {"pyramid_padding": 10, "pyramid_outer_padding": 11}
    else:
        f |= {"pyramid_padding": r.int(), "pyramid_outer_padding": r.int()}
    return DnnLayer("input", version, None, f)


def _read_loss(r: Reader) -> DnnLayer:
    version = r.tag("loss_metric_2", "loss_metric_", "loss_mmod_")
    if version == "loss_metric_":  # the oldest version stored nothing: dlib's defaults
        return DnnLayer("loss_metric", version, None, {"margin": 0.1, "distance_threshold": 0.75})
    if version == "loss_metric_2":
        f = {"margin": r.float("metric margin"), "distance_threshold": r.float("threshold")}
        return DnnLayer("loss_metric", version, None, f)
    start = r.pos
    opt_version = r.int("mmod options version")
    if opt_version != 1:
        raise DlibFormatError(
            r.source, start, "mmod_options version 1", f"found {opt_version}: unsupported"
        )
    f = {
        "window_width": r.int(),
        "window_height": r.int(),
        "loss_per_false_alarm": r.float(),
        "loss_per_missed_target": r.float(),
        "truth_match_iou_threshold": r.float(),
        "nms_iou_thresh": r.float(),
        "nms_percent_covered_thresh": r.float(),
        "ignore_iou_thresh": r.float(),
        "ignore_percent_covered_thresh": r.float(),
    }
    return DnnLayer("loss_mmod", version, None, f)


def read_dnn(path: str | Path) -> DnnNetwork:
    """Parse a dlib ``dnn`` network file (e.g. the ResNet embedder or MMOD detector)."""
    path = Path(path)
    r = _open(path, "a dlib dnn network")
    start = r.pos
    if r.int("loss layer version") != 1:
        raise DlibFormatError(r.source, start, "add_loss_layer version 1")
    loss = _read_loss(r)
    versions: list[int] = []
    while True:
        at = r.pos
        v = r.int("layer wrapper version")
        if v not in (1, 2, 3):
            raise DlibFormatError(r.source, at, "layer wrapper version 1, 2 or 3", f"found {v}")
        versions.append(v)
        if v == 3:
            break
        if len(versions) > 100_000:
            raise DlibFormatError(r.source, at, "an input layer", "no end to the layer list")
    input_layer = _read_input(r)
    layers: list[DnnLayer] = []
    for v in reversed(versions):
        if v == 1:
            layers.append(DnnLayer("tag_or_skip", ""))
            continue
        layer = _read_layer(r)
        for _ in range(3):
            r.bool("layer state flag")
        for _ in range(3):
            r.tensor("layer gradient/cache tensor")
        if v == 3:
            r.int("sample_expansion_factor")
        layers.append(layer)
    r.expect_end()
    return DnnNetwork(loss=loss, input=input_layer, layers=layers)


# ------------------------------------------------------------------------------------------
# shape predictor
# ------------------------------------------------------------------------------------------


@dataclass
class ShapePredictorData:
    """A regression-tree cascade as dense arrays (levels x trees x nodes)."""

    initial_shape: np.ndarray  # (P, 2) float32, normalised box coordinates
    split_idx1: np.ndarray  # (L, T, S) int32 feature indices
    split_idx2: np.ndarray  # (L, T, S) int32
    split_thresh: np.ndarray  # (L, T, S) float32
    leaves: np.ndarray  # (L, T, S+1, P*2) float32
    anchor_idx: np.ndarray  # (L, F) int32 landmark each feature pixel hangs off
    deltas: np.ndarray  # (L, F, 2) float32 offsets in normalised shape space


_SHAPE_PREDICTOR = "a dlib shape_predictor"


def read_shape_predictor(path: str | Path) -> ShapePredictorData:
    """Parse a dlib ``shape_predictor`` file into arrays (pure Python; a few seconds)."""
    path = Path(path)
    try:
        return _read_shape_predictor(_open(path, _SHAPE_PREDICTOR))
    except DlibFormatError as exc:
        if exc.expected.startswith(_SHAPE_PREDICTOR):
            raise
        raise exc.for_model(_SHAPE_PREDICTOR) from exc


def _read_shape_predictor(r: Reader) -> ShapePredictorData:
    at = r.pos
    if (v := r.int("shape predictor version")) != 1:
        raise DlibFormatError(r.source, at, "shape_predictor version 1", f"found {v}")
    initial = r.float_matrix("initial shape")
    if initial.shape[1] != 1 or initial.shape[0] % 2:
        raise DlibFormatError(r.source, at, "an initial shape column vector of even length")
    num_coords = initial.shape[0]

    n_levels = r.uint("cascade length")
    idx1: list[list[list[int]]] = []
    idx2: list[list[list[int]]] = []
    thresh: list[list[list[float]]] = []
    leaves: list[list[list[np.ndarray]]] = []
    for _ in range(n_levels):
        n_trees = r.uint("forest size")
        li1, li2, lth, lleaves = [], [], [], []
        for _ in range(n_trees):
            n_splits = r.uint("split count")
            s1, s2, st = [], [], []
            for _ in range(n_splits):
                s1.append(r.uint("split idx1"))
                s2.append(r.uint("split idx2"))
                st.append(r.float("split threshold"))
            n_leaves = r.uint("leaf count")
            if n_leaves != n_splits + 1:
                raise DlibFormatError(r.source, r.pos, f"{n_splits + 1} leaves", f"{n_leaves}")
            tree_leaves = []
            for _ in range(n_leaves):
                leaf = r.float_matrix("leaf value")
                if leaf.size != num_coords:
                    raise DlibFormatError(r.source, r.pos, f"leaf of {num_coords} values")
                tree_leaves.append(leaf.reshape(-1))
            li1.append(s1)
            li2.append(s2)
            lth.append(st)
            lleaves.append(tree_leaves)
        idx1.append(li1)
        idx2.append(li2)
        thresh.append(lth)
        leaves.append(lleaves)

    if r.uint("anchor list count") != n_levels:
        raise DlibFormatError(r.source, r.pos, f"{n_levels} anchor lists")
    anchors = [
        [r.uint("anchor index") for _ in range(r.uint("anchor count"))] for _ in range(n_levels)
    ]
    if r.uint("delta list count") != n_levels:
        raise DlibFormatError(r.source, r.pos, f"{n_levels} delta lists")
    deltas = [
        [(r.float("delta x"), r.float("delta y")) for _ in range(r.uint("delta count"))]
        for _ in range(n_levels)
    ]
    r.expect_end()
    try:
        return ShapePredictorData(
            initial_shape=initial.reshape(-1, 2),
            split_idx1=np.asarray(idx1, dtype=np.int32),
            split_idx2=np.asarray(idx2, dtype=np.int32),
            split_thresh=np.asarray(thresh, dtype=np.float32),
            leaves=np.asarray(leaves, dtype=np.float32),
            anchor_idx=np.asarray(anchors, dtype=np.int32),
            deltas=np.asarray(deltas, dtype=np.float32),
        )
    except ValueError as exc:  # ragged forests: not a model we can run densely
        raise DlibFormatError(r.source, r.pos, "trees of equal depth", str(exc)) from exc


def check_finite(arrays: dict[str, np.ndarray], source: str, model: str) -> None:
    """Raise unless every float array is finite: a corrupt weight parses as NaN or inf and
    would otherwise turn every output into NaN (no faces, NaN embeddings) without an error."""
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.isfinite(value).sum())
            raise DlibFormatError(
                source, None, f"{model}: finite weights", f"{name} has {bad} NaN/inf values"
            )


def float32_bits(value: float) -> bytes:
    """Little-endian IEEE bytes of a float32 (for tests that build files by hand)."""
    return struct.pack("<f", value)
