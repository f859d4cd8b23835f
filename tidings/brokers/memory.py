"""The embedded default: one process, nothing to install or run. The hub's own ring
buffers are the history and the hub numbers the messages: the relay publishes into it
(`Hub.publish`)."""

from __future__ import annotations

from tidings.brokers.base import Broker


class MemoryBroker(Broker):
    name = "memory"
