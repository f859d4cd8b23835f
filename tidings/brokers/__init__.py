"""Message buses behind one interface; the hub never knows which one is in use."""

from tidings.brokers.base import Broker, Published
from tidings.config import Settings
from tidings.hub import Hub


def create_broker(settings: Settings, hub: Hub) -> Broker:
    """The broker `settings.broker` names: ``memory`` (the default, embedded), a Redis URL
    (``redis://host:port/db``, ``rediss://``, ``unix://``) or a ZeroMQ forwarder
    (``zmq://host:port1,port2``, ``zmq:ENDPOINT1,ENDPOINT2``)."""
    url = settings.broker
    redis = url.startswith(("redis://", "rediss://", "unix://"))
    if settings.redis_subscribe and not redis:
        raise ValueError("--redis-subscribe needs a Redis broker (--broker redis://host:port/db)")
    if url in ("memory", "memory://"):
        from tidings.brokers.memory import MemoryBroker

        return MemoryBroker(hub)
    if redis:
        from tidings.brokers.redis import RedisBroker

        return RedisBroker(hub, url, settings.redis_prefix, settings.redis_subscribe)
    if url.startswith("zmq:"):
        from tidings.brokers.zmq import ZmqBroker

        return ZmqBroker(hub, url)
    raise ValueError(f"unknown broker {url!r} (supported: memory, redis://host:port/db, zmq://host:port1,port2)")


__all__ = ["Broker", "Published", "create_broker"]
