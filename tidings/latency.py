"""A latency histogram cheap enough for the publish path. prometheus-client's `Histogram`
took ~2 µs per `observe` (a lock, a value object per bucket): 15% of a publish's Python work
once the rest was compiled (bench.micro). This one is a list of counts; /metrics turns it into
a Prometheus histogram when scraped (`web/metrics.py`)."""

from __future__ import annotations

import math
from bisect import bisect_left


class LatencyHistogram:
    """Counts of observations by bucket (`bounds` in seconds, ascending: a value lands in the
    first bucket whose bound is at least the value, or past the last), and their sum."""

    __slots__ = ("bounds", "counts", "description", "name", "total")

    def __init__(self, name: str, description: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.description = description
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or under it), ending with infinity: Prometheus' buckets."""
        buckets: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets
