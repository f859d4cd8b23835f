"""The relay: what the server does with messages, with no HTTP in it. Publish, delete and
channel info go to the broker; reads are answered from the hub, through the bus when this
process's buffers cannot answer alone; publishes are counted and timed. HTTP publish, the
WebSocket's commands, /channels and every subscribe path go through it.

A broker answers at once when it can and with an awaitable when it must talk to a bus
(`Broker.publish`); this is the one place that tells the two apart. So each operation takes
continuations instead of returning: `answer(result)`, called at once or later from a task,
and `fail(error)` with an error of the domain — `BrokerUnavailable` (the bus is away),
`OverCapacity` (a memory cap of this process), `BrokerFailed` (anything else; logged here).
Transports map those to what their clients see (`tidings/web/errors.py` for HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from prometheus_client import Histogram

from tidings.brokers import Broker, Published
from tidings.errors import BrokerFailed, BrokerUnavailable, OverCapacity
from tidings.hub import DEFAULT_BATCH, Batch, ChannelInfo, Cursor, Hub, JSONValue, wall_clock_ms

log = logging.getLogger("tidings")
T = TypeVar("T")
Fail = Callable[[Exception], None]

# What a broker call raises as an answer (the caller is told), not as a bug.
REFUSALS = (BrokerUnavailable, OverCapacity)


class Requester(Protocol):
    """Whoever a read is for (a connection): it may be gone by the time the bus has answered."""

    @property
    def closed(self) -> bool: ...


class PublishStats:
    """Publishes this process accepted and refused, and how long each took: from reaching the
    relay to its fan-out in this process (or its hand-off to the bus)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        # Not registered: the metrics endpoint registers it where it collects the rest.
        self.seconds = Histogram(
            "tidings_publish_seconds",
            "From a publish reaching the server's relay to its fan-out in this process (or its hand-off to the bus)",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=None,
        )


class Relay:
    def __init__(self, hub: Hub, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.broker = broker
        self.loop = loop
        self.stats = PublishStats()
        self.tasks: set[asyncio.Task[None]] = set()  # broker calls under way (shutdown waits for them)

    def publish(self, channel: str, data: JSONValue, answer: Callable[[Published], None], fail: Fail) -> None:
        """Publish to every process on the bus (`channel` and the size of `data` are checked already)."""
        started = time.perf_counter()
        stats = self.stats

        def accepted(result: Published) -> None:
            stats.accepted += 1
            stats.seconds.observe(time.perf_counter() - started)
            answer(result)

        def refused(error: Exception) -> None:
            stats.refused += 1
            fail(error)

        # `_call` inlined: on the hot path a lambda and a call less save ~0.2 us per publish
        # (~1.5% of an HTTP publish in bench.micro).
        try:
            result = self.broker.publish(channel, data)
        except REFUSALS as exc:
            refused(exc)
            return
        self._answer_now_or_later(result, accepted, refused)

    def delete(self, channel: str, answer: Callable[[int | None], None], fail: Fail) -> None:
        """Delete `channel` everywhere; answers with the number of subscribers told (None: it held nothing)."""
        self._call(lambda: self.broker.delete(channel), answer, fail)

    def info(self, channel: str, answer: Callable[[ChannelInfo], None], fail: Fail) -> None:
        self._call(lambda: self.broker.info(channel, wall_clock_ms()), answer, fail)

    def read(
        self,
        requester: Requester,
        channels: tuple[str, ...],
        cursor: Cursor,
        answer: Callable[[Batch], None],
        fail: Fail,
        limit: int | None = DEFAULT_BATCH,
    ) -> None:
        """Read after `cursor` and continue with `answer(batch)`: at once from this process's
        buffers, or — when they do not reach back to the cursor and the broker keeps history
        — after the broker has filled them in. With the broker unreachable, the local answer
        stands (a gap at worst). `fail` hears of an `answer` that raised after a wait."""
        broker = self.broker
        if broker.needs_activation and not broker.ready(channels):
            self._spawn(self._read_through(requester, channels, cursor, answer, fail, limit))
            return
        batch = self.hub.read(channels, cursor, wall_clock_ms(), limit)
        if batch.incomplete and broker.keeps_history:
            self._spawn(self._read_through(requester, channels, cursor, answer, fail, limit, batch.incomplete))
        else:
            answer(batch)

    async def _read_through(
        self,
        requester: Requester,
        channels: tuple[str, ...],
        cursor: Cursor,
        answer: Callable[[Batch], None],
        fail: Fail,
        limit: int | None,
        incomplete: list[str] | None = None,
    ) -> None:
        try:
            if incomplete is None:  # the channels are not subscribed on the bus yet
                await self.broker.activate(channels)
                incomplete = []
                if self.broker.keeps_history:  # (a bus without history has nothing to fill in)
                    incomplete = self.hub.read(channels, cursor, wall_clock_ms(), limit).incomplete
            if incomplete:
                await self.broker.fill(incomplete, cursor)
        except BrokerUnavailable as exc:
            log.debug("history not available, answering from local buffers: %s", exc)
        if requester.closed:
            return
        self._answer_late(answer, self.hub.read(channels, cursor, wall_clock_ms(), limit), fail)

    # -- broker calls

    def _call(self, call: Callable[[], T | Awaitable[T]], answer: Callable[[T], None], fail: Fail) -> None:
        try:
            result = call()
        except REFUSALS as exc:
            fail(exc)
            return
        self._answer_now_or_later(result, answer, fail)

    def _answer_now_or_later(self, result: T | Awaitable[T], answer: Callable[[T], None], fail: Fail) -> None:
        """Answer at once when the broker did (the memory broker always does, and ZeroMQ's
        publish), from a task when it returned an awaitable. Measured on uvloop: a task per
        in-memory publish costs ~0.7 us more (~5% of an HTTP publish in bench.micro), and
        when many publishes arrive in one loop turn, ~10 us more each."""
        if isinstance(result, Awaitable):
            self._spawn(self._answer_when_done(result, answer, fail))
        else:
            answer(result)

    async def _answer_when_done(self, pending: Awaitable[T], answer: Callable[[T], None], fail: Fail) -> None:
        try:
            result = await pending
        except REFUSALS as exc:
            fail(exc)
            return
        except Exception:
            log.exception("broker call failed")
            fail(BrokerFailed("the broker call failed"))
            return
        self._answer_late(answer, result, fail)

    def _answer_late(self, answer: Callable[[T], None], result: T, fail: Fail) -> None:
        # From a task nobody awaits: an answer that raises is told to `fail`, so the client
        # hears of it instead of waiting.
        try:
            answer(result)
        except Exception as exc:
            log.exception("error while answering after a broker call")
            fail(exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
