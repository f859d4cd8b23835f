"""The interface every bus implements.

A broker owns where ids come from and how a published message reaches every process;
it hands each message to the local hub with `hub.ingest`, which delivers it to this
process's subscribers. Transports talk to the hub for joining and waiting, and to the
broker only through the relay (`tidings/relay.py`), which handles its answers coming at
once or as awaitables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass

from tidings.hub import ChannelInfo, Cursor, Hub, JSONValue, MessageId


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Stop a broker's background tasks and wait until they have."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def foreign_data(payload: bytes) -> JSONValue:
    """The data of a message some other program put on the bus (redis-cli PUBLISH, a ZeroMQ
    publisher without our framing): a JSON object or array as such, anything else as text."""
    text = payload.decode("utf-8", "replace")
    if text[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return text


@dataclass(frozen=True, slots=True)
class Published:
    id: MessageId
    channel: str
    subscribers: int


class Broker(ABC):
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

    # publish and delete answer at once when the broker can (the in-memory one always
    # can: no task, no extra loop turn per publish); a broker that must talk to a bus
    # returns an awaitable instead.

    @abstractmethod
    def publish(self, channel: str, data: JSONValue) -> Published | Awaitable[Published]:
        """Publish to every process; raises (or the awaitable raises) BrokerUnavailable."""

    @abstractmethod
    def delete(self, channel: str) -> int | Awaitable[int | None] | None:
        """Delete a channel everywhere; the number of subscribers told, None if the
        channel did not exist."""

    def info(self, channel: str, now_ms: int) -> ChannelInfo | Awaitable[ChannelInfo]:
        """A channel's subscribers (over every process on the bus), buffered count, last id."""
        return self.hub.info(channel, now_ms)

    # A broker that keeps history of its own (beyond this process's buffers) fills in
    # reads the hub cannot answer completely; the hub's buffers are then a cache of it.
    keeps_history = False

    # A broker whose ids are the same in every process: a client may hold a cursor from a
    # process ahead of this one (see `Hub.follows_bus`).
    follows_bus = False

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
