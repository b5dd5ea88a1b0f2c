"""Detection worker processes: the per-photo stage of every request, off the server's GIL.

On the CPU one server process cannot keep two cores busy with two photos: decoding,
detection, landmarks and alignment hold Python's GIL for a good part of their time
(``models.photo_worker``). So by default (``FACESERVE_DETECTION_PROCESSES``) that stage runs
in a pool of worker processes, one per core, each with its own copy of the models; the
server keeps HTTP, choosing the faces, embedding (batched across requests) and search.

A worker that dies (killed, out of memory) breaks a ``ProcessPoolExecutor`` for good: every
request it held gets 503 ``worker_lost`` (retry), and a new pool takes over at once; a request
that finds the pool already broken goes to the new one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from models import photo_worker
from models.photo_faces import PhotoFaces, PhotoJob
from service.api.errors import WorkerLost

__all__ = ["PRELOAD", "DetectionWorkers", "shared_counter"]

log = logging.getLogger("faceserve.workers")


# What a worker imports, done once in the fork server: ``import torch`` alone costs a process
# ~290 MB of private memory, which workers forked from it share instead (copy-on-write).
PRELOAD = ["models.photo_worker", "models.pipeline"]


def _context() -> multiprocessing.context.BaseContext:
    """Workers come from a fork server, not from the server itself: the server has torch's
    thread pools running, which a fork would copy in whatever state they are (OpenMP hangs
    in the child), while the fork server only imported the modules."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def shared_counter() -> Any:
    """A stage counter the server and its workers share (``models.cpu_share.CoreShare``)."""
    return _context().Value("i", 0)


class DetectionWorkers:
    """``processes`` workers, each running ``models.photo_worker`` over
    ``FacePipeline(**pipeline_kwargs)``; ``cores`` and ``counter`` are the server's core share
    (``models.cpu_share.CoreShare``), so that workers and embedding size their threads from
    one count of the stages running. ``initializer``, ``ready`` and ``task`` are the worker's
    functions (module-level, so that they pickle); the tests give others."""

    def __init__(
        self,
        processes: int,
        pipeline_kwargs: dict[str, Any],
        cores: int,
        counter: Any,
        *,
        initializer: Callable[..., None] = photo_worker.start,
        ready: Callable[[], int] = photo_worker.ready,
        task: Callable[[PhotoJob], PhotoFaces] = photo_worker.run,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self._context = _context()
        self._initializer = initializer
        self._initargs = (pipeline_kwargs, cores, counter, os.getpid())
        self._ready = ready
        self._task = task
        self._lock = threading.Lock()
        self.restarts = 0
        self.photos = 0  # answered by a worker
        self._closed = False
        self._executor = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes, mp_context=self._context, initializer=self._initializer,
            initargs=self._initargs,
        )

    def start(self) -> list[int]:
        """Start every worker now (the pool starts them on demand, one per task it cannot
        hand to an idle one) and wait until they have their models loaded and warm; returns
        the pids that answered. Raises what a worker's start raised."""
        futures = [self._executor.submit(self._ready) for _ in range(self.processes)]
        return sorted({f.result() for f in futures})

    async def faces(self, job: PhotoJob, release: Callable[[], None] | None = None
                    ) -> PhotoFaces:
        """``job``'s faces from a worker. Image errors raised there are raised here; a worker
        lost with the photo is ``WorkerLost`` (503).

        ``release`` is called once no worker holds the photo any more: when this returns or
        raises, or, for a request cancelled while a worker already has its photo (a client
        gone, a timeout), when that worker is done with it. What the caller reserved for the
        photo (its decoded pixels) stays reserved while the photo is really in memory."""
        try:
            executor, task = self._submit(job)
        except BaseException:
            if release is not None:
                release()
            raise
        try:
            # Cancelling this await cancels ``task`` too, unless a worker already runs it.
            photo = await asyncio.wrap_future(task)
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise WorkerLost(
                "a detection worker process died while it held this photo (killed, or out of "
                "memory); the workers were restarted: retry"
            ) from exc
        finally:
            if release is not None:
                if task.done():
                    release()
                else:  # cancelled while a worker has it: released when the worker is done
                    task.add_done_callback(lambda _: release())
        self.photos += 1
        return photo

    def _submit(self, job: PhotoJob) -> tuple[ProcessPoolExecutor, Future[PhotoFaces]]:
        """``job`` handed to the pool, and the pool that has it."""
        executor = self._executor
        try:
            return executor, executor.submit(self._task, job)
        except (BrokenProcessPool, RuntimeError):
            # Broken (or already replaced and shut down) before this photo was handed over.
            self._replace(executor)
            executor = self._executor
            return executor, executor.submit(self._task, job)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken or self._closed:
                return  # another request already replaced it, or the server is stopping
            log.error("a detection worker process died; starting a new pool of %d",
                      self.processes)
            self._executor = self._new_pool()
            self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
