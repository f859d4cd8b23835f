"""Message buses behind one interface; the hub never knows which one is in use."""

from tidings.brokers.base import Broker, BrokerUnavailable, Published
from tidings.config import Settings
from tidings.hub import Hub


def create_broker(settings: Settings, hub: Hub) -> Broker:
    """The broker `settings.broker` names: ``memory`` (the default, embedded) or a Redis URL
    (``redis://host:port/db``, ``rediss://``, ``unix://``)."""
    url = settings.broker
    if url in ("memory", "memory://"):
        from tidings.brokers.memory import MemoryBroker

        return MemoryBroker(hub)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tidings.brokers.redis import RedisBroker

        return RedisBroker(hub, url, settings.redis_prefix)
    raise ValueError(f"unknown broker {url!r} (supported: memory, redis://host:port/db)")


__all__ = ["Broker", "BrokerUnavailable", "Published", "create_broker"]
