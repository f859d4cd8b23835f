"""Message buses behind one interface; the hub never knows which one is in use."""

from tidings.brokers.base import Broker, BrokerUnavailable, Published
from tidings.hub import Hub


def create_broker(url: str, hub: Hub) -> Broker:
    """A broker from its URL: ``memory`` (the default, embedded)."""
    if url in ("memory", "memory://"):
        from tidings.brokers.memory import MemoryBroker

        return MemoryBroker(hub)
    raise ValueError(f"unknown broker {url!r} (supported: memory)")


__all__ = ["Broker", "BrokerUnavailable", "Published", "create_broker"]
