"""The process side of the detection workers: each holds its own pipeline and runs
``models.photo_faces.photo_faces`` for the server.

Why processes: decoding, detection, landmarks and alignment hold Python's GIL for a good part
of their time (the landmark cascade is NumPy on small arrays, the networks run layer by layer
from Python), so in one process two threads detecting LFW photos on two cores do 46-50
photos/s where two processes do 60-64. The server (``service.inference.workers``) starts
these with ``start`` as the pool's initializer and hands them ``PhotoJob``s.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import torch

from models.cpu_share import CoreShare
from models.photo_faces import PhotoFaces, PhotoJob, photo_faces

__all__ = ["alive", "ready", "run", "start", "watch_server"]

_pipeline: Any = None
_cores: CoreShare | None = None


def start(pipeline_kwargs: dict[str, Any], cores: int, counter: Any, server: int) -> None:
    """Load this worker's pipeline (``FacePipeline(**pipeline_kwargs)``). ``cores`` and
    ``counter`` are the server's core share, so a large photo here gets the cores no other
    stage uses, in any process; ``server`` is the server's pid (the worker exits with it)."""
    global _pipeline, _cores
    # Ctrl-C reaches the whole process group: the server shuts its workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_server(server)
    torch.set_num_threads(1)
    from models.pipeline import FacePipeline

    _pipeline = FacePipeline(**pipeline_kwargs)
    # A worker never embeds: drop the embedding network (the pipeline keeps its chip
    # geometry), 22 MB for dlib's, hundreds for a large ONNX model, in every worker.
    _pipeline.embedder = None
    _pipeline.model.module = None
    gc.collect()
    _cores = CoreShare(cores, counter=counter)
    # One detection on a blank photo, so that no request pays the kernels' lazy set-up.
    _pipeline.detect(np.zeros((120, 160, 3), np.uint8))


def watch_server(server: int, interval_s: float = 1.0) -> None:
    """Exit when the server process is gone. A pool's workers hold both ends of their task
    queue (and the fork server they came from waits for them), so a server killed outright
    (SIGKILL, OOM) would leave them waiting forever, each with its copy of the models."""

    def watch() -> None:
        while alive(server):
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="watch-server", daemon=True).start()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # gone just now; without /proc, trust os.kill
    return state != "Z"


def run(job: PhotoJob) -> PhotoFaces:
    """One photo's faces (the pool's task)."""
    if _pipeline is None:
        raise RuntimeError("photo_worker.run before start: not a detection worker")
    return photo_faces(_pipeline, job, _cores)


def ready() -> int:
    """This worker's pid, once ``start`` has loaded it."""
    if _pipeline is None:
        raise RuntimeError("photo_worker.ready before start: not a detection worker")
    return os.getpid()
