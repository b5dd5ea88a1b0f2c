"""models/dlib_format.py and models/weights.py: the reader of dlib's ``.dat`` files and the
converted-weights cache.

The real files must parse into exactly the layers ``../shared/notes/dlib-models.md`` lists;
every broken or wrong file must fail with a :class:`DlibFormatError` that names the file and
says what was expected, never with an ``IndexError``/``struct.error`` from deep inside.
"""

from __future__ import annotations

import shutil
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import detector, embedder, landmarks
from models.dlib_format import (
    DlibFormatError,
    DnnNetwork,
    Reader,
    read_dnn,
    read_shape_predictor,
)
from models.weights import dlib_model_path, load_converted

# ------------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def embedder_net() -> DnnNetwork:
    return read_dnn(dlib_model_path("embedder"))


@pytest.fixture(scope="module")
def detector_net() -> DnnNetwork:
    return read_dnn(dlib_model_path("detector"))


@pytest.fixture(scope="module")
def shape_predictor():
    # The one full parse of the 9 MB float-encoded file in this module (a few seconds).
    return read_shape_predictor(dlib_model_path("landmarks"))


def _convs(net: DnnNetwork) -> list[tuple]:
    """(out, in, kh, kw, stride, pad) of every conv layer, input to output."""
    out = []
    for layer in net.real_layers():
        if layer.kind == "con":
            f = layer.fields
            assert (f["stride_y"], f["padding_y"]) == (f["stride_x"], f["padding_x"])
            n, c, kh, kw = f["filters"]
            assert (n, kh, kw) == (f["num_filters"], f["nr"], f["nc"])
            out.append((n, c, kh, kw, f["stride_y"], f["padding_y"]))
    return out


def test_embedder_file_layers(embedder_net: DnnNetwork):
    net = embedder_net
    assert net.loss.version == "loss_metric_2"
    assert net.loss.fields["margin"] == pytest.approx(0.04, abs=1e-7)
    assert net.loss.fields["distance_threshold"] == pytest.approx(0.6, abs=1e-7)
    assert net.input.version == "input_rgb_image_sized"
    assert net.input.fields["avg_rgb"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert (net.input.fields["nr"], net.input.fields["nc"]) == (150, 150)

    # 130 wrappers: 108 real layers and 22 tag/skip layers (notes 2.1).
    assert len(net.layers) == 130
    assert len(net.real_layers()) == 108
    assert Counter(layer.kind for layer in net.layers) == {
        "con": 29, "affine": 29, "relu": 29, "tag_or_skip": 22, "add_prev": 14,
        "avg_pool": 5, "max_pool": 1, "fc": 1,
    }  # fmt: skip
    assert sum(layer.params.size for layer in net.layers if layer.params is not None) == 5_614_592

    # Conv geometry of notes 2.8: 7x7/s2/p0 stem, 3x3/s2/p0 down convs, 3x3/s1/p1 otherwise.
    def block(c_in: int, c: int, n_blocks: int, down: bool) -> list[tuple]:
        first = (c, c_in, 3, 3, 2, 0) if down else (c, c, 3, 3, 1, 1)
        return [first] + [(c, c, 3, 3, 1, 1)] * (2 * n_blocks - 1)

    expected = [(32, 3, 7, 7, 2, 0)]
    expected += block(32, 32, 3, False) + block(32, 64, 4, True) + block(64, 128, 3, True)
    expected += block(128, 256, 3, True) + block(256, 256, 1, True)
    assert _convs(net) == expected
    for layer in net.real_layers():
        f = layer.fields
        if layer.kind == "affine":
            assert f["mode"] == 0 and layer.params.shape[0] == 2 * f["gamma"][1]
        if layer.kind == "max_pool":
            assert (f["nr"], f["stride_y"], f["padding_y"]) == (3, 2, 0)

    (fc,) = [layer for layer in net.layers if layer.kind == "fc"]
    assert (fc.fields["num_inputs"], fc.fields["num_outputs"]) == (256, 128)
    assert fc.params.shape == (256, 128, 1, 1) and not fc.fields["use_bias"]
    assert net.layers[-2].kind == "avg_pool" and net.layers[-2].fields["nr"] == 0  # global


def test_detector_file_layers(detector_net: DnnNetwork):
    net = detector_net
    assert net.loss.version == "loss_mmod_"
    f = net.loss.fields
    assert (f["window_width"], f["window_height"]) == (80, 80)
    assert f["nms_iou_thresh"] == 0.3382761351109955
    assert f["nms_percent_covered_thresh"] == 1.0
    assert (f["ignore_iou_thresh"], f["truth_match_iou_threshold"]) == (0.5, 0.5)
    assert net.input.version == "input_rgb_image_pyramid"
    assert (net.input.fields["pyramid_padding"], net.input.fields["pyramid_outer_padding"]) == (
        10,
        11,
    )
    assert len(net.layers) == 19 == len(net.real_layers())  # no tag/skip wrappers
    assert [layer.kind for layer in net.layers] == ["con", "bn_con", "relu"] * 6 + ["con"]
    assert _convs(net) == [
        (16, 3, 5, 5, 2, 0),
        (32, 16, 5, 5, 2, 0),
        (32, 32, 5, 5, 2, 0),
        (45, 32, 5, 5, 1, 2),
        (45, 45, 5, 5, 1, 2),
        (45, 45, 5, 5, 1, 2),
        (1, 45, 9, 9, 1, 4),
    ]
    assert sum(layer.params.size for layer in net.layers if layer.params is not None) == 181_141
    for bn in (layer for layer in net.layers if layer.kind == "bn_con"):
        c = bn.fields["gamma"][1]
        assert bn.fields["running_variances"].size == c and bn.fields["running_means"].size == c
        assert bn.fields["eps"] == pytest.approx(1e-4)
        assert (bn.fields["num_updates"], bn.fields["running_stats_window_size"]) == (100, 100)


def test_shape_predictor_file(shape_predictor):
    sp = shape_predictor
    np.testing.assert_allclose(
        sp.initial_shape,
        [[0.77625, 0.34554], [0.61862, 0.35378], [0.22653, 0.34553], [0.38415, 0.35377],
         [0.50138, 0.65761]],
        atol=1e-5,
    )  # fmt: skip
    assert sp.split_idx1.shape == sp.split_idx2.shape == sp.split_thresh.shape == (15, 500, 15)
    assert sp.leaves.shape == (15, 500, 16, 10)
    assert sp.anchor_idx.shape == (15, 800)
    assert sp.deltas.shape == (15, 800, 2)
    assert min(sp.split_idx1.min(), sp.split_idx2.min()) >= 0
    assert max(sp.split_idx1.max(), sp.split_idx2.max()) < 800
    assert set(np.unique(sp.anchor_idx)) <= set(range(5))
    assert sp.deltas.min() > -0.502 and sp.deltas.max() < 0.499
    assert np.isfinite(sp.leaves).all() and np.isfinite(sp.split_thresh).all()


@pytest.mark.parametrize("name", ["embedder", "detector"])
def test_dnn_reader_rejects_trailing_bytes(name: str, tmp_path: Path):
    """The reader consumes the file to the last byte and says so when it does not."""
    path = tmp_path / f"{name}.dat"
    path.write_bytes(dlib_model_path(name).read_bytes() + b"\x01")
    with pytest.raises(DlibFormatError, match=r"end of file \(1 unread bytes\)") as info:
        read_dnn(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- broken files

# What each reader must name in its message (besides the file).
READERS: dict[str, tuple[Callable[[Path], object], str]] = {
    "read_dnn": (read_dnn, "expected"),
    "read_shape_predictor": (read_shape_predictor, "expected a dlib shape_predictor"),
    "embedder.convert_dlib": (embedder.convert_dlib, "expected dlib's ResNet face embedder"),
    "detector.convert_dlib": (detector.convert_dlib, "expected dlib's MMOD CNN face detector"),
    "landmarks.convert_dlib": (landmarks.convert_dlib, "expected a dlib shape_predictor"),
}


def _assert_format_error(reader: str, path: Path, *details: str) -> DlibFormatError:
    fn, expected = READERS[reader]
    with pytest.raises(DlibFormatError) as info:
        fn(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert expected in msg, msg
    for detail in details:
        assert detail in msg, msg
    assert info.value.source == str(path)
    return info.value


@pytest.mark.parametrize("reader", sorted(READERS))
def test_empty_file(reader: str, tmp_path: Path):
    path = tmp_path / "empty.dat"
    path.write_bytes(b"")
    err = _assert_format_error(reader, path, "the file is empty")
    assert err.offset == 0


def _cuts(name: str) -> list[int]:
    size = dlib_model_path(name).stat().st_size
    if name == "landmarks":
        # A cut near the end would need the full ~4 s pure-Python parse first; the
        # "last byte missing" case is covered by the two dnn files.
        return [10, 1000, 200_000]
    return [10, 1000, size // 2, size - 1]


TRUNCATIONS = [
    (name, reader, cut)
    for name, readers in (
        ("embedder", ("read_dnn", "embedder.convert_dlib")),
        ("detector", ("read_dnn", "detector.convert_dlib")),
        ("landmarks", ("read_shape_predictor", "landmarks.convert_dlib")),
    )
    for reader in readers
    for cut in _cuts(name)
]


@pytest.mark.parametrize(("name", "reader", "cut"), TRUNCATIONS)
def test_truncated_file(name: str, reader: str, cut: int, tmp_path: Path):
    path = tmp_path / f"{name}-{cut}.dat"
    with dlib_model_path(name).open("rb") as f:
        path.write_bytes(f.read(cut))
    err = _assert_format_error(reader, path, "the file ends early")
    assert err.offset is not None and err.offset <= cut


WRONG_FILES = [
    # (file given, reader, what the message must also say)
    ("detector", "embedder.convert_dlib", "loss_metric"),
    ("landmarks", "embedder.convert_dlib", "version string"),
    ("embedder", "detector.convert_dlib", "loss_metric_2"),
    ("landmarks", "detector.convert_dlib", "version string"),
    ("detector", "read_shape_predictor", "initial shape rows"),
    ("embedder", "read_shape_predictor", "initial shape rows"),
    ("embedder", "landmarks.convert_dlib", "initial shape rows"),
    ("landmarks", "read_dnn", "version string"),
]


@pytest.mark.parametrize(("given", "reader", "detail"), WRONG_FILES)
def test_wrong_model_file(given: str, reader: str, detail: str):
    _assert_format_error(reader, dlib_model_path(given), detail)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", ["random", "text"])
def test_not_a_model_file(reader: str, kind: str, tmp_path: Path):
    path = tmp_path / f"{kind}.dat"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    else:
        path.write_text("This is a README, not a dlib model.\n" * 50)
    _assert_format_error(reader, path)


def test_corrupted_bytes_never_escape_as_other_errors(tmp_path: Path):
    """Random byte flips in a real file either still parse or give a DlibFormatError."""
    original = dlib_model_path("detector").read_bytes()
    rng = np.random.default_rng(7)
    failures = 0
    for i in range(40):
        data = bytearray(original)
        # Corrupt the structure-heavy head (version strings, counts) as well as anywhere.
        positions = rng.integers(0, 400 if i % 2 else len(data), size=3)
        for p in positions:
            data[p] = int(rng.integers(0, 256))
        path = tmp_path / f"corrupt-{i}.dat"
        path.write_bytes(bytes(data))
        try:
            detector.convert_dlib(path)
        except DlibFormatError as exc:
            assert str(path) in str(exc)
            failures += 1
    assert failures > 0  # the head corruptions must be caught


def test_out_of_range_float_is_a_format_error():
    """A mantissa/exponent pair no double can hold (1 * 2**2000) is corrupt data, not an
    OverflowError from ``math.ldexp``."""
    r = Reader(b"\x01\x01\x02\xd0\x07", "weird.dat")
    with pytest.raises(DlibFormatError, match=r"weird\.dat: at byte 0: expected eps .*overflows"):
        r.float("eps")


@pytest.mark.parametrize(
    ("name", "convert"), [("detector", detector.convert_dlib), ("embedder", embedder.convert_dlib)]
)
def test_non_finite_weight_is_rejected(name: str, convert, tmp_path: Path):
    """A NaN weight parses (it is valid float32) but would make every output NaN."""
    path = tmp_path / f"{name}.dat"
    data = bytearray(dlib_model_path(name).read_bytes())
    net = read_dnn(dlib_model_path(name))
    value = next(layer for layer in net.layers if layer.kind == "con").params.reshape(-1)[3]
    at = data.find(struct.pack("<f", value))
    data[at : at + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))
    read_dnn(path)  # still a well-formed file
    with pytest.raises(DlibFormatError, match="finite weights") as info:
        convert(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------ the cache


class CountingConverter:
    """The real detector converter, counting how often the cache had to call it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> dict[str, np.ndarray]:
        self.calls += 1
        return detector.convert_dlib(path)


@pytest.fixture
def detector_copy(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "mmod_human_face_detector.dat"
    path.parent.mkdir()
    shutil.copyfile(dlib_model_path("detector"), path)
    return path


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_converts_once_then_reuses(detector_copy: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    convert = CountingConverter()
    first = load_converted("detector", detector_copy, convert, cache)
    assert convert.calls == 1
    files = sorted(p.name for p in cache.iterdir())
    assert (
        len(files) == 1 and files[0].startswith("detector-") and files[0].endswith(".safetensors")
    )

    second = load_converted("detector", detector_copy, convert, cache)
    assert convert.calls == 1, "the second load must come from the cache"
    assert _same(first, second)
    assert sorted(p.name for p in cache.iterdir()) == files  # no temporary files left
    # The cached weights are what the converter produced, dtypes included.
    fresh = detector.convert_dlib(detector_copy)
    assert _same(second, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fresh.items()})


def test_cache_reconverts_when_source_bytes_change(detector_copy: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    convert = CountingConverter()
    before = load_converted("detector", detector_copy, convert, cache)

    # Change one weight of the score conv in place: same size, still a valid detector file.
    net = read_dnn(detector_copy)
    value = float(net.layers[-1].params.reshape(-1)[5])
    data = bytearray(detector_copy.read_bytes())
    at = data.rfind(struct.pack("<f", value))
    assert at > 0
    data[at : at + 4] = struct.pack("<f", value + 0.5)
    detector_copy.write_bytes(bytes(data))

    after = load_converted("detector", detector_copy, convert, cache)
    assert convert.calls == 2
    assert len(list(cache.glob("detector-*.safetensors"))) == 2
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["net.score.weight"]
    assert load_converted("detector", detector_copy, convert, cache).keys() == after.keys()
    assert convert.calls == 2


def test_cache_keeps_nothing_when_conversion_fails(tmp_path: Path):
    broken = tmp_path / "mmod_human_face_detector.dat"
    broken.write_bytes(dlib_model_path("detector").read_bytes()[:-1])
    cache = tmp_path / "cache"
    with pytest.raises(DlibFormatError):
        load_converted("detector", broken, CountingConverter(), cache)
    assert not cache.exists() or not any(cache.iterdir())
