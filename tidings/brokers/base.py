"""The interface every bus implements.

A broker owns how a published message reaches every process; it hands each message that
arrives from the bus to the local hub with `hub.ingest`, which delivers it to this process's
subscribers. Transports reach it only through the relay (`tidings/relay.py`).

Two kinds. The memory broker is this process alone: the relay publishes into its hub, at
once. A `NumberingBus` (Redis, the ZeroMQ sequencer) numbers messages itself: publish, delete
and info go over it and answer later (coroutines), and every process — this one too — gets each
message back from the bus, with the same id everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import ClassVar

from tidings.encoding import decode_json
from tidings.hub import ChannelInfo, Cursor, Hub, JSONValue, Published
from tidings.presence import RemoteView

log = logging.getLogger("tidings.brokers")


CANCEL_WAITS = (0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.5)  # seconds before cancelling again (5 s in all)


async def cancel_all(tasks: list[asyncio.Task[None]], waits: tuple[float, ...] = CANCEL_WAITS) -> None:
    """Stop a broker's background tasks and wait until they have. A task can lose a cancellation:
    redis-py sends through asyncio.wait_for, which on Python 3.11 drops a cancel that arrives just
    as the send completes (CPython gh-86296), and the task goes on; so cancel again while it runs,
    at growing intervals (a task's own clean-up after a cancel is not cut short)."""
    running = {task for task in tasks if not task.done()}
    for wait in waits:
        if not running:
            break
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=wait)
    if running:
        log.warning("%d background task(s) did not stop when cancelled: %s", len(running), running)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("a background task had failed: %s", task, exc_info=task.exception())


def foreign_data(payload: bytes) -> JSONValue:
    """The data of a message some other program put on the bus (redis-cli PUBLISH, a ZeroMQ
    publisher without our framing): a JSON object or array as such, anything else as text."""
    text = payload.decode("utf-8", "replace")
    if text[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            return decode_json(text)
    return text


class Broker:
    name: str

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def start(self) -> None:
        """Connect; called once before the server accepts connections."""

    async def close(self) -> None:
        """Disconnect; called once at shutdown."""

    @property
    def healthy(self) -> bool:
        return True

    # A broker that keeps history of its own (beyond this process's buffers) fills in
    # reads the hub cannot answer completely; the hub's buffers are then a cache of it.
    keeps_history: ClassVar[bool] = False

    async def fill(self, channels: list[str], cursor: Cursor) -> None:
        """Load the history after `cursor` on `channels` into the hub (`Hub.backfill`)."""

    # A broker that subscribes per channel must have done so before a read can wait on it.
    needs_activation = False

    def ready(self, channels: tuple[str, ...]) -> bool:
        """Whether messages on every one of `channels` reach this process now."""
        return True

    async def activate(self, channels: tuple[str, ...]) -> None:
        """Make messages on `channels` reach this process (see `ready`)."""

    def stats(self) -> dict[str, JSONValue]:
        """Figures about the bus for /healthz."""
        return {}


class NumberingBus(Broker, ABC):
    """A bus that numbers the messages (Redis, the ZeroMQ sequencer): ids are the same in every
    process, so a client may hold a cursor from a process ahead of this one (see
    `Hub.follows_bus`). Its calls answer later, as futures (the relay adds a callback: a
    publish needs no task of its own where the bus can do without one)."""

    @abstractmethod
    def publish(self, channel: str, data: JSONValue) -> asyncio.Future[Published]:
        """Publish to every process; fails with BrokerUnavailable when the bus is away."""

    @abstractmethod
    def delete(self, channel: str) -> asyncio.Future[int | None]:
        """Delete a channel everywhere: the number of subscribers told, None if the channel
        held nothing."""

    @abstractmethod
    def info(self, channel: str, now_ms: int) -> asyncio.Future[ChannelInfo]:
        """A channel's subscribers over every process, its buffered count and last id."""

    @abstractmethod
    def presence_elsewhere(self, channels: list[str]) -> asyncio.Future[dict[str, RemoteView]]:
        """Who the other processes hold on `channels`, as they last reported (each reports its
        `Presence.report` every second or two): a view per channel held anywhere else."""
