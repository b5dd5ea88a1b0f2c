"""ONNX face embedders (ArcFace family and others) served through PyTorch.

The file's graph is converted to a torch module with ``onnx2torch``, so it runs on our
device, in our batches (the service's micro-batcher, ``embed_chips``), exactly as dlib's
network does. Graphs ``onnx2torch`` cannot convert (operators or opsets it lacks) run in
ONNX Runtime instead, behind the same module interface; ``backend`` says which one runs.

The module wraps the graph with the geometry's input contract, so every caller keeps
feeding raw chips: float ``(N, 3, S, S)`` RGB 0..255 in, L2-normalised ``(N, D)`` out.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backends.geometry import ChipGeometry
from models.backends.onnx_file import (
    OnnxModelError,
    check_embedder_graph,
    import_onnx,
    read_onnx_manifest,
)

__all__ = [
    "FirstRunFallback",
    "OnnxEmbedder",
    "OrtModule",
    "convert_graph",
    "load_onnx_embedder",
    "probe_embedding_size",
]

log = logging.getLogger("faceserve")


class OrtModule(nn.Module):
    """An ONNX Runtime session behind ``nn.Module``'s interface, for graphs onnx2torch cannot
    convert. Runs on the CPU (or CUDA when onnxruntime-gpu has it); tensors come back on the
    caller's device. The empty ``anchor`` parameter gives ``parameters()`` a device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = torch.get_num_threads()  # the CPU share torch was given
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.path = path

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModule:
        # A session cannot be copied; a new one on the same file is the same function.
        return OrtModule(self.path, self.anchor.device)

    def forward(self, x: torch.Tensor) -> Any:
        feed = {self.input_names[0]: x.detach().float().cpu().numpy()}
        outs = [torch.from_numpy(np.asarray(o)).to(x.device) for o in self.session.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def convert_graph(path: Path, model: Any, device: torch.device) -> tuple[nn.Module, str]:
    """``(module, backend)``: onnx2torch's conversion in eval mode (``"onnx2torch"``), or
    ONNX Runtime (``"onnxruntime"``) when the conversion fails. Either way the module's
    outputs are checked against ONNX Runtime's later by the tests, not here."""
    try:
        from onnx2torch import convert

        module = convert(model).eval()  # onnx2torch returns a module in training mode
        for p in module.parameters():
            p.requires_grad_(False)
        return FirstRunFallback(module.to(device), path, device), "onnx2torch"
    except ImportError:
        pass
    except Exception as exc:  # NotImplementedError for missing converters, and others
        log.info("onnx2torch cannot convert %s (%s); running it in ONNX Runtime", path, exc)
    try:
        return OrtModule(path, device), "onnxruntime"
    except ImportError:
        raise OnnxModelError(
            f"{path}: onnx2torch cannot convert this graph and onnxruntime is not installed: "
            "pip install 'faceserve[onnx]'"
        ) from None


class FirstRunFallback(nn.Module):
    """onnx2torch's module, replaced by ONNX Runtime if its first run fails.

    A conversion can succeed and still give a module that cannot run: a converter that
    accepts an attribute combination at build time and raises on real tensors, a shape
    computation that only works in ONNX Runtime. The first batch tells; when it raises, the
    graph is served by :class:`OrtModule` from then on (a warning is logged, ``backend``
    says which one runs) instead of every request failing. After one good run, errors are
    the caller's: a later failure is not the conversion's fault and is not hidden."""

    def __init__(self, module: nn.Module, path: Path, device: torch.device) -> None:
        super().__init__()
        self.inner = module
        self.path = path
        self.device = device
        self.backend = "onnx2torch"
        self.proven = False
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> FirstRunFallback:
        copy_ = FirstRunFallback(copy.deepcopy(self.inner, memo), self.path, self.device)
        copy_.backend, copy_.proven = self.backend, self.proven
        return copy_

    def forward(self, *args: Any) -> Any:
        if self.proven:
            return self.inner(*args)
        with self._lock:
            if self.proven:
                return self.inner(*args)
            try:
                out = self.inner(*args)
            except Exception as exc:
                log.warning("%s: the onnx2torch conversion fails on its first batch (%s: %s); "
                            "running it in ONNX Runtime instead", self.path,
                            type(exc).__name__, exc)
                try:
                    self.inner = OrtModule(self.path, self.device)
                except ImportError:
                    raise OnnxModelError(
                        f"{self.path}: the onnx2torch conversion fails at run time ({exc}) and "
                        "onnxruntime is not installed: pip install 'faceserve[onnx]'"
                    ) from exc
                self.backend = "onnxruntime"
                out = self.inner(*args)
            self.proven = True
            return out


class OnnxEmbedder(nn.Module):
    """The converted graph with the geometry's input contract around it.

    ``forward``: float ``(N, 3, S, S)`` RGB 0..255 -> L2-normalised ``(N, D)``. The colour
    order, mean and std of the geometry are applied here; a graph exported with a fixed
    batch of one is run one chip at a time.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, core: nn.Module, geometry: ChipGeometry, embedding_size: int,
        fixed_batch: bool = False, backend: str = "onnx2torch",
    ) -> None:
        super().__init__()
        self.core = core
        self.geometry = geometry
        self.input_size = geometry.size
        self.embedding_size = embedding_size
        self.fixed_batch = fixed_batch
        self.loaded_backend = backend
        self.bgr = geometry.colour == "BGR"
        self.register_buffer("mean", torch.tensor(geometry.mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(geometry.std).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def backend(self) -> str:
        """``"onnx2torch"`` or ``"onnxruntime"``: what runs the graph now (the first batch
        may have moved it to ONNX Runtime, :class:`FirstRunFallback`)."""
        return str(getattr(self.core, "backend", self.loaded_backend))

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's own output (not normalised) for raw RGB chips."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB input, got {tuple(x.shape)}")
        if self.bgr:
            x = x.flip(1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.fixed_batch and x.shape[0] != 1:
            return torch.cat([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.core(x)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.reshape(out.shape[0], -1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward_raw(x), dim=1)


def _build(path: Path, geometry: ChipGeometry, device: torch.device) -> tuple[OnnxEmbedder, int]:
    onnx = import_onnx()
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise OnnxModelError(f"{path} is not an ONNX model: {exc}") from None
    _, dim, fixed = check_embedder_graph(model, geometry, path)
    core, backend = convert_graph(path, model, device)
    wrapped = OnnxEmbedder(core, geometry, dim or 0, fixed, backend).to(device).eval()
    if dim is None:
        with torch.inference_mode():
            probe = torch.full((1, 3, geometry.size, geometry.size), 128.0, device=device)
            dim = int(wrapped(probe).shape[1])
        wrapped.embedding_size = dim
    return wrapped, int(dim)


def probe_embedding_size(path: Path, geometry: ChipGeometry) -> int:
    """The embedding size of a graph that leaves it free, by running one grey chip."""
    return _build(Path(path), geometry, torch.device("cpu"))[1]


def load_onnx_embedder(
    path: str | Path, device: torch.device
) -> tuple[OnnxEmbedder, dict[str, Any], ChipGeometry]:
    """``(module on device, manifest, geometry)`` of an added embedder; the manifest must be
    there, match the file's hash and describe an embedder whose size the graph confirms."""
    path = Path(path)
    manifest = read_onnx_manifest(path)
    if manifest.get("kind") != "embedder":
        raise OnnxModelError(f"{path} was added as a {manifest.get('kind')}, not an embedder")
    geometry = ChipGeometry.from_dict(manifest["chip"])
    module, dim = _build(path, geometry, device)
    if dim != int(manifest.get("embedding_size", dim)):
        raise OnnxModelError(f"{path}: the graph gives {dim}-d embeddings, the manifest says "
                             f"{manifest.get('embedding_size')}")
    for p in module.parameters():
        p.requires_grad_(False)
    return module, manifest, geometry
