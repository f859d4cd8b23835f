"""The HTTP edge in-process: bytes fed to an `HttpConnection` with a recording transport, a
hand-driven clock and a scripted application; the bytes written and the state are asserted.
No loop, no sockets: what test_http.py checks end to end, here exactly and fast."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from stubs import RecordingTransport

from tidings.web.deadline import Deadline
from tidings.web.http import (
    TRANSITIONS,
    Event,
    HttpConnection,
    HttpError,
    IllegalTransition,
    Limits,
    Request,
    State,
    next_state,
)
from tidings.web.wheel import TimeoutWheel


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The loop as the connection's timeout wheel uses it: `time` and `call_later`, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock and run the timers that are due, as the loop would."""
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.when() <= self.now]:
            timer = min(due, key=Timer.when)
            self.timers.remove(timer)
            timer.callback()


class Holder:
    """A held request or a stream, as the application's long-polls and streams are."""

    def __init__(self) -> None:
        self.released = False
        self.stopped = False
        self.received = b""

    def release(self) -> None:
        self.released = True

    def shutdown(self) -> None:
        self.stopped = True

    def receive(self, data: bytes) -> None:
        self.received += data


class App:
    """Answers by path: /now at once, /hold later, /stream and /ws as streams, /boom and /bad fail."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.holders: list[Holder] = []
        self.closed = 0

    def connection_opened(self, conn: HttpConnection) -> None:
        pass

    def connection_closed(self, conn: HttpConnection) -> None:
        self.closed += 1

    def handle(self, request: Request, conn: HttpConnection) -> None:
        self.requests.append(request)
        holder = Holder()
        if request.path == "/now":
            conn.respond(200, b'{"n":%d}' % len(self.requests))
        elif request.path == "/hold":
            self.holders.append(holder)
            conn.hold(holder)
        elif request.path == "/stream":
            self.holders.append(holder)
            conn.start_stream(b"text/event-stream", preamble=b"hello")
            conn.hold(holder)
        elif request.path == "/ws":
            self.holders.append(holder)
            conn.upgrade(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", holder
            )
        elif request.path == "/ws-later":  # (an upgrade decided later: an --auth-url check)
            self.holders.append(holder)
        elif request.path == "/bad":
            raise HttpError(400, "bad_thing", "not like that", headers=b"X-Why: because\r\n")
        else:
            raise RuntimeError("a bug in the application")


LIMITS = Limits(request_timeout=10.0, keepalive_timeout=75.0, max_pipelined=2, max_url_bytes=64)


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    return ("".join([f"GET {path} HTTP/{version}\r\nHost: x\r\n", *(h + "\r\n" for h in headers), "\r\n"])).encode()


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def conn(app: App, clock: Clock, transport: RecordingTransport) -> HttpConnection:
    connection = HttpConnection(app, LIMITS, TimeoutWheel(clock))  # type: ignore[arg-type]
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection


# -- the table


def test_every_state_can_close_and_closed_absorbs_every_event() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in State:
        assert next_state(state, Event.CLOSE) is State.CLOSED
    for event in Event:
        assert next_state(State.CLOSED, event) is State.CLOSED


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.IDLE, Event.ANSWERED),  # an answer with no request
        (State.READING, Event.STREAM_BEGINS),
        (State.STREAMING, Event.ANSWERED),  # an HTTP answer inside a stream
        (State.BUSY, Event.STREAM_ENDS),  # a stream that never began
        (State.UPGRADED, Event.UPGRADE),
    ],
)
def test_a_pair_not_in_the_table_raises(state: State, event: Event) -> None:
    with pytest.raises(IllegalTransition, match=f"{event.name} cannot happen in {state.name}"):
        next_state(state, event)


# -- requests and answers


def test_keep_alive_answers_each_request_and_returns_to_idle(
    conn: HttpConnection, transport: RecordingTransport
) -> None:
    assert conn.state is State.IDLE
    conn.data_received(get("/now"))
    first = transport.take()
    assert first.startswith(b"HTTP/1.1 200 OK\r\nDate: ")
    assert first.endswith(b'Content-Length: 7\r\nCache-Control: no-store\r\n\r\n{"n":1}')
    assert conn.state is State.IDLE and not transport.closed
    conn.data_received(get("/now"))
    assert transport.take().endswith(b'{"n":2}')
    assert conn.state is State.IDLE and not transport.closed


def test_connection_close_answers_then_closes(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/now", "Connection: close"))
    assert b"Connection: close\r\n" in transport.written
    assert conn.state is State.CLOSED and transport.closed


def test_http10_without_keep_alive_closes_after_the_answer(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/now", version="1.0"))
    assert statuses(transport.written) == [200]
    assert conn.state is State.CLOSED and transport.closed


def test_head_gets_the_headers_without_the_body(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(b"HEAD /now HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.endswith(b"Content-Length: 7\r\nCache-Control: no-store\r\n\r\n")


def test_a_request_in_pieces_is_read_then_answered(conn: HttpConnection, transport: RecordingTransport) -> None:
    request = get("/now")
    conn.data_received(request[:5])
    assert conn.state is State.READING and transport.written == b""
    conn.data_received(request[5:])
    assert statuses(transport.written) == [200] and conn.state is State.IDLE


def test_pipelined_requests_wait_behind_a_held_one_and_are_answered_in_order(
    conn: HttpConnection, app: App, transport: RecordingTransport
) -> None:
    conn.data_received(get("/hold") + get("/now") + get("/now"))
    assert [r.path for r in app.requests] == ["/hold"]
    assert conn.state is State.BUSY and transport.written == b""
    conn.respond(200, b'{"held":true}')
    assert [r.path for r in app.requests] == ["/hold", "/now", "/now"]
    written = transport.take()
    assert statuses(written) == [200, 200, 200]
    assert written.index(b'{"held":true}') < written.index(b'{"n":2}') < written.index(b'{"n":3}')
    assert conn.state is State.IDLE


def test_too_many_pipelined_requests_are_refused(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/hold") + get("/now") + get("/now") + get("/now"))  # max_pipelined=2
    assert statuses(transport.written) == []  # the held request is in flight: no answer can go out
    assert conn.state is State.CLOSED and transport.closed


def test_a_held_request_is_answered_later_or_released_when_the_peer_leaves(
    conn: HttpConnection, app: App, transport: RecordingTransport
) -> None:
    conn.data_received(get("/hold"))
    assert conn.state is State.BUSY and conn.held is app.holders[0] and transport.written == b""
    conn.connection_lost(None)
    assert app.holders[0].released and conn.state is State.CLOSED and app.closed == 1
    conn.respond(200, b"{}")  # the wake-up that comes too late finds nothing to do
    assert transport.written == b"" and conn.state is State.CLOSED


def test_shutdown_asks_the_holder_and_closes_idle_connections(
    conn: HttpConnection, app: App, transport: RecordingTransport, clock: Clock
) -> None:
    conn.data_received(get("/hold"))
    conn.shutdown()
    assert app.holders[0].stopped and conn.state is State.BUSY
    conn.respond(200, b"{}")
    assert b"Connection: close\r\n" in transport.written and conn.state is State.CLOSED
    idle = HttpConnection(app, LIMITS, TimeoutWheel(clock))  # type: ignore[arg-type]
    idle_transport = RecordingTransport()
    idle.connection_made(idle_transport)  # type: ignore[arg-type]
    idle.shutdown()
    assert idle.state is State.CLOSED and idle_transport.closed and idle_transport.written == b""


# -- streams and upgrades


def test_a_chunked_stream_then_its_end_closes_the_connection(
    conn: HttpConnection, transport: RecordingTransport
) -> None:
    conn.data_received(get("/stream"))
    head = transport.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream\r\n" in head and b"Transfer-Encoding: chunked\r\n" in head
    assert head.endswith(b"\r\n\r\n5\r\nhello\r\n")
    assert conn.state is State.STREAMING and conn.chunked
    conn.write_stream(b"3\r\nabc\r\n")
    conn.data_received(get("/now"))  # behind a stream: not even read, never answered
    assert transport.take() == b"3\r\nabc\r\n"
    conn.end_stream(b"bye")
    assert transport.take() == b"3\r\nbye\r\n0\r\n\r\n"
    assert conn.state is State.CLOSED and transport.closed
    conn.write_stream(b"late")
    assert transport.written == b""


def test_an_http10_stream_is_unframed_and_ends_by_closing(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/stream", version="1.0"))
    head = transport.take()
    assert b"Connection: close\r\n" in head and b"Transfer-Encoding" not in head and head.endswith(b"\r\n\r\nhello")
    assert not conn.chunked
    conn.end_stream(b"bye")
    assert transport.written == b"bye" and transport.closed


def test_an_upgrade_hands_the_bytes_over_and_its_stream_ends_by_closing(
    conn: HttpConnection, app: App, transport: RecordingTransport
) -> None:
    conn.data_received(get("/ws", "Upgrade: websocket", "Connection: Upgrade") + b"\x81\x00")
    assert statuses(transport.take()) == [101]
    assert conn.state is State.UPGRADED
    holder = app.holders[0]
    assert holder.received == b"\x81\x00"  # the bytes after the request, in the same read
    conn.data_received(b"\x81\x01x")
    assert holder.received == b"\x81\x00\x81\x01x"
    conn.send_raw(b"pong")
    conn.write_stream(b"too soon")  # a stream's bytes before it began are dropped
    assert transport.take() == b"pong"
    conn.start_stream(b"ignored", preamble=b"first")
    assert conn.state is State.STREAMING and not conn.chunked
    assert transport.take() == b"first"  # the 101 was the head
    conn.write_stream(b"frame")
    conn.end_stream(b"close-frame")
    assert transport.take() == b"frameclose-frame"
    assert conn.state is State.CLOSED and transport.closed


def test_an_http_answer_after_a_101_closes_instead_of_corrupting_the_stream(
    conn: HttpConnection, transport: RecordingTransport
) -> None:
    conn.data_received(get("/ws", "Upgrade: websocket", "Connection: Upgrade"))
    transport.take()
    conn.respond_error(HttpError(400, "invalid_cursor", "no such cursor"))
    assert transport.written == b""
    assert conn.state is State.CLOSED and transport.closed


HANDSHAKE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_an_upgrade_taken_later_gets_what_was_sent_meanwhile(
    conn: HttpConnection, app: App, transport: RecordingTransport
) -> None:
    conn.data_received(get("/ws-later", "Upgrade: websocket", "Connection: Upgrade") + b"frame1")
    conn.data_received(b"frame2")
    assert transport.written == b"" and conn.state is State.BUSY
    holder = app.holders[0]
    conn.upgrade(HANDSHAKE, holder)
    assert transport.take() == HANDSHAKE and holder.received == b"frame1frame2"
    conn.data_received(b"frame3")
    assert holder.received == b"frame1frame2frame3"


def test_an_upgrade_refused_later_is_answered_and_closed(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/ws-later", "Upgrade: websocket", "Connection: Upgrade"))
    conn.respond_error(HttpError(403, "forbidden", "not you"))
    assert statuses(transport.written) == [403] and b'"forbidden"' in transport.written
    assert conn.state is State.CLOSED and transport.closed


def test_an_upgrade_request_is_not_followed_by_a_flood(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/ws-later", "Upgrade: websocket", "Connection: Upgrade"))
    conn.data_received(b"x" * 70_000)
    assert conn.state is State.CLOSED and transport.closed


def test_an_upgrade_nobody_takes_is_refused(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(get("/now", "Upgrade: h2c", "Connection: Upgrade"))
    written = transport.written
    assert statuses(written) == [200, 400] and b'"upgrade_not_supported"' in written
    assert conn.state is State.CLOSED


# -- timers


def test_a_request_slower_than_the_request_timeout_gets_408(
    conn: HttpConnection, transport: RecordingTransport, clock: Clock
) -> None:
    conn.data_received(b"GET /now HTTP/1.1\r\nHo")
    assert conn.state is State.READING
    clock.advance(9.9)
    assert conn.state is State.READING and transport.written == b""
    clock.advance(0.1 + 0.25)  # (timeouts fire late by a tick or two of the wheel, never early)
    assert statuses(transport.written) == [408] and b'"request_timeout"' in transport.written
    assert b"Connection: close\r\n" in transport.written
    assert conn.state is State.CLOSED and transport.closed


def test_an_idle_connection_closes_after_the_keep_alive_timeout_moved_by_each_request(
    conn: HttpConnection, transport: RecordingTransport, clock: Clock
) -> None:
    clock.advance(50)
    conn.data_received(get("/now"))
    transport.take()
    clock.advance(50)  # 100 s after the connection opened, 50 after its last answer
    assert conn.state is State.IDLE and not transport.closed
    clock.advance(25.1)
    assert conn.state is State.CLOSED and transport.closed and transport.written == b""


def test_a_held_request_has_no_edge_timeout(conn: HttpConnection, transport: RecordingTransport, clock: Clock) -> None:
    conn.data_received(get("/hold"))
    clock.advance(1000)
    assert conn.state is State.BUSY and not transport.closed


def test_a_deadline_moved_later_is_filed_again_only_when_its_bucket_comes_due() -> None:
    clock, expired = Clock(), []
    wheel = TimeoutWheel(clock)  # type: ignore[arg-type]
    deadline = Deadline(wheel, lambda: expired.append(clock.now))
    deadline.set(10)
    for _ in range(5):  # every request moves it: filed once
        clock.now += 5
        deadline.set(10)
    assert sum(len(bucket) for bucket in wheel.buckets.values()) == 1
    clock.advance(0)  # its bucket came due early (1010 < 1035): filed again, at the deadline
    assert sum(len(bucket) for bucket in wheel.buckets.values()) == 1
    clock.advance(9.9)
    assert expired == []
    clock.advance(0.2 + wheel.tick)  # (a wheel fires late, never early)
    assert len(expired) == 1 and expired[0] >= 1035 and not any(wheel.buckets.values())


def test_a_deadline_moved_sooner_is_filed_sooner_and_a_cleared_or_stopped_one_never_expires() -> None:
    clock, expired = Clock(), []
    wheel = TimeoutWheel(clock)  # type: ignore[arg-type]
    deadline = Deadline(wheel, lambda: expired.append(clock.now))
    deadline.set(75)
    deadline.set(10)
    assert sum(len(bucket) for bucket in wheel.buckets.values()) == 1
    clock.advance(10 + wheel.tick)
    assert len(expired) == 1
    deadline.set(5)
    deadline.clear()
    clock.advance(100)
    assert len(expired) == 1
    deadline.set(1)
    deadline.stop()
    assert not any(wheel.buckets.values())
    clock.advance(100)
    assert len(expired) == 1


# -- errors


def test_malformed_bytes_get_400_and_a_closed_connection(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.data_received(b"\x00\x01 nonsense\r\n\r\n")
    assert statuses(transport.written) == [400] and b'"bad_request"' in transport.written
    assert conn.state is State.CLOSED and transport.closed
    conn.data_received(get("/now"))  # bytes after the close are ignored
    assert statuses(transport.written) == [400]


def test_limits_are_errors_with_their_status(app: App, clock: Clock) -> None:
    for request, status in ((get("/" + "a" * 100), 414), (get("/now", *[f"X-{i}: v" for i in range(101)]), 431)):
        transport = RecordingTransport()
        conn = HttpConnection(app, LIMITS, TimeoutWheel(clock))  # type: ignore[arg-type]
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(request)
        assert statuses(transport.written) == [status] and transport.closed


def test_an_application_error_is_answered_and_the_connection_kept(
    conn: HttpConnection, transport: RecordingTransport
) -> None:
    conn.data_received(get("/bad"))
    written = transport.take()
    assert statuses(written) == [400] and b"X-Why: because\r\n" in written
    assert written.endswith(b'{"error": "bad_thing", "detail": "not like that"}')
    assert conn.state is State.IDLE
    conn.data_received(get("/boom"))
    assert statuses(transport.written) == [500] and b'"internal_error"' in transport.written
    assert conn.state is State.IDLE and not transport.closed


def test_refuse_answers_before_any_request_and_closes(conn: HttpConnection, transport: RecordingTransport) -> None:
    conn.refuse(HttpError(503, "too_many_connections", "full"))
    assert statuses(transport.written) == [503] and b"Connection: close\r\n" in transport.written
    assert conn.state is State.CLOSED and transport.closed
