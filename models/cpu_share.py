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

So ``CoreShare`` gives a stage one thread, except a large photo's (``parallel_pixels`` and
up), which gets ``cores // stages running``: all of them when it runs alone. The setting is
per thread (OpenMP's thread count and MKL's are thread-local), so stages on other threads
keep theirs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

import torch

__all__ = ["PARALLEL_PIXELS", "CoreShare", "available_cores"]

P = ParamSpec("P")
R = TypeVar("R")


# Photos from this many pixels up are worth more than one thread (640x480 is not: 64 ms on
# one thread against 74 ms on two in the service; 1280x914 is).
PARALLEL_PIXELS = 1_000_000


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's CPU set)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CoreShare:
    """Counts the inference stages running and sizes each new one's torch thread pool."""

    def __init__(self, cores: int | None = None, parallel_pixels: int = PARALLEL_PIXELS) -> None:
        self.cores = max(1, cores if cores is not None else torch.get_num_threads())
        self.parallel_pixels = parallel_pixels
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    @contextmanager
    def stage(self, pixels: int = 0) -> Iterator[int]:
        """Run the body, on ``pixels`` of photo, with this thread's share of the cores
        (yielded)."""
        with self._lock:
            self._running += 1
            threads = 1
            if pixels >= self.parallel_pixels:
                threads = max(1, self.cores // self._running)
        torch.set_num_threads(threads)
        try:
            yield threads
        finally:
            with self._lock:
                self._running -= 1

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` run as one stage."""

        @wraps(fn)
        def staged(*args: P.args, **kwargs: P.kwargs) -> R:
            with self.stage():
                return fn(*args, **kwargs)

        return staged
