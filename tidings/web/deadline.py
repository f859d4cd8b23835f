"""A connection's one timeout: a deadline moved on every request, filed in a timeout wheel."""

from __future__ import annotations

import math
from collections.abc import Callable

from tidings.web.wheel import TimeoutWheel


class Deadline:
    """Calls `expired` once the deadline set last has passed (up to two ticks of the wheel,
    0.5 s, later: its bucket, then the wheel's next turn), unless it was cleared first.

    An HTTP connection moves its deadline on every request: the keep-alive timeout after an
    answer, none while the application has the request. Moving it later is a float store: the
    entry in the wheel is filed again only when its bucket comes due before the deadline, and
    replaced only when a deadline comes sooner. A wheel entry rather than a loop timer handle:
    cancelling and re-creating a handle per request cost ~3.2 us under uvloop (against ~0.13 us
    for the stores, a loop of 200k), and a handle kept per connection holds ~600 bytes of an
    idle connection's memory (the timer, libuv's and the bound method; tracemalloc), where a
    wheel entry is a set slot.
    """

    __slots__ = ("_expired", "_key", "_wheel", "at")

    def __init__(self, wheel: TimeoutWheel, expired: Callable[[], None]) -> None:
        self._wheel = wheel
        self._expired = expired
        self._key: int | None = None  # the wheel's bucket this is filed in
        self.at = 0.0  # loop time of the deadline; 0 when none applies

    def set(self, delay: float) -> None:
        """Expire `delay` seconds from now (replacing any deadline set before)."""
        wheel = self._wheel
        self.at = wheel.loop.time() + delay
        key = self._key
        if key is not None:
            if key <= math.ceil(self.at / wheel.tick):
                return  # filed to come due no later than the deadline
            wheel.remove(self, key)  # the new deadline comes sooner
        self._key = wheel.add(self, delay)

    def clear(self) -> None:
        """No deadline applies now; the entry comes due later and finds nothing to do."""
        self.at = 0.0

    def stop(self) -> None:
        """For good (the connection is gone, or streams until it closes): out of the wheel."""
        self.at = 0.0
        if self._key is not None:
            self._wheel.remove(self, self._key)
            self._key = None

    def expire(self) -> None:
        """(The wheel's call: the bucket this was filed in came due.)"""
        self._key = None
        if not self.at:
            return
        remaining = self.at - self._wheel.loop.time()
        if remaining > 0:  # moved later since it was filed
            self._key = self._wheel.add(self, remaining)
            return
        self.at = 0.0
        self._expired()
