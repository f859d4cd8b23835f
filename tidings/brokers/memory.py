"""The embedded default: one process, nothing to install or run. The hub's own ring
buffers are the history and the hub assigns ids. (The ZeroMQ broker is this one with a
forwarder between processes.)"""

from __future__ import annotations

from tidings.brokers.base import Broker, Published
from tidings.hub import JSONValue, wall_clock_ms


class MemoryBroker(Broker):
    name = "memory"

    def publish(self, channel: str, data: JSONValue) -> Published:
        now = wall_clock_ms()
        message = self.hub.make_message(channel, data, now)
        reached = self.hub.ingest(message, now)
        return Published(message.id, channel, reached)

    def delete(self, channel: str) -> int | None:
        return self.hub.delete(channel)
