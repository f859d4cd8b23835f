"""The application: routes requests to the transport modules, publishes and deletes (POST and
DELETE /pub/{channel}, through the relay to the broker, so they reach every process on the bus),
and keeps what the transports share (`web/types.py` says what that is; this module implements
it, and only the server imports it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

from tidings.auth import Auth, PublicChannels, token_of
from tidings.auth_backend import BackendAuth
from tidings.brokers import Broker
from tidings.config import Settings
from tidings.encoding import decode_json, encode_json
from tidings.errors import TidingsError
from tidings.hub import JSONValue, Published, parse_channels, validate_channel, wall_clock_ms
from tidings.presence import Identity, user_name
from tidings.relay import Relay
from tidings.web import info, longpoll, metrics, openapi, params, sse, static, stream, websocket
from tidings.web.errors import failing, http_error
from tidings.web.forwarded import ForwardedHeaders
from tidings.web.http import HttpConnection, HttpError, Limits, Request, TurnBatcher
from tidings.web.origin import OriginPolicy
from tidings.web.registry import StreamRegistry
from tidings.web.siblings import Siblings
from tidings.web.wheel import TimeoutWheel

log = logging.getLogger("tidings")


class App:
    """Implements `tidings.web.types.Services` for the transports."""

    def __init__(self, settings: Settings, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.hub = hub = broker.hub
        self.loop = loop
        self.relay = Relay(broker, loop)
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
            self.auth = Auth(settings.auth_secret, pem)
        self.backend: BackendAuth | None = None
        if settings.auth_url:
            self.backend = BackendAuth(
                settings.auth_url, settings.auth_url_headers, settings.auth_url_ttl, settings.auth_url_timeout
            )
        self.public = PublicChannels(settings.public_channels)
        # The headers an authorization reads: the token's, and those forwarded to --auth-url.
        forwarded = self.backend.header_bytes if self.backend else ()
        self.credential_headers = frozenset((b"authorization", b"cookie", *forwarded))
        self.stats = metrics.Stats()
        self.metrics = metrics.Metrics(
            hub, self.relay, self.stats, self.connections, self.backend.seconds if self.backend else None
        )
        if self.relay.bus is not None:  # (a channel's first listener reads the other processes' presence at once)
            hub.presence.first_listener = self._refresh_presence_soon
        self.siblings: Siblings | None = None  # set by the server in a worker of --workers N
        self.on_count: Callable[[int], None] | None = None  # told the open connections' count (the acceptor)
        self._sweeper: asyncio.TimerHandle | None = None
        self.stopping = False

    # -- lifecycle

    def start(self) -> None:
        self.streams.start()
        self._sweep()
        if self.siblings is not None:
            self.siblings.start()

    def _refresh_presence_soon(self) -> None:
        self.loop.call_soon(self.relay.refresh_presence)

    def snapshot(self) -> dict[str, JSONValue]:
        """This worker's figures, for the others to answer with (`web/siblings.py`)."""
        return {"health": info.health_figures(self), "metrics": self.metrics.exposition().decode()}

    def _sweep(self) -> None:
        self.hub.sweep(wall_clock_ms())
        self.relay.refresh_presence()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def stop(self) -> None:
        """Answer held long-polls, end streams, close idle connections."""
        self.stopping = True
        self.hub.presence.silent = True  # (every client goes now: that is no news to the others)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.siblings is not None:
            self.siblings.stop()
        self.streams.stop()
        # Held long-polls are answered below; connection deadlines (keep-alive, slow requests) stop
        # firing too, which the drain does not need: it lasts --shutdown-grace, then all close.
        self.timeouts.stop()
        for conn in list(self.connections):
            conn.shutdown()

    def close(self) -> None:
        """After the drain: what the application holds beyond its connections."""
        if self.backend is not None:
            self.backend.close()

    def connection_opened(self, conn: HttpConnection) -> None:
        limit = self.settings.max_connections
        if limit and len(self.connections) >= limit:
            conn.refuse(HttpError(503, "too_many_connections", f"this server holds at most {limit} connections"))
            return
        self.connections.add(conn)
        if self.on_count is not None:
            self.on_count(len(self.connections))

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self.on_count is not None:
            self.on_count(len(self.connections))

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
        except TidingsError as exc:
            raise http_error(exc) from None

    def check_origin(self, request: Request) -> None:
        """Before a request acts (WebSocket, publish, delete): 403 for a page on an origin that
        may not; where the browser's own credentials may not stand for the user (see
        web/origin.py), they are dropped — the cookie, and an Authorization a browser adds by
        itself (Basic, Negotiate): only a bearer token the page presents is its own."""
        if not self.origins.check_acting(request):
            _drop_browser_credentials(request)

    def check_reader(self, request: Request) -> None:
        """Before a read (a subscription, /channels): a page on another site, not listed, does not
        lend it the browser's credentials either (`OriginPolicy.vouches`)."""
        if not self.origins.vouches(request):
            _drop_browser_credentials(request)

    def authorize(
        self,
        request: Request,
        action: str,
        channels: Sequence[str],
        transport: str,
        proceed: Callable[[], None],
        fail: Callable[[Exception], None],
    ) -> None:
        # The order: public channels need nothing; then the token, checked here; then, for the
        # channels no token grants, the application (--auth-url). Either may grant.
        if action == "subscribe" and request.identity is None:
            self._identify(request)
        needed = self.public.guarded(action, channels)
        if not needed or (self.auth is None and self.backend is None):
            proceed()
            return

        def later() -> None:  # (proceeding after the application answered: errors are answers)
            try:
                proceed()
            except TidingsError as exc:
                fail(exc)
            except Exception as exc:
                log.exception("error after an --auth-url check")
                fail(exc)

        try:
            if self.auth is not None:
                needed = self._ungranted_by_token(request, action, needed)
            allowed = not needed
            if needed:
                assert self.backend is not None  # (else the token's refusal was raised)
                allowed = self.backend.check(request, action, needed, transport, later, self._refusing(fail))
        except HttpError as exc:
            raise self._counted(exc) from None
        if allowed:
            proceed()

    def keep_credentials(self, request: Request) -> None:
        kept = self.credential_headers
        request.raw_headers = [(name, value) for name, value in request.raw_headers if name.lower() in kept]

    def _identify(self, request: Request) -> None:
        """Who a subscriber is, for presence, before any check names them (a public channel
        needs none): a valid token's subject; on a server with no authentication at all, the
        name the client gives itself (`?user=`: unverified, as anyone may publish as anyone
        there; elsewhere ignored, but a malformed one is a 400 everywhere)."""
        given = params.query(request).get("user")
        if given is not None and user_name(given) is None:
            raise HttpError(400, "invalid_parameter", "user is 1-128 characters, none of them a control character")
        if self.auth is not None:
            token = token_of(request)
            if token:
                with contextlib.suppress(HttpError):
                    request.identity = self.auth.grants(token).who
        elif self.backend is None and given is not None:
            request.identity = Identity(given, verified=False)

    def _ungranted_by_token(self, request: Request, action: str, channels: list[str]) -> list[str]:
        """What the request's token leaves to the application; without --auth-url to ask, a
        refusal raises (401 no or bad token, 403 not these channels)."""
        assert self.auth is not None
        if self.backend is None:
            self.auth.check(request, action, channels)
            return []
        try:
            return self.auth.ungranted(request, action, channels)
        except HttpError:
            return channels  # (no token, or a bad one: the application may still say yes)

    def _while_open(self, conn: HttpConnection, then: Callable[[], None]) -> Callable[[], None]:
        """`then`, unless the client has gone meanwhile (an --auth-url check takes a while), or
        the server has begun to stop (a stream begun now would outlive the drain's notice)."""

        def go() -> None:
            if conn.closed:
                return
            if self.stopping:
                raise HttpError(503, "shutting_down", "the server is stopping")
            then()

        return go

    def _refusing(self, fail: Callable[[Exception], None]) -> Callable[[Exception], None]:
        return lambda error: fail(self._counted(error))

    def _counted(self, error: Exception) -> Exception:
        if isinstance(error, HttpError) and error.status in (401, 403):
            self.stats.auth_failures += 1
        return error

    def check_room(self, channels: tuple[str, ...]) -> None:
        """403 when a channel already has as many subscribers here as allowed."""
        limit = self.settings.max_subscribers_per_channel
        if limit:
            for name in channels:
                ch = self.hub.get(name)
                if ch is not None and ch.subscribers >= limit:
                    raise HttpError(403, "too_many_subscribers", f"channel {name} has {limit} subscribers already")

    def _route(self, request: Request, conn: HttpConnection) -> None:
        # HEAD is answered like GET without the body (`HttpConnection.respond`) wherever the
        # answer is immediate; subscriptions refuse it (405): an answer that waits for a message
        # or never ends has no headers worth asking for on their own.
        method = request.method
        head, _, rest = request.path[1:].partition("/")
        subscribe = _SUBSCRIPTIONS.get(head)
        if subscribe is not None and (rest or head == "ws"):
            _allow(method, "GET")
            channels = parse_channels(rest) if rest else ()
            if head == "sub" and "text/event-stream" in request.header(b"accept"):
                head, subscribe = "sse", sse.subscribe  # the same resource, as Server-Sent Events
            if head == "ws":
                self.check_origin(request)
            else:
                self.check_reader(request)

            def subscribing(begin: Callable[..., None] = subscribe) -> None:
                self.check_room(channels)
                begin(self, request, conn, channels)

            then = self._while_open(conn, subscribing)
            self.authorize(request, "subscribe", channels, _TRANSPORT_NAMES[head], then, failing(conn))
        elif head == "pub" and rest:
            _allow(method, "POST", "DELETE")
            self.check_origin(request)
            validate_channel(rest)

            def publishing() -> None:
                if method == "POST":
                    data = message_data(request)
                    self.relay.publish(rest, data, lambda result: _answer_publish(conn, result), failing(conn))
                else:
                    self.relay.delete(rest, lambda told: _answer_delete(conn, rest, told), failing(conn))

            action = "publish" if method == "POST" else "delete"
            self.authorize(request, action, [rest], "http", self._while_open(conn, publishing), failing(conn))
        elif head == "channels" and rest:
            _allow(method, "GET", "HEAD")
            name, _, what = rest.partition("/")
            validate_channel(name)
            self.check_reader(request)
            if what == "presence":
                answer = self._while_open(conn, lambda: info.presence(self, request, conn, name))
            elif not what:
                answer = self._while_open(conn, lambda: info.channel(self, conn, name))
            else:
                raise HttpError(404, "not_found", f"no such resource: {request.path[:200]}")
            self.authorize(request, "subscribe", [name], "http", answer, failing(conn))
        elif request.path == "/metrics":
            _allow(method, "GET", "HEAD")
            if self.siblings is None:
                self.metrics.serve(conn)
            else:
                self.metrics.serve(conn, self.siblings.worker, self.siblings.others())
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


def _drop_browser_credentials(request: Request) -> None:
    request.raw_headers = [(name, value) for name, value in request.raw_headers if _page_presented(name, value)]


def _page_presented(name: bytes, value: bytes) -> bool:
    """Whether a header is not a credential a browser attaches by itself (see `check_origin`)."""
    lowered = name.lower()
    if lowered == b"cookie":
        return False
    return lowered != b"authorization" or value[:7].lower() == b"bearer "


def message_data(request: Request) -> JSONValue:
    """A JSON body is parsed, a form body becomes an object of its fields, anything else is
    a UTF-8 string."""
    content_type = request.header(b"content-type").partition(";")[0].strip().lower()
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_body", "the message body is not valid UTF-8") from None
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return decode_json(text)
        except ValueError as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if content_type == "application/x-www-form-urlencoded":
        fields: dict[str, JSONValue] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            previous = fields.get(key)
            if previous is None:
                fields[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                fields[key] = [previous, value]
        return fields
    return text


def _answer_publish(conn: HttpConnection, result: Published) -> None:
    # Channel names and ids need no JSON escaping (validated characters, digits).
    body = b'{"id":"%s","channel":"%s","subscribers":%d}' % (
        str(result.id).encode(),
        result.channel.encode(),
        result.subscribers,
    )
    conn.respond(201 if result.subscribers else 202, body)


def _answer_delete(conn: HttpConnection, channel: str, told: int | None) -> None:
    # Every valid name is a channel, empty until used (as GET /channels/{channel} answers), so
    # deleting one that holds nothing succeeds too: whether a broker still kept it is a matter
    # of when it was last reclaimed or expired, not something for a status code to depend on.
    conn.respond(200, encode_json({"channel": channel, "deleted": True, "subscribers": told or 0}))


_TRANSPORT_NAMES = {"sub": "longpoll", "sse": "sse", "stream": "stream", "ws": "websocket"}  # (for --auth-url)
_SUBSCRIPTIONS = {
    "sub": longpoll.subscribe,
    "sse": sse.subscribe,
    "stream": stream.subscribe,
    "ws": websocket.subscribe,
}


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{method} is not allowed here; use {' or '.join(allowed)}",
            headers=b"Allow: %s\r\n" % ", ".join(allowed).encode(),
        )
