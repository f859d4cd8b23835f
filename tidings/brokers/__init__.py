"""Message buses behind one interface; the hub never knows which one is in use."""

from tidings.brokers.base import Broker, NumberingBus
from tidings.config import Settings
from tidings.hub import Hub, wall_clock_ms

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def create_broker(settings: Settings) -> Broker:
    """The broker `settings.broker` names, feeding a new hub made for it (`broker.hub`):
    ``memory`` (the default, embedded), a Redis URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``) or a sequencer (`tidings zmq-proxy`: ``zmq://host:port1,port2,port3``,
    ``zmq:ENDPOINT1,ENDPOINT2,ENDPOINT3``, or its Unix socket ``zmq+unix:PATH``)."""
    url = settings.broker
    redis = url.startswith(REDIS_SCHEMES)
    if settings.redis_subscribe and not redis:
        raise ValueError("--redis-subscribe needs a Redis broker (--broker redis://host:port/db)")
    if url in ("memory", "memory://"):
        from tidings.brokers.memory import MemoryBroker

        return MemoryBroker(_hub(settings, MemoryBroker))
    if redis:
        from tidings.brokers.redis import RedisBroker

        return RedisBroker(_hub(settings, RedisBroker), url, settings.redis_prefix, settings.redis_subscribe)
    if url.startswith(("zmq:", "zmq+unix:")):
        from tidings.brokers.zmq import ZmqBroker

        return ZmqBroker(_hub(settings, ZmqBroker), url)
    raise ValueError(
        f"unknown broker {url!r} (supported: memory, redis://host:port/db, zmq://host:port1,port2,port3, zmq+unix:PATH)"
    )


def _hub(settings: Settings, broker: type[Broker]) -> Hub:
    """This process's hub, set for the broker that will feed it (see `Hub`)."""
    return Hub(
        buffer_size=settings.buffer_size,
        buffer_ttl=settings.buffer_ttl,
        now_ms=wall_clock_ms(),
        follows_bus=issubclass(broker, NumberingBus),
        buffers_are_cache=broker.keeps_history,
        max_channels=settings.max_channels,
        max_buffered_bytes=settings.max_buffered_bytes,
        presence_grace=settings.presence_grace,
    )


__all__ = ["Broker", "NumberingBus", "create_broker"]
