"""The HTTP/1.1 edge: one asyncio Protocol per connection, parsing with httptools.

It owns what a framework would: keep-alive, pipelining (requests queued while one is
held), limits on the request line, headers and body, and the slow-header and idle
timeouts. A request is handed to the application, which answers at once, holds the
connection (`hold`) or starts a stream; holding costs an attribute, not a task. The bytes
of every answer come from `tidings.web.h1`; the states are the table below `State`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, cast
from urllib.parse import unquote

import httptools

from tidings.errors import TidingsError
from tidings.presence import Identity
from tidings.web.deadline import Deadline
from tidings.web.h1 import (
    JSON_TYPE,
    chunk,
    error_body,
    response_bytes,
    shared_response,
    stream_end,
    stream_head,
)
from tidings.web.wheel import TimeoutWheel

log = logging.getLogger("tidings.http")
access_log = logging.getLogger("tidings.access")


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_bytes: int = 8192
    max_header_count: int = 100
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    request_timeout: float = 10.0  # from a request's first byte until it is complete
    keepalive_timeout: float = 75.0  # idle between requests
    max_pipelined: int = 16
    access_log: bool = False


class Request:
    __slots__ = (
        "body",
        "client",
        "http11",
        "identity",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_headers",
        "raw_path",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http11: bool,
        client: str = "-",
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        self.query_string = query_string
        self.raw_headers = raw_headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        # Who asked, and over which scheme: the peer and plain http, unless a trusted reverse
        # proxy says otherwise (tidings.web.forwarded).
        self.client = client
        self.scheme = "http"
        self.identity: Identity | None = None  # who the client is, once authorised (presence)

    def header(self, name: bytes) -> str:
        """One header's value ("" when absent) without decoding the others; `name` lower-case."""
        for key, value in self.raw_headers:
            if len(key) == len(name) and key.lower() == name:
                return value.decode("latin-1")
        return ""

    def header_list(self, name: bytes) -> list[str]:
        """Every item of a list-valued header, over all its lines in order (RFC 9110 5.3: a
        proxy may add a line of its own instead of extending the first); `name` lower-case."""
        items: list[str] = []
        for key, value in self.raw_headers:
            if len(key) == len(name) and key.lower() == name:
                items.extend(item.strip() for item in value.decode("latin-1").split(","))
        return [item for item in items if item]


class HttpError(TidingsError):
    """Answer `status` with the JSON error `code` and, when `close`, drop the connection
    afterwards. The errors of the core (`tidings.errors`) know no statuses; this one is what
    exists only at the HTTP edge (a method not allowed, headers too large, a bad handshake)
    and what the web layer makes of the core's when it answers."""

    def __init__(self, status: int, code: str, detail: str, close: bool = False, headers: bytes = b"") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.close = close
        self.headers = headers  # extra header lines, each ending in CRLF (e.g. Allow on a 405)


class Held(Protocol):
    """What keeps a connection busy past its request (a long-poll, a stream)."""

    @property
    def transport(self) -> str:
        """What /metrics counts the connection as: longpoll, sse, stream or ws."""

    def release(self) -> None:
        """The connection is gone: forget it."""

    def shutdown(self) -> None:
        """The server is stopping: answer or end now."""


class Upgraded(Held, Protocol):
    """What holds a connection after a protocol upgrade: it gets the raw bytes."""

    def receive(self, data: bytes) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


class TurnBatcher:
    """Writes collected during one loop turn and done together at its end.

    A publish marks its subscribers due and returns at once (so its own answer is not held up
    by the fan-out); one callback per loop turn then flushes every due subscriber (a woken
    long-poll, a stream), which merges whatever it gathered in the meantime into one write."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: list[Flushable] = []

    def schedule(self, item: Flushable) -> None:
        """Call `item.flush()` at the end of this loop turn (callers schedule an item once)."""
        if not self._due:
            self.loop.call_soon(self._run)
        self._due.append(item)

    def _run(self) -> None:
        due, self._due = self._due, []
        for item in due:
            try:
                item.flush()
            except Exception:  # (a bug in one must not leave the others unwritten for good)
                log.exception("a flush failed")


class Application(Protocol):
    def handle(self, request: Request, conn: HttpConnection) -> None: ...

    def connection_opened(self, conn: HttpConnection) -> None: ...

    def connection_closed(self, conn: HttpConnection) -> None: ...


_METHODS = {m.encode(): m for m in ("GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT")}
EARLY_BYTES = 65536  # bytes a client may send after an upgrade request before it is answered


# Theory of operation
#
# A connection carries one request at a time. Bytes arrive (`data_received`) and httptools
# calls back as a request begins and completes; a complete request goes to the application
# (`Application.handle`), which answers it at once (`respond`), holds it and answers later
# (`hold`, a long-poll), starts a stream (`start_stream`), or upgrades the connection
# (`upgrade`, a WebSocket). Requests that complete while one is being answered wait in
# `pipeline` and are handed over, in order, after the answer. A stream or an upgrade is the
# connection's last use: it ends by closing. CLOSED absorbs everything: the peer may vanish
# at any moment, and what was in flight (a held answer, a stream's write) must find nothing
# to do rather than fail.
#
#   IDLE ──request begins──▶ READING ──request read──▶ BUSY ──answered──▶ IDLE
#   IDLE ──request read (arrived whole)──▶ BUSY          BUSY ──stream begins──▶ STREAMING
#   BUSY ──upgrade (101 sent)──▶ UPGRADED ──stream begins──▶ STREAMING ──stream ends──▶ CLOSED
#   any ──close (an error, a timeout, no keep-alive, the peer left)──▶ CLOSED
#
# Timers: IDLE has the keep-alive timeout and READING the request timeout (408); the
# application's own waits have their own. `TRANSITIONS` is the whole table; `next_state` is
# the only way a state changes, and a pair not in the table is a bug (`IllegalTransition`).


class State(IntEnum):
    IDLE = 0  # between requests: the keep-alive timer runs
    READING = 1  # a request has begun and is incomplete: the request timer runs
    BUSY = 2  # the application has the request: it answers now, holds it, streams or upgrades
    UPGRADED = 3  # the 101 is sent and the bytes belong to `upgraded`; its stream has not begun
    STREAMING = 4  # a stream's head is sent; the connection ends with the stream
    CLOSED = 5  # closing or closed: every event is a no-op


class Event(IntEnum):
    REQUEST_BEGINS = 0  # httptools saw a request's first byte
    REQUEST_READ = 1  # a request is complete: dispatched, or queued behind the one in flight
    ANSWERED = 2  # the answer to the request in flight is written
    UPGRADE = 3  # the 101 is written
    STREAM_BEGINS = 4  # a stream's head (or an upgraded stream's first bytes) is written
    STREAM_ENDS = 5  # a stream's last bytes are written
    CLOSE = 6  # the connection closes, whatever it was doing


TRANSITIONS: dict[State, dict[Event, State]] = {
    State.IDLE: {
        Event.REQUEST_BEGINS: State.READING,
        Event.REQUEST_READ: State.BUSY,
        Event.CLOSE: State.CLOSED,
    },
    State.READING: {
        Event.REQUEST_READ: State.BUSY,
        Event.CLOSE: State.CLOSED,
    },
    State.BUSY: {
        Event.REQUEST_BEGINS: State.BUSY,  # pipelined: read now, answered later
        Event.REQUEST_READ: State.BUSY,
        Event.ANSWERED: State.IDLE,
        Event.UPGRADE: State.UPGRADED,
        Event.STREAM_BEGINS: State.STREAMING,
        Event.CLOSE: State.CLOSED,
    },
    State.UPGRADED: {
        # An HTTP answer cannot follow a 101 (an error after the handshake): close instead.
        Event.ANSWERED: State.CLOSED,
        Event.STREAM_BEGINS: State.STREAMING,
        Event.STREAM_ENDS: State.CLOSED,
        Event.CLOSE: State.CLOSED,
    },
    State.STREAMING: {
        Event.REQUEST_BEGINS: State.STREAMING,  # pipelined behind a stream: never answered
        Event.REQUEST_READ: State.STREAMING,
        Event.STREAM_ENDS: State.CLOSED,
        Event.CLOSE: State.CLOSED,
    },
    State.CLOSED: dict.fromkeys(Event, State.CLOSED),
}


class IllegalTransition(TidingsError):
    """`event` cannot happen in `state`: a bug in the edge or in the application using it."""

    code = "internal_error"

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event.name} cannot happen in {state.name}")
        self.state = state
        self.event = event


# The table as nested tuples, indexed by the states' and events' numbers: a transition is
# two index operations (~20 ns) where the dicts above would hash enum members.
_NEXT: tuple[tuple[State | None, ...], ...] = tuple(
    tuple(TRANSITIONS[state].get(event) for event in Event) for state in State
)


def next_state(state: State, event: Event) -> State:
    """The state after `event` in `state` (see TRANSITIONS)."""
    after = _NEXT[state][event]
    if after is None:
        raise IllegalTransition(state, event)
    return after


# Module names for the members the hot path compares and passes: `State.IDLE` is an enum class
# attribute lookup, ~65 ns on Python 3.11, against ~10 ns for a module global (measured with
# timeit); a long-poll request makes a handful of them.
IDLE, READING, BUSY, UPGRADED, STREAMING, CLOSED = State
REQUEST_BEGINS, REQUEST_READ, ANSWERED, UPGRADE, STREAM_BEGINS, STREAM_ENDS, CLOSE = Event


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_header_bytes",
        "_headers",
        "_reading_timed",
        "_url",
        "app",
        "deadline",
        "early",
        "held",
        "limits",
        "parser",
        "peer",
        "pipeline",
        "request",
        "response_headers",
        "state",
        "stopping",
        "transport",
        "upgraded",
    )

    def __init__(self, app: Application, limits: Limits, timers: TimeoutWheel) -> None:
        self.app = app
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.peer = "-"  # the client's address
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)  # None once streaming
        self.state = IDLE
        self.deadline = Deadline(timers, self._timed_out)  # keep-alive in IDLE, the request timeout in READING
        self.held: Held | None = None
        self.request: Request | None = None  # the one being answered
        self.pipeline: deque[Request] | None = None  # created when a client pipelines
        self.stopping = False
        self.upgraded: Upgraded | None = None  # after a protocol upgrade (WebSocket): gets the bytes
        self.early: bytearray | None = None  # bytes after an upgrade request the application answers later
        self.response_headers = b""  # added to every answer to the current request (CORS)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._reading_timed = False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            self.peer = peername[0]
        self.deadline.set(self.limits.keepalive_timeout)
        self.app.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state is CLOSED:
            return
        if self.upgraded is not None:
            self.upgraded.receive(data)
            return
        if self.early is not None:  # (waiting for the application to take the upgrade)
            self.early += data
            if len(self.early) > EARLY_BYTES:
                self._fail(HttpError(400, "bad_request", "too much sent before the upgrade was answered", True))
            return
        parser = self.parser
        if parser is None:  # see `_done_with_http`
            return
        try:
            parser.feed_data(data)
            if self.state is READING and not self._reading_timed:
                # A request still incomplete after this read: from now on it has a deadline.
                # (Most arrive whole in one read and never pay for a timer.)
                self._reading_timed = True
                self.deadline.set(self.limits.request_timeout)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                self._fail(cause)
            else:
                log.exception("error while parsing a request", exc_info=cause)
                self._fail(HttpError(500, "internal_error", "the server failed to read the request", True))
        except httptools.HttpParserUpgrade as exc:
            self._parser_stopped_at_upgrade(data[exc.args[0] :] if exc.args and isinstance(exc.args[0], int) else b"")
        except httptools.HttpParserError as exc:
            self._fail(HttpError(400, "bad_request", f"malformed HTTP request: {exc}", True))

    def _parser_stopped_at_upgrade(self, rest: bytes) -> None:
        """The parser stopped after a request asking for an upgrade; `rest`: what came after it.
        (A method of its own: `upgraded` may have been set while the parser ran, which the type
        checker, and so mypyc, cannot see within `data_received`, where it was seen to be None.)"""
        if self.upgraded is not None:  # the application took the upgrade: the rest is theirs
            if rest:
                self.upgraded.receive(rest)
        elif self.state is BUSY:
            # The application answers later (an --auth-url check): what follows waits for the
            # upgrade, and any other answer ends the connection (the parser stopped at it).
            self.early = bytearray(rest)
            self.stopping = True
        elif self.state is not CLOSED:
            self._fail(HttpError(400, "upgrade_not_supported", "this resource cannot be upgraded", True))

    def eof_received(self) -> bool:
        # The client went away (or half-closed): release whatever it held right now.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = next_state(self.state, CLOSE)
        self.deadline.stop()
        held, self.held = self.held, None
        if held is not None:
            held.release()
        self.pipeline = None
        self.transport = None
        self.app.connection_closed(self)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self.state = next_state(self.state, REQUEST_BEGINS)
        self._reading_timed = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            raise HttpError(414, "uri_too_long", f"request target over {self.limits.max_url_bytes} bytes", True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if len(self._headers) >= self.limits.max_header_count or self._header_bytes > self.limits.max_header_bytes:
            raise HttpError(
                431,
                "headers_too_large",
                f"at most {self.limits.max_header_count} headers and {self.limits.max_header_bytes} bytes of them",
                True,
            )
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            is_length = len(name) == 14 and name.lower() == b"content-length"
            if is_length and value.isdigit() and int(value) > self.limits.max_body_bytes:
                raise self._body_too_large()

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            raise self._body_too_large()
        self._body.append(body)

    def _body_too_large(self) -> HttpError:
        return HttpError(
            413, "body_too_large", f"request bodies are limited to {self.limits.max_body_bytes} bytes", True
        )

    def on_message_complete(self) -> None:
        url = self._url
        if url.startswith(b"/"):  # origin form, as good as every request
            path, _, query = url.partition(b"?")
            if b"#" in query:
                query = query.partition(b"#")[0]
        else:
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        parser = self.parser
        assert parser is not None  # (it is the one calling)
        try:
            method = parser.get_method()
            request = Request(
                _METHODS.get(method) or method.decode("ascii", "replace"),
                path.decode("utf-8"),
                query.decode("utf-8"),
                self._headers,
                b"".join(self._body) if self._body else b"",
                parser.should_keep_alive(),
                parser.get_http_version() == "1.1",
                self.peer,
            )
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "bad_request", "the request target is not valid UTF-8", True) from None
        self._body = []
        if self.state <= READING:  # IDLE or READING: nothing in flight
            self._dispatch(request)
            return
        self.state = next_state(self.state, REQUEST_READ)
        if self.state is CLOSED:  # read behind an answer that closed: dropped
            return
        # Queued behind the request in flight.
        if self.pipeline is None:
            self.pipeline = deque()
        elif len(self.pipeline) >= self.limits.max_pipelined:
            raise HttpError(429, "too_many_pipelined", "too many pipelined requests", True)
        self.pipeline.append(request)

    # -- answering

    def _dispatch(self, request: Request) -> None:
        self.deadline.clear()
        self.state = next_state(self.state, REQUEST_READ)
        self.request = request
        try:
            self.app.handle(request, self)
        except HttpError as exc:
            self.respond_error(exc)
        except Exception:
            log.exception("error while handling %s %s", request.method, request.raw_path)
            self.respond_error(HttpError(500, "internal_error", "the server failed to handle the request"))

    @property
    def closed(self) -> bool:
        return self.transport is None or self.state is CLOSED

    @property
    def keep_alive(self) -> bool:
        request = self.request
        return request is not None and request.keep_alive and not self.stopping

    def respond(self, status: int, body: bytes, content_type: bytes = JSON_TYPE, extra_headers: bytes = b"") -> None:
        """Answer the current request and move on to the next."""
        if self.state is not BUSY or self.transport is None:
            self._answered_unwritten()
            return
        keep_alive = self.keep_alive
        head_only = self.request is not None and self.request.method == "HEAD"
        headers = extra_headers + self.response_headers
        data = response_bytes(status, body, content_type, keep_alive, headers, head_only)
        if self.limits.access_log:
            self._log_access(status, len(body))
        self.transport.write(data)
        self._finish(keep_alive)

    def respond_shared(self, answer: bytes) -> None:
        """Answer 200 with bytes from `shared_answer` (the same for many connections on fan-out),
        keeping the connection open."""
        if self.state is not BUSY or self.transport is None:
            self._answered_unwritten()
            return
        if self.limits.access_log:
            self._log_access(200, len(answer))
        self.transport.write(shared_response(answer))
        self._finish(True)

    def _log_access(self, status: int, size: int) -> None:
        request = self.request
        client, method, path = (request.client, request.method, request.raw_path) if request else (self.peer, "-", "-")
        access_log.info("%s %s %s %d %d", client, method, path, status, size)

    def respond_error(self, error: HttpError) -> None:
        if error.close:
            self.stopping = True
        self.respond(error.status, error_body(error.code, error.detail), extra_headers=error.headers)

    def hold(self, held: Held) -> None:
        self.held = held

    def _answered_unwritten(self) -> None:
        """An answer with nowhere to go: the peer left (CLOSED), or a 101 was sent (UPGRADED,
        where an HTTP answer would corrupt the stream: the connection closes instead)."""
        self.state = next_state(self.state, ANSWERED)
        if self.state is CLOSED:
            self.close()

    def _finish(self, keep_alive: bool) -> None:
        self.held = None
        self.request = None
        self.response_headers = b""
        self.state = next_state(self.state, ANSWERED)
        if not keep_alive:
            self.close()
            return
        if self.pipeline:
            self._dispatch(self.pipeline.popleft())
        else:
            self.deadline.set(self.limits.keepalive_timeout)

    def _fail(self, error: HttpError) -> None:
        """A request could not be read: answer it if nothing else is in flight, then close."""
        if self.state <= READING:  # IDLE or READING: the error is the answer
            self.state = next_state(self.state, REQUEST_READ)
            self.stopping = True
            self.respond_error(error)
        self.close()

    # -- upgrades

    def upgrade(self, handshake: bytes, upgraded: Upgraded) -> None:
        """Send the 101 answer; from now on the connection's bytes go to `upgraded`, and the
        stream methods write raw bytes (see `start_stream`)."""
        self.state = next_state(self.state, UPGRADE)
        if self.state is CLOSED or self.transport is None:
            return
        self.transport.write(handshake)
        self.upgraded = upgraded
        self.held = upgraded
        self._done_with_http()  # the bytes are the upgraded protocol's from now on
        early, self.early = self.early, None
        if early:
            upgraded.receive(bytes(early))

    def _done_with_http(self) -> None:
        """Upgraded or streaming, a connection reads no more requests (what a client sends behind
        a stream would never be answered) and no timeout applies again: the parser (~0.9 KB, a
        bound method per callback), the last request's header list and the deadline's place in
        the wheel go, out of every idle stream's and WebSocket's memory."""
        self.parser = None
        self._headers = []
        self.deadline.stop()

    def send_raw(self, data: bytes) -> None:
        """Write bytes of the upgraded protocol (UPGRADED or STREAMING); dropped once CLOSED."""
        if self.upgraded is not None and self.transport is not None and self.state is not CLOSED:
            self.transport.write(data)

    # -- streams

    def start_stream(self, content_type: bytes, preamble: bytes = b"") -> None:
        self.state = next_state(self.state, STREAM_BEGINS)
        if self.state is CLOSED or self.transport is None or self.request is None:
            return
        self._done_with_http()  # a stream ends with its connection
        if self.limits.access_log:
            self._log_access(101 if self.upgraded is not None else 200, 0)
        if self.upgraded is not None:  # the handshake was the head; frames are the stream
            if preamble:
                self.transport.write(preamble)
            return
        chunked = self.request.http11
        head = stream_head(content_type, self.response_headers, chunked)
        if preamble:
            head += chunk(preamble) if chunked else preamble
        self.transport.write(head)

    @property
    def chunked(self) -> bool:
        """Whether this connection's stream is sent in HTTP chunks (HTTP/1.1) or until close."""
        return self.upgraded is None and self.request is not None and self.request.http11

    def write_stream(self, framed: bytes) -> None:
        """Send stream bytes already framed for this connection (see `chunked`): on fan-out a
        message is framed once for all chunked streams, and consecutive chunks concatenate.
        Not a transition: bytes written outside STREAMING (CLOSED, or an upgraded stream not
        yet begun) are dropped."""
        if self.state is STREAMING and self.transport is not None and framed:
            self.transport.write(framed)

    def end_stream(self, final: bytes = b"") -> None:
        """Finish a stream; the connection closes, since a client that sent more requests
        behind a stream cannot expect them to be answered in order anyway."""
        if self.state is CLOSED or self.transport is None or self.request is None:
            return
        self.state = next_state(self.state, STREAM_ENDS)  # from STREAMING or UPGRADED; anything else is a bug
        last = stream_end(final, self.chunked)  # an upgraded stream frames its own ending
        if last:
            self.transport.write(last)
        self.held = None
        self.request = None
        self.close()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- lifecycle

    def refuse(self, error: HttpError) -> None:
        """Answer before any request was read (e.g. too many connections), then close."""
        if self.transport is not None and self.state is IDLE:
            self.transport.write(response_bytes(error.status, error_body(error.code, error.detail), keep_alive=False))
        self.close()

    def close(self) -> None:
        self.state = next_state(self.state, CLOSE)
        self.deadline.clear()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """The server stops: answer a held request, end a stream, close an idle connection."""
        self.stopping = True
        if self.held is not None:
            self.held.shutdown()
        elif self.state <= READING:  # IDLE or READING: no request to finish
            self.close()
        # BUSY without `held` (a publish in flight) closes after its answer.

    def _timed_out(self) -> None:
        """The deadline passed: a request too slow to arrive gets 408, an idle connection closes."""
        if self.state is READING:
            self._fail(HttpError(408, "request_timeout", "the request did not arrive in time", True))
        elif self.state is IDLE:
            self.close()


def connection_factory(app: Application, limits: Limits, timers: TimeoutWheel) -> Callable[[], HttpConnection]:
    return lambda: HttpConnection(app, limits, timers)
