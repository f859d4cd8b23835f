"""The application: routes requests to the transport modules and keeps what they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from tidings.brokers import Broker
from tidings.config import Settings
from tidings.hub import Hub, TidingsError, parse_channels, wall_clock_ms
from tidings.web import info, longpoll, publish, sse, static, stream
from tidings.web.batch import TurnBatcher
from tidings.web.http import HttpConnection, HttpError, Limits, Request
from tidings.web.streaming import StreamRegistry
from tidings.web.wheel import TimeoutWheel

log = logging.getLogger("tidings")


class App:
    def __init__(self, settings: Settings, hub: Hub, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.hub = hub
        self.broker = broker
        self.loop = loop
        self.limits = Limits(
            max_url_bytes=settings.max_url_bytes,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            max_body_bytes=settings.max_message_bytes,
            request_timeout=settings.request_timeout,
            keepalive_timeout=settings.keepalive_timeout,
        )
        self.connections: set[HttpConnection] = set()
        self.batcher = TurnBatcher(loop)
        self.timeouts = TimeoutWheel(loop)
        self.streams = StreamRegistry(loop, settings.heartbeat, settings.stream_buffer_bytes)
        self.static = static.StaticFiles()
        self.tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    # -- lifecycle

    def start(self) -> None:
        self.streams.start()
        self._sweep()

    def _sweep(self) -> None:
        self.hub.sweep(wall_clock_ms())
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def stop(self) -> None:
        """Answer held long-polls, end streams, close idle connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.streams.stop()
        self.timeouts.stop()
        for conn in list(self.connections):
            conn.shutdown()

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run request work that must await (a publish through the broker)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- routing

    def handle(self, request: Request, conn: HttpConnection) -> None:
        try:
            self._route(request, conn)
        except TidingsError as exc:
            raise HttpError(400, exc.code, exc.detail) from None

    def _route(self, request: Request, conn: HttpConnection) -> None:
        method = request.method
        head, _, rest = request.path[1:].partition("/")
        if head == "sub" and rest:
            _allow(method, "GET")
            channels = parse_channels(rest)
            if "text/event-stream" in request.header(b"accept"):
                sse.subscribe(self, request, conn, channels)
            else:
                longpoll.subscribe(self, request, conn, channels)
        elif head == "pub" and rest:
            _allow(method, "POST", "DELETE")
            if method == "POST":
                publish.publish(self, request, conn, rest)
            else:
                publish.delete(self, request, conn, rest)
        elif head == "sse" and rest:
            _allow(method, "GET")
            sse.subscribe(self, request, conn, parse_channels(rest))
        elif head == "stream" and rest:
            _allow(method, "GET")
            stream.subscribe(self, request, conn, parse_channels(rest))
        elif head == "channels" and rest:
            _allow(method, "GET", "HEAD")
            info.channel(self, conn, rest)
        elif request.path == "/healthz":
            _allow(method, "GET", "HEAD")
            info.health(self, conn)
        elif method in ("GET", "HEAD") and self.static.serve(request.path, conn):
            pass
        else:
            raise HttpError(404, "not_found", f"no such resource: {request.path[:200]}")


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(405, "method_not_allowed", f"{method} is not allowed here; use {' or '.join(allowed)}")
