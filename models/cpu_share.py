"""Share the CPU's cores among the inference stages that run at once.

torch splits each operation over all cores (intra-op threads). That is right for one request
alone, but with several requests in flight every stage asks for every core: the OpenMP
threads oversubscribe the CPU and spin while they wait for each other, and the requests
together finish later than if each had run on its own core. Worse, every Python thread that
calls torch has its own OpenMP team, and the service's stages hop between threads (a pool
for detection, the batcher for embedding): a team whose workers are still spinning slows
the next one down. Measured on 2 cores (``benchmarks/bench_service.py``): one LFW photo
through detection and embedding on two pool threads takes 39 ms with two intra-op threads
and 25 ms with one; a 1280x914 photo alone is 1.7x faster on two.

So ``CoreShare`` gives a stage one thread, except a large one (a photo of
``PARALLEL_PIXELS`` or more, a batch of ``PARALLEL_FACES`` faces or more), which gets
``cores // stages running``: all of them when it runs alone. The setting is
per thread (OpenMP's thread count and MKL's are thread-local), so stages on other threads
keep theirs. The count can be shared between processes (``counter``, a
``multiprocessing.Value``): the detection worker processes and the server's embedding stages
then size their pools from one count.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "PARALLEL_FACES", "PARALLEL_PIXELS", "PARALLEL_PIXELS_ALONE", "CoreShare",
    "available_cores", "cpu_quota", "rebalance",
]

R = TypeVar("R")


# Photos from this many pixels up are worth more than one thread when the server's own
# threads detect (640x480 is not: 64 ms on one thread against 74 ms on two in the service;
# 1280x914 is).
PARALLEL_PIXELS = 1_000_000
# Photos from this many pixels up, when their stage has its process's torch to itself (a
# detection worker process; the server's photo kept inline because nothing else runs): no
# other thread's stage inherits a spinning OpenMP team there, and detection alone is faster
# on every core from small sizes up (on 2 cores a 480x373 photo 1.4x; POST /embed of a
# 640x480 one through the app 95 ms against 113, interleaved).
# LFW's 250x250 stays on one thread: many small photos at once are what matters there.
PARALLEL_PIXELS_ALONE = 200_000
# Embedding batches from this many faces up, likewise (4 faces: 18 ms on one thread, 12 on
# two; 32 faces: 119 and 65 ms; one face gains nothing).
PARALLEL_FACES = 4


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPU cores this process may use: its affinity mask (a container's CPU set), capped
    by its cgroup's CPU quota rounded up (``docker run --cpus=2`` on a 16-core host is 2:
    16 threads or worker processes there would only queue for the quota)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU time the cgroup may use, in cores (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``); None when unlimited or unknown."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


# The large stage this thread is in (its CoreShare), for ``rebalance``; None in a small one.
_current = threading.local()


def rebalance() -> None:
    """Between the steps of a long computation: resize this thread's torch pool to its share
    of the cores now, if it is in a large stage.

    A large stage's share is fixed when it starts; a stage that starts beside it later gets
    one thread, and the two then ask for more threads than there are cores (OpenMP threads
    spin while they wait for each other: in one run at concurrency 2, the p99 of 640x480
    photos rose from 184 to 261 ms). Calling this between a network's layers makes the
    first stage give the cores back while the other runs, and take them again when it ends.
    Outside a large stage, nothing.
    """
    share = getattr(_current, "large_stage", None)
    if share is None:
        return
    threads = share.threads_for(share.running)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


class CoreShare:
    """Counts the inference stages running and sizes each new one's torch thread pool."""

    def __init__(self, cores: int | None = None, counter: Any | None = None) -> None:
        """``counter``: a ``multiprocessing.Value("i")`` to count the stages of every process
        that holds it; None counts this process's alone."""
        self.cores = max(1, cores if cores is not None else torch.get_num_threads())
        self._counter = counter
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running if self._counter is None else self._counter.value

    def threads_for(self, running: int) -> int:
        """A large stage's torch threads while ``running`` stages run: its share of the
        cores."""
        return max(1, self.cores // max(1, running))

    def _add(self, n: int) -> int:
        """Add ``n`` to the stages running; returns the new count."""
        if self._counter is None:
            with self._lock:
                self._running += n
                return self._running
        with self._counter.get_lock():
            self._counter.value += n
            return self._counter.value

    @contextmanager
    def stage(self, large: bool = False) -> Iterator[int]:
        """Run the body with this thread's share of the cores (yielded): one thread, or for a
        ``large`` stage ``cores // stages running``."""
        running = self._add(1)
        threads = self.threads_for(running) if large else 1
        previous = torch.get_num_threads()
        outer = getattr(_current, "large_stage", None)
        torch.set_num_threads(threads)
        _current.large_stage = self if large else None
        try:
            yield threads
        finally:
            _current.large_stage = outer
            torch.set_num_threads(previous)  # the thread's own setting outside stages
            self._add(-1)

    def photo_stage(self, pixels: int, alone: bool = False) -> AbstractContextManager[int]:
        """A stage on a photo of ``pixels`` pixels (detection, landmarks, alignment);
        ``alone``: the only stage of its process (a detection worker's photo, or the server's
        photo kept inline because nothing else runs), large from ``PARALLEL_PIXELS_ALONE``."""
        return self.stage(pixels >= (PARALLEL_PIXELS_ALONE if alone else PARALLEL_PIXELS))

    def embedding(self, embed: Callable[[np.ndarray], R]) -> Callable[[np.ndarray], R]:
        """``embed(chips)`` run as one stage, large from ``PARALLEL_FACES`` chips."""

        @wraps(embed)
        def staged(chips: np.ndarray) -> R:
            with self.stage(len(chips) >= PARALLEL_FACES):
                return embed(chips)

        return staged
