"""Per-key rate limits: one token bucket per API key, in memory.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one or
is refused with the time until the next token (``Retry-After``). Buckets are per key, so their
number is bounded by the keys in the database; a key seen again after a long pause starts full.
The clock is injectable so tests step time instead of sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["KeySlots", "RateLimiter"]


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``rate`` requests per second on average, ``burst`` at once; ``rate <= 0`` is off."""
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float:
        """0.0 if ``key`` may proceed now (a token is taken), else seconds until it may."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """A ``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait_s)))


class KeySlots:
    """At most ``per_key`` requests of one caller inside the inference stage at once.

    The server-wide ``AdmissionGate`` alone lets one key (or one address, without keys) take
    every slot with slow uploads and lock every other tenant out; this keeps a share for the
    others. Counts exist only while a caller has requests inside, so the map stays as small
    as the number of callers in flight."""

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError("per_key must be >= 1")
        self.per_key = per_key
        self._inside: dict[str, int] = {}
        self._lock = threading.Lock()

    def inside(self, key: str) -> int:
        return self._inside.get(key, 0)

    def try_enter(self, key: str) -> bool:
        with self._lock:
            n = self._inside.get(key, 0)
            if n >= self.per_key:
                return False
            self._inside[key] = n + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            n = self._inside.get(key, 0)
            if n <= 0:
                raise RuntimeError("KeySlots.leave() without a matching try_enter()")
            if n == 1:
                del self._inside[key]
            else:
                self._inside[key] = n - 1
