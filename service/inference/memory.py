"""A budget of decoded pixels in flight across concurrent image requests.

The upload limit bounds bytes, not pixels: a 105 KB PNG of 6000x6000 px decodes to 108 MB of
RGB and costs the pipeline several times that (the decoder's buffer, the array, the detector's
resized copies). ``max_image_pixels`` bounds one image; this bounds their sum, so a handful of
such uploads at once cannot take the process's memory. A request whose decode would pass the
budget is refused at once (429 ``overloaded`` with ``Retry-After``), never made to wait on an
inference thread. One image alone is always admitted, so every image under
``max_image_pixels`` can still be processed when the server is otherwise idle.
"""

from __future__ import annotations

import threading

from models.imageio import DecodeRefused
from service.api.errors import TooManyRequests

__all__ = ["DecodeBusy", "PixelBudget"]


class DecodeBusy(TooManyRequests, DecodeRefused):
    """The decode would pass the budget: 429 ``overloaded``, retry shortly."""


class PixelBudget:
    """At most ``capacity`` decoded pixels held at once (``take`` never waits)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, pixels: int) -> None:
        """Hold ``pixels`` or raise ``DecodeBusy``; alone in the budget, any size is held."""
        with self._lock:
            if self._held and self._held + pixels > self.capacity:
                raise DecodeBusy(
                    f"the server is decoding {self._held:,} pixels for other requests; this "
                    f"image's {pixels:,} would pass the budget of {self.capacity:,}; retry "
                    "shortly",
                    code="overloaded",
                )
            self._held += pixels

    def give(self, pixels: int) -> None:
        with self._lock:
            if pixels > self._held:
                raise RuntimeError("PixelBudget.give() of more than was taken")
            self._held -= pixels
