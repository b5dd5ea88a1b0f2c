"""The process side of the detection workers: each holds its own pipeline and runs
``models.photo_faces.photo_faces`` for the server.

Why processes: decoding, detection, landmarks and alignment hold Python's GIL for a good part
of their time (the landmark cascade is NumPy on small arrays, the networks run layer by layer
from Python), so in one process two photos on two cores run at 1.3x one photo, not 2x
(``benchmarks/bench_service.py``). The server (``service.inference.workers``) starts these
with ``start`` as the pool's initializer and hands them ``PhotoJob``s.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import numpy as np
import torch

from models.cpu_share import CoreShare
from models.photo_faces import PhotoFaces, PhotoJob, photo_faces

__all__ = ["ready", "run", "start", "watch_parent"]

_pipeline: Any = None
_cores: CoreShare | None = None


def start(pipeline_kwargs: dict[str, Any], cores: int, counter: Any) -> None:
    """Load this worker's pipeline (``FacePipeline(**pipeline_kwargs)``). ``cores`` and
    ``counter`` are the server's core share, so a large photo here gets the cores no other
    stage uses, in any process."""
    global _pipeline, _cores
    # Ctrl-C reaches the whole process group: the server shuts its workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent()
    torch.set_num_threads(1)
    from models.pipeline import FacePipeline

    _pipeline = FacePipeline(**pipeline_kwargs)
    _cores = CoreShare(cores, counter=counter)
    # One detection on a blank photo, so that no request pays the kernels' lazy set-up.
    _pipeline.detect(np.zeros((120, 160, 3), np.uint8))


def watch_parent(interval_s: float = 1.0) -> None:
    """Exit when the server is gone. A pool's workers hold both ends of their task queue, so
    a server killed outright (SIGKILL, OOM) would leave them waiting forever, each holding
    its copy of the models."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


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
