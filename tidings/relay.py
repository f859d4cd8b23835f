"""The relay: what the server does with messages, with no HTTP in it. Publish, delete and
channel info go to this process's hub or over the bus; reads are answered from the hub,
through the bus when this process's buffers cannot answer alone; publishes are counted and
timed. HTTP publish, the WebSocket's commands, /channels, every subscribe path and
`tidings publish --redis` go through it.

With the memory broker the relay publishes into the hub and answers at once; a `NumberingBus`
(Redis, the ZeroMQ sequencer) answers later, from a task. So each operation takes
continuations instead of returning: `answer(result)`, called at once or later, and
`fail(error)` with an error of the domain — `BrokerUnavailable` (the bus is away),
`OverCapacity` (a memory cap of this process), `BrokerFailed` (anything else; logged here).
Transports map those to what their clients see (`tidings/web/errors.py` for HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from tidings.brokers import Broker, NumberingBus
from tidings.errors import BrokerFailed, BrokerUnavailable, OverCapacity, TidingsError
from tidings.hub import DEFAULT_BATCH, Batch, ChannelInfo, Cursor, JSONValue, Published, wall_clock_ms
from tidings.latency import LatencyHistogram
from tidings.presence import EMPTY_VIEW, RemoteView

log = logging.getLogger("tidings")
T = TypeVar("T")
Fail = Callable[[Exception], None]

# What a broker call raises as an answer (the caller is told), not as a bug.
REFUSALS = (BrokerUnavailable, OverCapacity)
PRESENCE_BATCH = 100  # channels per question about presence elsewhere


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
        self.seconds = LatencyHistogram(
            "tidings_publish_seconds",
            "From a publish reaching the server's relay to its fan-out in this process (or its hand-off to the bus)",
            (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
        )


class Relay:
    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = broker.hub
        self.broker = broker
        self.bus: NumberingBus | None = broker if isinstance(broker, NumberingBus) else None
        self.loop = loop
        self.stats = PublishStats()
        self.tasks: set[asyncio.Future[Any]] = set()  # broker calls under way (shutdown waits for them)
        self._refreshing = False  # a `refresh_presence` under way

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

        if self.bus is not None:
            self._when_done(self.bus.publish(channel, data), accepted, refused)
            return
        try:
            result = self.hub.publish(channel, data, wall_clock_ms())
        except OverCapacity as exc:
            refused(exc)
            return
        accepted(result)

    async def publish_and_wait(self, channel: str, data: JSONValue) -> Published:
        """`publish` for a caller that waits in a coroutine (`tidings publish --redis`)."""
        answered: asyncio.Future[Published] = self.loop.create_future()

        def fail(error: Exception) -> None:
            if not answered.done():  # (a caller that gave up has cancelled it)
                answered.set_exception(error)

        self.publish(channel, data, answered.set_result, fail)
        return await answered

    def delete(self, channel: str, answer: Callable[[int | None], None], fail: Fail) -> None:
        """Delete `channel` everywhere; answers with the number of subscribers told (None: it held nothing)."""
        if self.bus is not None:
            self._when_done(self.bus.delete(channel), answer, fail)
        else:
            answer(self.hub.delete(channel))

    def info(self, channel: str, answer: Callable[[ChannelInfo], None], fail: Fail) -> None:
        if self.bus is not None:
            self._when_done(self.bus.info(channel, wall_clock_ms()), answer, fail)
        else:
            answer(self.hub.info(channel, wall_clock_ms()))

    def presence(self, channel: str, answer: Callable[[RemoteView], None], fail: Fail) -> None:
        """Who the other processes on the bus hold on `channel` (nobody, without a bus)."""
        if self.bus is not None:
            self._when_done(
                self.bus.presence_elsewhere([channel]), lambda views: answer(views.get(channel, EMPTY_VIEW)), fail
            )
        else:
            answer(EMPTY_VIEW)

    def refresh_presence(self) -> None:
        """Bring the other processes' presence on the channels listened to here up to date, so
        that their joins and leaves reach this process's listeners (the server's sweep calls
        this each second; one question at a time)."""
        bus = self.bus
        if bus is None or self._refreshing:
            return
        presence = self.hub.presence
        listened = presence.listened()
        if not listened:
            return
        self._refreshing = True

        async def refresh() -> None:
            try:
                for start in range(0, len(listened), PRESENCE_BATCH):
                    batch = listened[start : start + PRESENCE_BATCH]
                    views = await bus.presence_elsewhere(batch)
                    for name in batch:
                        presence.set_remote(name, views.get(name, EMPTY_VIEW))
            except BrokerUnavailable as exc:
                log.debug("presence elsewhere not known: %s", exc)
            except Exception:
                log.exception("reading presence through the broker failed")
            finally:
                self._refreshing = False

        self._spawn(refresh())

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
        buffers, or — when they do not reach back to the cursor and the broker keeps history,
        or the channels are not subscribed on the bus yet — after the broker has filled them
        in. With the broker unreachable, the local answer stands (a gap at worst).

        A read that must bring channels in from the bus raises TooManyChannels, at once, when
        holding them would take this process past --max-channels (the bus would create them
        here without asking). `fail` hears of an `answer` that raised after a wait, and of a
        broker that failed otherwise."""
        broker = self.broker
        if broker.needs_activation and not broker.ready(channels):
            filled = self._activate_and_fill(channels, cursor, limit)
        else:
            batch = self.hub.read(channels, cursor, wall_clock_ms(), limit)
            if not (batch.incomplete and broker.keeps_history):
                answer(batch)
                return
            filled = broker.fill(batch.incomplete, cursor)
        try:
            self.hub.make_room(channels)
        except OverCapacity:
            filled.close()  # (never started)
            raise

        async def read_when_filled() -> None:
            try:
                await filled
            except BrokerUnavailable as exc:
                log.debug("history not available, answering from local buffers: %s", exc)
            except Exception:
                log.exception("reading through the broker failed")
                fail(BrokerFailed("reading through the broker failed"))
                return
            if not requester.closed:
                self._answer_late(answer, self.hub.read(channels, cursor, wall_clock_ms(), limit), fail)

        self._spawn(read_when_filled())

    async def _activate_and_fill(self, channels: tuple[str, ...], cursor: Cursor, limit: int | None) -> None:
        await self.broker.activate(channels)
        if self.broker.keeps_history:  # (a bus without history has nothing to fill in)
            incomplete = self.hub.read(channels, cursor, wall_clock_ms(), limit).incomplete
            if incomplete:
                await self.broker.fill(incomplete, cursor)

    # -- answers from the bus

    def _when_done(self, pending: asyncio.Future[T], answer: Callable[[T], None], fail: Fail) -> None:
        """Answer (or fail) when the bus has: a callback on its future, no task."""
        tasks = self.tasks
        tasks.add(pending)

        def done(future: asyncio.Future[T]) -> None:
            tasks.discard(future)
            error = BrokerUnavailable("the broker call was cancelled") if future.cancelled() else future.exception()
            if error is None:
                self._answer_late(answer, future.result(), fail)
            elif isinstance(error, REFUSALS):
                fail(error)
            else:
                log.error("broker call failed", exc_info=error)
                fail(BrokerFailed("the broker call failed"))

        pending.add_done_callback(done)

    def _answer_late(self, answer: Callable[[T], None], result: T, fail: Fail) -> None:
        # From a task or callback nobody awaits: an answer that raises is told to `fail`, so the client
        # hears of it instead of waiting (a refusal of the domain, e.g. a cap, is no bug to log).
        try:
            answer(result)
        except TidingsError as exc:
            fail(exc)
        except Exception as exc:
            log.exception("error while answering after a broker call")
            fail(exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
