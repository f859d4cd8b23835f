"""The application: routes requests to the transport modules and keeps what they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tidings.auth import Auth
from tidings.brokers import Broker
from tidings.config import Settings
from tidings.errors import BrokerUnavailable, InvalidInput, OverCapacity
from tidings.hub import DEFAULT_BATCH, Batch, Cursor, Hub, parse_channels, wall_clock_ms
from tidings.web import info, longpoll, metrics, openapi, publish, sse, static, stream, websocket
from tidings.web.batch import TurnBatcher
from tidings.web.forwarded import ForwardedHeaders
from tidings.web.http import HttpConnection, HttpError, Limits, Request, error_body
from tidings.web.origin import OriginPolicy
from tidings.web.streaming import StreamRegistry
from tidings.web.wheel import TimeoutWheel

log = logging.getLogger("tidings")
T = TypeVar("T")
# A memory cap of this process reached (`OverCapacity`): not 503, the server is available (what
# exists keeps working) and no honest Retry-After can be given; storage for this request is what
# is missing.
INSUFFICIENT_STORAGE = 507


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
            access_log=settings.access_log,
        )
        self.connections: set[HttpConnection] = set()
        self.batcher = TurnBatcher(loop)
        self.timeouts = TimeoutWheel(loop)
        self.streams = StreamRegistry(loop, settings.heartbeat, settings.stream_buffer_bytes)
        self.static = static.StaticFiles()
        self.openapi = openapi.document(settings)
        self.origins = OriginPolicy(settings.cors_origin)
        self.forwarded = ForwardedHeaders(settings.forwarded_allow_ips) if settings.forwarded_allow_ips else None
        self.auth: Auth | None = None
        if settings.auth_secret or settings.auth_public_key:
            try:
                pem = Path(settings.auth_public_key).read_text() if settings.auth_public_key else ""
            except OSError as exc:
                raise ValueError(f"--auth-public-key: cannot read {settings.auth_public_key}: {exc.strerror}") from None
            self.auth = Auth(settings.auth_secret, pem, settings.public_channels)
        self.stats = metrics.Stats()
        self.metrics = metrics.Metrics(self)
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
        limit = self.settings.max_connections
        if limit and len(self.connections) >= limit:
            conn.refuse(HttpError(503, "too_many_connections", f"this server holds at most {limit} connections"))
            return
        self.connections.add(conn)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run request work that must await (a publish through the broker)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def call_broker(
        self,
        conn: HttpConnection,
        call: Callable[[], T | Awaitable[T]],
        answer: Callable[[T], None],
        on_error: Callable[[int, str, str], None] | None = None,
    ) -> None:
        """Run a broker call and answer with its result: at once when the broker answered at
        once, from a task when it returned an awaitable. Every failure gets an answer (by
        default an HTTP error response; `on_error(status, error, detail)` otherwise)."""

        def fail(status: int, error: str, detail: str) -> None:
            if on_error is None:
                conn.respond(status, error_body(error, detail))
            else:
                on_error(status, error, detail)

        try:
            result = call()
        except BrokerUnavailable as exc:
            fail(503, "broker_unavailable", str(exc))
            return
        except OverCapacity as exc:
            fail(INSUFFICIENT_STORAGE, exc.code, exc.detail)
            return
        if isinstance(result, Awaitable):
            self.spawn(self._answer_later(result, answer, fail))
        else:
            answer(result)

    async def _answer_later(
        self, pending: Awaitable[T], answer: Callable[[T], None], fail: Callable[[int, str, str], None]
    ) -> None:
        try:
            result = await pending
        except BrokerUnavailable as exc:
            fail(503, "broker_unavailable", str(exc))
            return
        except Exception:
            log.exception("broker call failed")
            fail(500, "internal_error", "the broker call failed")
            return
        answer(result)

    def read(
        self,
        conn: HttpConnection,
        channels: tuple[str, ...],
        cursor: Cursor,
        then: Callable[[Batch], None],
        limit: int | None = DEFAULT_BATCH,
    ) -> None:
        """Read after `cursor` and continue with `then(batch)`: at once from this process's
        buffers, or — when they do not reach back to the cursor and the broker keeps history
        — after the broker has filled them in. With the broker unreachable, the local answer
        stands (a gap at worst)."""
        broker = self.broker
        if broker.needs_activation and not broker.ready(channels):
            self.spawn(self._read_through(conn, channels, cursor, then, limit))
            return
        batch = self.hub.read(channels, cursor, wall_clock_ms(), limit)
        if batch.incomplete and broker.keeps_history:
            self.spawn(self._read_through(conn, channels, cursor, then, limit, batch.incomplete))
        else:
            then(batch)

    async def _read_through(
        self,
        conn: HttpConnection,
        channels: tuple[str, ...],
        cursor: Cursor,
        then: Callable[[Batch], None],
        limit: int | None,
        incomplete: list[str] | None = None,
    ) -> None:
        try:
            if incomplete is None:  # the channels are not subscribed on the bus yet
                await self.broker.activate(channels)
                incomplete = []
                if self.broker.keeps_history:  # (a bus without history has nothing to fill in)
                    incomplete = self.hub.read(channels, cursor, wall_clock_ms(), limit).incomplete
            if incomplete:
                await self.broker.fill(incomplete, cursor)
        except BrokerUnavailable as exc:
            log.debug("history not available, answering from local buffers: %s", exc)
        if conn.closed:
            return
        try:
            then(self.hub.read(channels, cursor, wall_clock_ms(), limit))
        except Exception:
            log.exception("error while answering a read")
            conn.respond_error(HttpError(500, "internal_error", "the server failed to handle the request"))

    # -- routing

    def handle(self, request: Request, conn: HttpConnection) -> None:
        if self.forwarded is not None:
            self.forwarded.apply(request)
        origins = self.origins
        if origins.cors:
            origin = request.header(b"origin")
            if origin and origins.allows(origin):
                conn.response_headers = origins.cors_headers(origin)
                if request.method == "OPTIONS" and request.header(b"access-control-request-method"):
                    conn.respond(204, b"", extra_headers=origins.preflight)
                    return
        try:
            self._route(request, conn)
        except InvalidInput as exc:
            raise HttpError(400, exc.code, exc.detail) from None

    def check_origin(self, request: Request) -> None:
        """Before a request acts (WebSocket, publish, delete): 403 for a page on an origin that
        may not; the cookie is dropped where it may not stand for the user (see web/origin.py)."""
        if not self.origins.check_acting(request):
            request.raw_headers = [(name, value) for name, value in request.raw_headers if name.lower() != b"cookie"]

    def authorize(self, request: Request, action: str, channels: tuple[str, ...] | list[str]) -> None:
        if self.auth is not None:
            try:
                self.auth.check(request, action, channels)
            except HttpError:
                self.stats.auth_failures += 1
                raise

    def check_room(self, channels: tuple[str, ...]) -> None:
        """403 when a channel already has as many subscribers here as allowed."""
        limit = self.settings.max_subscribers_per_channel
        if limit:
            for name in channels:
                ch = self.hub.get(name)
                if ch is not None and ch.subscribers >= limit:
                    raise HttpError(403, "too_many_subscribers", f"channel {name} has {limit} subscribers already")

    def make_room(self, channels: tuple[str, ...]) -> None:
        """507 when holding `channels` would take this process past --max-channels: checked as
        a stream or WebSocket arrives, and as a long-poll is about to wait (one answered at once
        holds nothing). A stream that first waits on the bus (ZeroMQ activation, Redis
        history) is checked as it arrives: several in flight together may take it a few past."""
        try:
            self.hub.make_room(channels)
        except OverCapacity as exc:
            raise HttpError(INSUFFICIENT_STORAGE, exc.code, exc.detail) from None

    def _route(self, request: Request, conn: HttpConnection) -> None:
        # HEAD is answered like GET without the body (`HttpConnection.respond`) wherever the
        # answer is immediate; subscriptions refuse it (405): an answer that waits for a message
        # or never ends has no headers worth asking for on their own.
        method = request.method
        head, _, rest = request.path[1:].partition("/")
        if head == "sub" and rest:
            _allow(method, "GET")
            channels = parse_channels(rest)
            self.authorize(request, "subscribe", channels)
            self.check_room(channels)
            if "text/event-stream" in request.header(b"accept"):
                self.make_room(channels)
                sse.subscribe(self, request, conn, channels)
            else:
                longpoll.subscribe(self, request, conn, channels)
        elif head == "pub" and rest:
            _allow(method, "POST", "DELETE")
            self.check_origin(request)
            self.authorize(request, "publish", [rest])
            if method == "POST":
                publish.publish(self, request, conn, rest)
            else:
                publish.delete(self, request, conn, rest)
        elif head in ("sse", "stream", "ws") and (rest or head == "ws"):
            _allow(method, "GET")
            channels = parse_channels(rest) if rest else ()
            if head == "ws":
                self.check_origin(request)
            self.authorize(request, "subscribe", channels)
            self.check_room(channels)
            self.make_room(channels)
            _STREAMS[head](self, request, conn, channels)
        elif head == "channels" and rest:
            _allow(method, "GET", "HEAD")
            self.authorize(request, "subscribe", [rest])
            info.channel(self, conn, rest)
        elif request.path == "/metrics":
            _allow(method, "GET", "HEAD")
            metrics.serve(self, conn)
        elif request.path == "/openapi.json":
            _allow(method, "GET", "HEAD")
            conn.respond(200, self.openapi)
        elif request.path == "/healthz":
            _allow(method, "GET", "HEAD")
            info.health(self, conn)
        elif request.path in self.static.files:
            _allow(method, "GET", "HEAD")
            self.static.serve(request.path, conn)
        else:
            raise HttpError(404, "not_found", f"no such resource: {request.path[:200]}")


_STREAMS = {"sse": sse.subscribe, "stream": stream.subscribe, "ws": websocket.subscribe}


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{method} is not allowed here; use {' or '.join(allowed)}",
            headers=b"Allow: %s\r\n" % ", ".join(allowed).encode(),
        )
