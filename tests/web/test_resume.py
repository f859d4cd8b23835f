"""Every cursor a client is handed resumes exactly, on every transport and channel count.

For each transport (long-poll, SSE, NDJSON and HTML streams, WebSocket with URL channels and with
the subscribe command) and 1, 2 and 5 channels: publish interleaved messages, take the cursor handed
with message k, reconnect with it and read until a sentinel published on every channel after the
reconnect: per channel, what the two connections delivered is exactly what was published, in order,
once each, with no gap reported — for every k. The cursors come from backlog frames (published
before the first connection; long-polls answered at once) and from live ones (a stream already open
when the message is published; a held long-poll woken by it), the latter also on the Redis broker
and across the workers of `--workers 2` (every stream and resume is a new connection).

Clients we did not write: httpx (long-poll, streams), html.parser (the HTML stream), the
`websockets` client (WebSocket)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import quote

import httpx
import pytest
from conftest import RedisProcess, ServerProcess, subscribers, wait_until
from websockets.sync.client import connect

N = 12  # messages published per case, interleaved over its channels
READ_TIMEOUT = 5.0


class Delivery(NamedTuple):
    channel: str
    data: str
    cursor: str | None  # the cursor handed with this message (None: none handed with it)


class GapReported(AssertionError):
    pass


def _url(path: str, cursor: str | None, *params: str) -> str:
    """`path?params`, resuming after `cursor` (None: from now on)."""
    if cursor is not None:
        params = (*params, f"last_id={quote(cursor, safe='')}")
    return path + ("?" + "&".join(params) if params else "")


@contextmanager
def longpoll(http: httpx.Client, channels: list[str], cursor: str | None) -> Iterator[Iterator[Delivery]]:
    def polls() -> Iterator[Delivery]:
        last_id = cursor
        while True:
            body = http.get(_url(f"/sub/{','.join(channels)}", last_id, f"timeout={READ_TIMEOUT:g}")).json()
            if body["gap"]:
                raise GapReported(body)
            if not body["messages"]:
                raise TimeoutError("a long-poll timed out waiting for more")
            last_id = body["last_id"]
            for i, message in enumerate(body["messages"], 1):
                # The answer's cursor is handed with its last message.
                yield Delivery(message["channel"], message["data"], last_id if i == len(body["messages"]) else None)

    yield polls()


def _sse(response: httpx.Response) -> Iterator[Delivery]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        event, fields = fields, {}
        if event.get("event", "message") != "message":
            if event["event"] == "gap":
                raise GapReported(event)
            continue
        if "data" in event:
            message = json.loads(event["data"])
            yield Delivery(message["channel"], message["data"], event.get("id"))


def _ndjson(response: httpx.Response) -> Iterator[Delivery]:
    for line in response.iter_lines():
        if not line.strip():
            continue  # a keep-alive
        obj = json.loads(line)
        if "event" in obj:
            if obj["event"] == "gap":
                raise GapReported(obj)
            continue
        yield Delivery(obj["channel"], obj["data"], obj.get("last_id"))


class _MessageDivs(HTMLParser):
    """The stream page's message <div>s (class "m": `[channel] data`, cursor in data-last-id)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[Delivery] = []
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "div":
            return
        attributes = dict(attrs)
        if attributes.get("class") == "e" and attributes.get("data-event") == "gap":
            raise GapReported(attributes)
        if attributes.get("class") == "m":
            self._open, self._text = attributes, []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._open is not None:
            channel, _, data = "".join(self._text).partition("] ")
            self.found.append(Delivery(channel.removeprefix("["), data, self._open.get("data-last-id")))
            self._open = None


def _html(response: httpx.Response) -> Iterator[Delivery]:
    parser = _MessageDivs()
    for data in response.iter_text():
        parser.feed(data)
        yield from parser.found
        parser.found.clear()


@contextmanager
def http_stream(http: httpx.Client, kind: str, channels: list[str], cursor: str | None) -> Iterator[Iterator[Delivery]]:
    path = {"sse": "sse", "ndjson": "stream", "html": "stream"}[kind]
    # SSE resumes as EventSource does, with Last-Event-ID; the streams with ?last_id=.
    headers = {"Last-Event-ID": cursor} if kind == "sse" and cursor is not None else {}
    params = ["format=html"] if kind == "html" else []
    url = _url(f"/{path}/{','.join(channels)}", None if kind == "sse" else cursor, *params)
    with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        yield {"sse": _sse, "ndjson": _ndjson, "html": _html}[kind](response)


@contextmanager
def websocket(
    server: ServerProcess, kind: str, channels: list[str], cursor: str | None
) -> Iterator[Iterator[Delivery]]:
    base = f"ws://{server.host}:{server.port}/ws"
    url = base if kind == "ws-subscribe" else _url(f"{base}/{','.join(channels)}", cursor)
    # No flow control: the test hangs up with frames unread, which would stall the closing
    # handshake until close_timeout (a few dozen small frames at most are queued).
    with connect(url, open_timeout=READ_TIMEOUT, close_timeout=1, max_queue=None) as ws:
        if kind == "ws-subscribe":
            ws.send(json.dumps({"subscribe": channels} | ({} if cursor is None else {"last_id": cursor})))

        def frames() -> Iterator[Delivery]:
            while True:
                frame = json.loads(ws.recv(timeout=READ_TIMEOUT))
                if frame["type"] == "gap":
                    raise GapReported(frame)
                if frame["type"] == "message":
                    message = frame["message"]
                    yield Delivery(message["channel"], message["data"], frame["last_id"])

        yield frames()


@contextmanager
def deliveries(
    transport: str, server: ServerProcess, http: httpx.Client, channels: list[str], cursor: str | None
) -> Iterator[Iterator[Delivery]]:
    """One connection (for long-poll, a series of polls) reading after `cursor` (None: from now on)."""
    if transport == "longpoll":
        with longpoll(http, channels, cursor) as got:
            yield got
    elif transport.startswith("ws"):
        with websocket(server, transport, channels, cursor) as got:
            yield got
    else:
        with http_stream(http, transport, channels, cursor) as got:
            yield got


def publish(http: httpx.Client, channel: str, data: str) -> str:
    answer = http.post(f"/pub/{channel}", json=data)
    assert answer.status_code in (201, 202), answer.text
    ident = answer.json()["id"]
    assert isinstance(ident, str)
    return ident


def _ms(ident: str) -> int:
    return int(ident.partition("-")[0])


TRANSPORTS = ["longpoll", "sse", "ndjson", "html", "ws", "ws-subscribe"]


class Case:
    """One transport on its own channels, and what was published on each, in order."""

    def __init__(self, name: str, transport: str, server: ServerProcess, http: httpx.Client, count: int) -> None:
        self.name = f"{name}, {transport}, {count} channel(s)"
        self.transport, self.server, self.http = transport, server, http
        self.channels = [f"resume-{transport}-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
        self.published: dict[str, list[str]] = {channel: [] for channel in self.channels}

    def channel_of(self, j: int) -> str:
        """Message j's channel: the messages interleave over the channels."""
        return self.channels[(j + j // 2) % len(self.channels)]

    def send(self, channel: str, data: str) -> None:
        publish(self.http, channel, data)
        self.published[channel].append(data)

    def deliveries(self, cursor: str | None) -> AbstractContextManager[Iterator[Delivery]]:
        return deliveries(self.transport, self.server, self.http, self.channels, cursor)

    def resume_exactly(self, k: int, first: list[Delivery], cursor: str) -> None:
        """Reconnect after `cursor`, handed with message k (after `first`, what came before it), and
        read until a sentinel published on every channel after the reconnect: per channel, the two
        connections delivered exactly what was published (the sentinels of earlier k included)."""
        rest: list[Delivery] = []
        with self.deliveries(cursor) as stream:
            sentinels = {f"end{k}-{channel}" for channel in self.channels}
            for channel in self.channels:
                self.send(channel, f"end{k}-{channel}")
            for delivery in stream:
                rest.append(delivery)
                sentinels.discard(delivery.data)
                if not sentinels:
                    break

        for channel in self.channels:
            delivered = [d.data for d in first + rest if d.channel == channel]
            assert delivered == self.published[channel], (
                f"{self.name}, resumed after message {k} with {cursor!r}: "
                f"channel {channel.rpartition('-')[2]} got {delivered}, published {self.published[channel]}"
            )
        assert {d.channel for d in rest} <= set(self.channels)

    def wait_for_subscriber(self, answered: Callable[[], bool] = lambda: False) -> None:
        """Until the connection just opened (or the poll just sent) is subscribed on every channel,
        or a poll has `answered` without being held (what it brought is checked after)."""
        wait_until(
            lambda: answered() or all(subscribers(self.http, channel) > 0 for channel in self.channels),
            READ_TIMEOUT,
            f"{self.name}: a subscriber on every channel",
        )


@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_cursor_handed_resumes_exactly(server: ServerProcess, transport: str, count: int) -> None:
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT + 5) as http:
        case = Case("backlog", transport, server, http, count)
        channels = case.channels

        # Long-poll hands a cursor per answer: poll as the messages come, one per answer, from the
        # cursor of an empty read (k = 0). The other transports read a stream from `oldest`.
        longpoll_cursors: list[str] = []
        if transport == "longpoll":
            longpoll_cursors.append(http.get(f"/sub/{','.join(channels)}?timeout=0").json()["last_id"])
        for j in range(N):
            case.send(case.channel_of(j), f"m{j}")
            if transport == "longpoll":
                with longpoll(http, channels, longpoll_cursors[-1]) as polls:
                    got = next(polls)
                assert got.data == f"m{j}" and got.cursor is not None
                longpoll_cursors.append(got.cursor)

        for k in range(N + 1):
            first: list[Delivery] = []
            if transport == "longpoll":
                cursor = longpoll_cursors[k]
                first = [Delivery(case.channel_of(j), f"m{j}", None) for j in range(k)]
            elif k == 0:
                cursor = "oldest"
            else:
                with case.deliveries("oldest") as stream:
                    first = [next(stream) for _ in range(k)]
                handed = first[-1].cursor
                assert handed is not None, f"{transport}: no cursor handed with message {k}: {first[-1]}"
                cursor = handed
            case.resume_exactly(k, first, cursor)


@pytest.fixture(scope="module")
def redis_tidings(redis_server: RedisProcess) -> Iterator[ServerProcess]:
    """A server on the Redis broker, under a key prefix of its own."""
    proc = ServerProcess("--broker", redis_server.url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}:")
    yield proc
    proc.kill()
    assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture(scope="module")
def workers_tidings() -> Iterator[ServerProcess]:
    """Two workers and the embedded sequencer: each new connection may land on either worker."""
    proc = ServerProcess("--workers", "2")
    yield proc
    proc.kill()
    assert "Traceback" not in proc.log(), proc.log()


LIVE_CASES = [
    *(
        pytest.param(transport, count, "server", id=f"{transport}-{count}")
        for transport in TRANSPORTS
        for count in (1, 2, 5)
    ),
    *(pytest.param(transport, 2, "redis_tidings", id=f"{transport}-2-redis") for transport in ("sse", "ws-subscribe")),
    *(
        pytest.param(transport, 2, "workers_tidings", id=f"{transport}-2-workers")
        for transport in ("longpoll", "sse", "ndjson", "ws", "ws-subscribe")
    ),
]


@pytest.mark.parametrize(("transport", "count", "server_fixture"), LIVE_CASES)
def test_every_cursor_handed_on_a_live_frame_resumes_exactly(
    request: pytest.FixtureRequest, transport: str, count: int, server_fixture: str
) -> None:
    server: ServerProcess = request.getfixturevalue(server_fixture)
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT + 5) as http:
        case = Case(f"live, {server_fixture}", transport, server, http, count)
        channels = case.channels

        # Subscribe from now on (a long-poll: from the cursor an empty answer hands), then publish
        # each message while the subscription is open: every frame read, every poll answered, is live.
        live: list[Delivery] = []
        cursors: list[str | None] = []  # [k]: the cursor handed after message k
        if transport == "longpoll":
            cursors.append(http.get(f"/sub/{','.join(channels)}?timeout=0").json()["last_id"])
            # The poll is held on a connection of its own, in a thread, while this one publishes.
            with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT + 5) as poller, ThreadPoolExecutor(1) as pool:
                for j in range(N):
                    with longpoll(poller, channels, cursors[-1]) as polls:
                        held = pool.submit(next, polls)
                        case.wait_for_subscriber(answered=held.done)
                        case.send(case.channel_of(j), f"m{j}")
                        live.append(held.result(timeout=READ_TIMEOUT + 5))
                    cursors.append(live[-1].cursor)
        else:
            cursors.append(None)  # a stream from now on hands no cursor before its first message
            with case.deliveries(None) as stream:
                case.wait_for_subscriber()
                for j in range(N):
                    case.send(case.channel_of(j), f"m{j}")
                    live.append(next(stream))
                    cursors.append(live[-1].cursor)
        read = [(d.channel, d.data) for d in live]
        assert read == [(case.channel_of(j), f"m{j}") for j in range(N)], f"{case.name}: live reads {read}"

        for k in range(0 if transport == "longpoll" else 1, N + 1):
            cursor = cursors[k]
            assert cursor is not None, f"{case.name}: no cursor handed with message {k}: {live[k - 1]}"
            case.resume_exactly(k, live[:k], cursor)


def test_a_long_poll_from_oldest_cut_off_at_100_resumes_without_a_false_gap(server: ServerProcess) -> None:
    a, b, clock = (f"resume-cut-{uuid.uuid4().hex[:8]}-{name}" for name in ("a", "b", "clock"))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        last_of_a = _ms([publish(http, a, f"a{i}") for i in range(100)][-1])
        # b's message must sort after a's 100 (ids order by ms first): publish it in a later ms.
        wait_until(lambda: _ms(publish(http, clock, "tick")) > last_of_a, 5, "the server's clock to move on")
        publish(http, b, "b0")
        first = http.get(f"/sub/{a},{b}?last_id=oldest").json()
        assert [m["data"] for m in first["messages"]] == [f"a{i}" for i in range(100)]  # b's is beyond the 100
        rest = http.get(_url(f"/sub/{a},{b}", first["last_id"], "timeout=0")).json()
        assert [m["data"] for m in rest["messages"]] == ["b0"] and rest["gap"] is False
