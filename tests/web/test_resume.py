"""Every cursor a client is handed resumes exactly, on every transport and channel count.

For each transport (long-poll, SSE, NDJSON and HTML streams, WebSocket with URL channels and with
the subscribe command) and 1, 2 and 5 channels: publish interleaved messages, read k of them, take
the cursor handed with message k, reconnect with it and read until a sentinel published on every
channel after the reconnect: per channel, what the two connections delivered is exactly what was
published, in order, once each, with no gap reported — for every k.

Clients we did not write: httpx (long-poll, streams), html.parser (the HTML stream), the
`websockets` client (WebSocket)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import quote

import httpx
import pytest
from conftest import ServerProcess, wait_until
from websockets.sync.client import connect

N = 12  # messages published per case, interleaved over its channels
READ_TIMEOUT = 5.0


class Delivery(NamedTuple):
    channel: str
    data: str
    cursor: str | None  # the cursor handed with this message (None: none handed with it)


class GapReported(AssertionError):
    pass


def _query(cursor: str) -> str:
    return quote(cursor, safe="")


@contextmanager
def longpoll(http: httpx.Client, channels: list[str], cursor: str) -> Iterator[Iterator[Delivery]]:
    def polls() -> Iterator[Delivery]:
        last_id = cursor
        while True:
            body = http.get(f"/sub/{','.join(channels)}?timeout={READ_TIMEOUT:g}&last_id={_query(last_id)}").json()
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
def http_stream(http: httpx.Client, kind: str, channels: list[str], cursor: str) -> Iterator[Iterator[Delivery]]:
    path = {"sse": "sse", "ndjson": "stream", "html": "stream"}[kind]
    query = "?format=html" if kind == "html" else ""
    # SSE resumes as EventSource does, with Last-Event-ID; the streams with ?last_id=.
    headers = {"Last-Event-ID": cursor} if kind == "sse" else {}
    if kind != "sse":
        query += ("&" if query else "?") + f"last_id={_query(cursor)}"
    with http.stream("GET", f"/{path}/{','.join(channels)}{query}", headers=headers) as response:
        assert response.status_code == 200
        yield {"sse": _sse, "ndjson": _ndjson, "html": _html}[kind](response)


@contextmanager
def websocket(server: ServerProcess, kind: str, channels: list[str], cursor: str) -> Iterator[Iterator[Delivery]]:
    base = f"ws://{server.host}:{server.port}/ws"
    url = base if kind == "ws-subscribe" else f"{base}/{','.join(channels)}?last_id={_query(cursor)}"
    # No flow control: the test hangs up with frames unread, which would stall the closing
    # handshake until close_timeout (a few dozen small frames at most are queued).
    with connect(url, open_timeout=READ_TIMEOUT, close_timeout=1, max_queue=None) as ws:
        if kind == "ws-subscribe":
            ws.send(json.dumps({"subscribe": channels, "last_id": cursor}))

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
    transport: str, server: ServerProcess, http: httpx.Client, channels: list[str], cursor: str
) -> Iterator[Iterator[Delivery]]:
    """One connection (for long-poll, a series of polls) reading after `cursor`."""
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


@pytest.mark.parametrize("count", [1, 2, 5])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_cursor_handed_resumes_exactly(server: ServerProcess, transport: str, count: int) -> None:
    prefix = f"resume-{transport}-{uuid.uuid4().hex[:8]}-"
    channels = [f"{prefix}{i}" for i in range(count)]
    published: dict[str, list[str]] = {name: [] for name in channels}  # per channel, in publish order

    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT + 5) as http:

        def send(channel: str, data: str) -> None:
            publish(http, channel, data)
            published[channel].append(data)

        # Long-poll hands a cursor per answer: poll as the messages come, one per answer, from the
        # cursor of an empty read (k = 0). The other transports read a stream from `oldest`.
        longpoll_cursors: list[str] = []
        if transport == "longpoll":
            longpoll_cursors.append(http.get(f"/sub/{','.join(channels)}?timeout=0").json()["last_id"])
        for j in range(N):
            send(channels[(j + j // 2) % count], f"m{j}")
            if transport == "longpoll":
                with longpoll(http, channels, longpoll_cursors[-1]) as polls:
                    got = next(polls)
                assert got.data == f"m{j}" and got.cursor is not None
                longpoll_cursors.append(got.cursor)

        for k in range(N + 1):
            first: list[Delivery] = []
            if transport == "longpoll":
                cursor = longpoll_cursors[k]
                first = [Delivery(channels[(j + j // 2) % count], f"m{j}", None) for j in range(k)]
            elif k == 0:
                cursor = "oldest"
            else:
                with deliveries(transport, server, http, channels, "oldest") as stream:
                    first = [next(stream) for _ in range(k)]
                handed = first[-1].cursor
                assert handed is not None, f"{transport}: no cursor handed with message {k}: {first[-1]}"
                cursor = handed

            rest: list[Delivery] = []
            with deliveries(transport, server, http, channels, cursor) as stream:
                sentinels = {f"end{k}-{name}" for name in channels}
                for name in channels:
                    send(name, f"end{k}-{name}")
                for delivery in stream:
                    rest.append(delivery)
                    sentinels.discard(delivery.data)
                    if not sentinels:
                        break

            for name in channels:
                delivered = [d.data for d in first + rest if d.channel == name]
                assert delivered == published[name], (
                    f"{transport}, {count} channel(s), resumed after message {k} with {cursor!r}: "
                    f"channel {name[len(prefix) :]} got {delivered}, published {published[name]}"
                )
            assert {d.channel for d in rest} <= set(channels)


def test_a_long_poll_from_oldest_cut_off_at_100_resumes_without_a_false_gap(server: ServerProcess) -> None:
    a, b, clock = (f"resume-cut-{uuid.uuid4().hex[:8]}-{name}" for name in ("a", "b", "clock"))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        last_of_a = _ms([publish(http, a, f"a{i}") for i in range(100)][-1])
        # b's message must sort after a's 100 (ids order by ms first): publish it in a later ms.
        wait_until(lambda: _ms(publish(http, clock, "tick")) > last_of_a, 5, "the server's clock to move on")
        publish(http, b, "b0")
        first = http.get(f"/sub/{a},{b}?last_id=oldest").json()
        assert [m["data"] for m in first["messages"]] == [f"a{i}" for i in range(100)]  # b's is beyond the 100
        rest = http.get(f"/sub/{a},{b}?timeout=0&last_id={_query(first['last_id'])}").json()
        assert [m["data"] for m in rest["messages"]] == ["b0"] and rest["gap"] is False
