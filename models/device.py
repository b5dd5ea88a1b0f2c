"""Choosing the torch device: the GPU when there is one, unless the caller says otherwise."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda`` if available else ``cpu``; anything else is taken as given.

    Asking for CUDA on a machine without it is an error here rather than a crash later.
    """
    if isinstance(spec, torch.device):
        device = spec
    elif spec is None or spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
    return device
