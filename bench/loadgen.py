"""The load generator: a separate process the harness drives over stdin/stdout.

It must cost little per delivery because it shares the machine with the server: uvloop,
raw asyncio Protocols and httptools' response parser, no HTTP client library. Every loop
is bounded in count and in time; all traffic goes to 127.0.0.x.

Protocol (one JSON object per line): the harness writes the job as the first line of
stdin; the generator answers `{"event": "ready", ...}` when its subscribers are in place,
waits for a `go` line, then prints `{"event": "result", ...}`. The idle job prints
`{"event": "level", ...}` at each level and waits for a `next` line.

Message bodies are `"<seq> <publish unix time>"`, so each subscriber counts every
sequence number (loss, duplicates) and measures publish→receive latency.

Flavours (how to subscribe, read a message and publish): `tidings`; `nchan` (the body is the
message); `socketio` (Engine.IO v4 / Socket.IO over WebSocket, the body is an event's data);
`pushpin` (SSE through a GRIP backend, publishes to Pushpin's HTTP publish API on `publish_port`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

HOST = "127.0.0.1"
PORTS_PER_SOURCE = 20000  # connections per 127.0.0.x source address (ephemeral range ~28k)


@dataclass
class Job:
    mode: str  # idle | fanout | channels | publish
    port: int
    flavour: str  # tidings | nchan | socketio | pushpin: how to subscribe, read a message, publish
    transport: str = "longpoll"  # longpoll | sse | ws
    subscribers: int = 0
    channels: int = 1
    messages: int = 0
    rate: float = 0.0  # publishes per second (0: as fast as the connections allow)
    levels: list[int] = field(default_factory=list)
    prefix: str = "b"
    publishers: int = 32
    max_seconds: float = 60.0
    # Several generators on one run (`python -m bench capacity`): this one's subscribers are
    # numbered from `first` (they take source addresses after the others'), and only one publishes.
    first: int = 0
    publishes: bool = True
    publish_port: int = 0  # where publishes go (0: `port`)
    # Subscribers opened this many at a time, each batch answered before the next (0: up to 256
    # connects in flight, not waiting for answers). Pushpin answers 502 to a large burst.
    connect_batch: int = 0


class Stats:
    def __init__(self) -> None:
        self.delivered = 0
        self.duplicates = 0
        self.bad_status = 0
        self.responses = 0  # HTTP responses (long-poll) or reads (streams) carrying messages
        self.empty = 0
        self.reconnects = 0
        self.failed = 0
        self.connected = 0
        self.latencies = array.array("d")
        self.expected = 0
        self.done = asyncio.Event()
        self.running = True


class Subscriber:
    """What one subscriber has seen."""

    __slots__ = ("channel", "count", "cursor", "etag", "modified", "seen")

    def __init__(self, channel: str, messages: int) -> None:
        self.channel = channel
        self.seen = bytearray(messages)
        self.count = 0
        self.cursor = ""  # Tidings' last_id
        self.modified = b""  # Nchan's Last-Modified / Etag pair
        self.etag = b""


def record(stats: Stats, sub: Subscriber, body: bytes, now: float) -> None:
    seq_text, _, sent = body.partition(b" ")
    seq = int(seq_text)
    if seq >= len(sub.seen) or sub.seen[seq]:
        stats.duplicates += 1
        return
    sub.seen[seq] = 1
    sub.count += 1
    stats.delivered += 1
    stats.latencies.append(now - float(sent))
    if stats.delivered >= stats.expected:
        stats.done.set()


def tidings_data(message_json: bytes) -> bytes:
    """The `data` string of a Tidings message, without a full JSON parse."""
    start = message_json.index(b'"data":"') + 8
    return message_json[start : message_json.index(b'"', start)]


class _Client(asyncio.Protocol):
    def __init__(self, job: Job, stats: Stats, sub: Subscriber, source: str) -> None:
        self.job = job
        self.stats = stats
        self.sub = sub
        self.source = source
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.stats.connected -= 1
        if self.stats.running:
            self.stats.reconnects += 1
            asyncio.get_running_loop().create_task(connect(self.job, self.stats, self.sub, type(self), self.source))


def longpoll_request(flavour: str, channel: str, after: str | bytes, etag: bytes, timeout: int) -> bytes:
    """A poll resuming `after` the last answer: Tidings' last_id, or Nchan's Last-Modified sent
    back with its Etag. Nothing to resume from: Tidings answers at once with a cursor, Nchan
    starts at its oldest buffered message."""
    after = after.encode() if isinstance(after, str) else after
    if flavour == "nchan":
        extra = b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % (after, etag) if after else b""
        return b"GET /sub/%s HTTP/1.1\r\nHost: b\r\n%s\r\n" % (channel.encode(), extra)
    query = b"timeout=%d&last_id=%s" % (timeout, after) if after else b"timeout=0"
    return b"GET /sub/%s?%s HTTP/1.1\r\nHost: b\r\n\r\n" % (channel.encode(), query)


class CollectsResponse:
    """httptools parser callbacks gathering one response's headers and body."""

    body: list[bytes]
    headers: dict[bytes, bytes]

    def on_message_begin(self) -> None:
        self.body = []
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class LongPollClient(CollectsResponse, _Client):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True
        self.stats.connected += 1
        self.on_message_begin()
        self.poll()

    def poll(self) -> None:
        sub = self.sub
        assert self.transport is not None
        # Tidings: the first poll answers at once with a cursor; from then on nothing can be
        # missed, however late a poll is held relative to the first publish.
        self.transport.write(longpoll_request(self.job.flavour, sub.channel, sub.cursor or sub.modified, sub.etag, 100))

    def on_message_complete(self) -> None:
        stats, sub = self.stats, self.sub
        status = self.parser.get_status_code()
        body = b"".join(self.body)
        now = time.time()
        items: list[bytes] = []
        if status == 200:
            if self.job.flavour == "nchan":
                sub.modified = self.headers.get(b"last-modified", sub.modified)
                sub.etag = self.headers.get(b"etag", sub.etag)
                items = [line for line in body.split(b"\n") if line]
            else:
                answer = json.loads(body)
                sub.cursor = answer["last_id"]
                items = [m["data"].encode() for m in answer["messages"]]
        elif status not in (304, 408):  # Nchan's answers to a poll that timed out
            stats.bad_status += 1
        if items:
            stats.responses += 1
            for item in items:
                record(stats, sub, item, now)
        else:
            stats.empty += 1
        if (stats.running and sub.count < len(sub.seen)) or self.job.mode == "idle":
            self.poll()


class SSEClient(_Client):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pending = b""
        path = b"/sse/" + self.sub.channel.encode()
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n" % path)

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() == 200:
            self.alive = True
            self.stats.connected += 1
        else:  # counted, and tried again on a new connection (Pushpin sometimes answers 502 at first)
            self.stats.bad_status += 1
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        events = (self.pending + body).split(b"\n\n")
        self.pending = events.pop()
        now = 0.0
        raw = self.job.flavour != "tidings"  # Nchan's and Pushpin's data is the message itself
        for event in events:
            start = event.find(b"data: ")
            if start < 0:
                continue
            end = event.find(b"\n", start)
            data = event[start + 6 :] if end < 0 else event[start + 6 : end]
            if not now:
                now = time.time()
            record(self.stats, self.sub, data if raw else tidings_data(data), now)
        if now:
            self.stats.responses += 1


def flush_websocket(protocol: ClientProtocol, transport: asyncio.Transport | None) -> None:
    """Write what the sans-I/O protocol has queued: the handshake, pongs, a close."""
    assert transport is not None
    for data in protocol.data_to_send():
        if data:
            transport.write(data)


class WebSocketClient(asyncio.Protocol):
    """A WebSocket subscriber; the websockets library's sans-I/O client does the handshake
    and the framing."""

    def __init__(self, job: Job, stats: Stats, sub: Subscriber, source: str) -> None:
        self.job = job
        self.stats = stats
        self.sub = sub
        self.transport: asyncio.Transport | None = None
        self.protocol = ClientProtocol(parse_uri(f"ws://{HOST}:{job.port}{self.path(sub.channel)}"), max_size=None)
        self.upgraded = False
        self.alive = False

    def path(self, channel: str) -> str:
        return f"/ws/{channel}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.protocol.send_request(self.protocol.connect())
        flush_websocket(self.protocol, self.transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        now = 0.0
        got = False
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    if not now:
                        now = time.time()
                    got = self.text(bytes(event.data), now) or got
            elif not self.upgraded and getattr(event, "status_code", 0) == 101:
                self.upgraded = True
                self.opened()
            elif not self.upgraded:
                self.stats.bad_status += 1
        if got:
            self.stats.responses += 1
        flush_websocket(self.protocol, self.transport)  # pongs

    def opened(self) -> None:
        """The handshake is done: subscribed."""
        self.alive = True
        self.stats.connected += 1

    def text(self, payload: bytes, now: float) -> bool:
        """One text frame; whether it carried a message."""
        if self.job.flavour == "nchan":
            record(self.stats, self.sub, payload, now)
        elif payload.startswith(b'{"type":"message"'):
            record(self.stats, self.sub, tidings_data(payload), now)
        else:
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.stats.reconnects += 1


class SocketIOClient(WebSocketClient):
    """A Socket.IO subscriber as lean as the WebSocket one: Engine.IO v4 straight over WebSocket
    (no long-polling first), the default namespace, the room named in the query string. The open
    packet `0{...}` is answered with the namespace connect `40`; `40{...}` back says the room is
    joined (subscribed from then on); events arrive as `42["message","<seq> <time>"]`, and a ping
    `2` is answered with a pong `3`."""

    def path(self, channel: str) -> str:
        return f"/socket.io/?EIO=4&transport=websocket&channel={channel}"

    def opened(self) -> None:
        pass  # (the namespace connect's answer counts)

    def text(self, payload: bytes, now: float) -> bool:
        if payload.startswith(b"42"):
            # The event's data is the body as published: a JSON string with nothing to escape.
            record(self.stats, self.sub, payload[payload.index(b',"') + 2 : payload.rindex(b'"')], now)
            return True
        if payload == b"2":
            self.protocol.send_text(b"3")
        elif payload.startswith(b"0"):
            self.protocol.send_text(b"40")
        elif payload.startswith(b"40") and not self.alive:
            self.alive = True
            self.stats.connected += 1
        elif payload.startswith(b"44"):  # the namespace connect refused
            self.stats.bad_status += 1
        return False


async def connect(
    job: Job, stats: Stats, sub: Subscriber, client: Callable[..., asyncio.Protocol], source: str, tries: int = 5
) -> None:
    loop = asyncio.get_running_loop()
    for attempt in range(tries):
        try:
            await loop.create_connection(
                lambda: client(job, stats, sub, source), HOST, job.port, local_addr=(source, 0)
            )
            return
        except OSError:
            await asyncio.sleep(0.1 * (attempt + 1))
    stats.failed += 1


async def open_subscribers(job: Job, stats: Stats, subs: list[Subscriber], first: int = 0) -> None:
    client: Callable[..., asyncio.Protocol] = {"sse": SSEClient, "ws": WebSocketClient}.get(
        job.transport, LongPollClient
    )
    if client is WebSocketClient and job.flavour == "socketio":
        client = SocketIOClient
    gate = asyncio.Semaphore(256)

    async def one(index: int, sub: Subscriber) -> None:
        source = f"127.0.0.{1 + (first + index) // PORTS_PER_SOURCE}"
        async with gate:
            await connect(job, stats, sub, client, source)

    if not job.connect_batch:
        await asyncio.gather(*(one(i, s) for i, s in enumerate(subs)))
        return
    for start in range(0, len(subs), job.connect_batch):
        batch = subs[start : start + job.connect_batch]
        answered = stats.connected + stats.failed + stats.bad_status + len(batch)
        await asyncio.gather(*(one(start + i, s) for i, s in enumerate(batch)))
        deadline = time.monotonic() + 10
        while stats.connected + stats.failed + stats.bad_status < answered and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


async def wait_connected(stats: Stats, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while stats.connected + stats.failed < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# Pushpin's HTTP publish API: one item, its SSE event as the subscribers will get it.
PUSHPIN_ITEM = b'{"items":[{"channel":"%s","formats":{"http-stream":{"content":"event: message\\ndata: %s\\n\\n"}}}]}'


class Publisher(asyncio.Protocol):
    """One keep-alive connection that publishes one message at a time (where the server closes the
    connection after its answer, as Pushpin's publish API does, a new connection takes its place)."""

    def __init__(self, job: Job, free: asyncio.Queue[Publisher], answers: list[int]) -> None:
        self.job = job
        self.free = free
        self.answers = answers
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.free.put_nowait(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def send(self, channel: str, body: bytes) -> None:
        assert self.transport is not None
        path, kind = b"/pub/" + channel.encode(), b"text/plain"
        if self.job.flavour == "pushpin":
            path, kind, body = b"/publish/", b"application/json", PUSHPIN_ITEM % (channel.encode(), body)
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (path, kind, len(body), body)
        )

    def on_message_complete(self) -> None:
        self.answers.append(self.parser.get_status_code())
        if self.parser.should_keep_alive():
            self.free.put_nowait(self)
            return
        assert self.transport is not None
        self.transport.close()
        asyncio.get_running_loop().create_task(open_publisher(self.job, self.free, self.answers))


async def open_publisher(job: Job, free: asyncio.Queue[Publisher], answers: list[int], tries: int = 5) -> None:
    """A publishing connection, which joins `free` once connected."""
    loop = asyncio.get_running_loop()
    for attempt in range(tries):
        try:
            await loop.create_connection(lambda: Publisher(job, free, answers), HOST, job.publish_port or job.port)
            return
        except OSError:
            await asyncio.sleep(0.1 * (attempt + 1))


async def publish(job: Job, channels: list[str], deadline: float) -> tuple[int, list[int]]:
    """Publish `job.messages` messages at `job.rate` per second (or flat out), message `seq`
    to `channels[seq % len(channels)]`; returns how many were sent and the answers' statuses."""
    free: asyncio.Queue[Publisher] = asyncio.Queue()
    answers: list[int] = []
    for _ in range(job.publishers):
        await open_publisher(job, free, answers)
    started = time.monotonic()
    sent = 0
    for seq in range(job.messages):
        if job.rate:
            delay = started + seq / job.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            conn = await asyncio.wait_for(free.get(), remaining)
        except TimeoutError:
            break
        conn.send(channels[seq % len(channels)], b"%d %.6f" % (seq, time.time()))
        sent += 1
    while len(answers) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return sent, answers


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def read_command() -> str:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


def percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_idle(job: Job) -> None:
    stats = Stats()
    opened = 0
    for level in job.levels:
        subs = [Subscriber(f"{job.prefix}-idle{i}", 1) for i in range(opened, level)]
        await open_subscribers(job, stats, subs, first=opened)
        await wait_connected(stats, level, 30)
        opened = level
        emit("level", level=level, connected=stats.connected, failed=stats.failed, bad_status=stats.bad_status,
             reconnects=stats.reconnects)  # fmt: skip
        if await read_command() != "next":
            break
    stats.running = False
    emit("result", connected=stats.connected, failed=stats.failed, reconnects=stats.reconnects)


async def run_delivery(job: Job) -> None:
    """Fan-out (one channel) or many channels: subscribers in place, then publish."""
    stats = Stats()
    names = [f"{job.prefix}-c{i}" for i in range(job.channels)]
    # Message `seq` goes to channel `seq % channels`: each subscriber expects exactly its
    # channel's share, so loss and duplicates are counted per subscriber and message.
    subs = [Subscriber(names[i % len(names)], job.messages) for i in range(job.subscribers)]
    stats.expected = sum(len(range(i % len(names), job.messages, len(names))) for i in range(len(subs)))
    started = time.monotonic()
    await open_subscribers(job, stats, subs, first=job.first)
    await wait_connected(stats, len(subs), 120)
    if job.transport == "longpoll" and job.flavour == "tidings":
        deadline = time.monotonic() + 30
        while any(not s.cursor for s in subs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # every first poll has brought back its cursor
    emit("ready", connected=stats.connected, failed=stats.failed, seconds=time.monotonic() - started)
    if await read_command() != "go":
        return
    cpu0, t0 = own_cpu(), time.monotonic()
    deadline = t0 + job.max_seconds
    sent, answers = await publish(job, names, deadline) if job.publishes else (0, [])
    if stats.expected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.done.wait(), max(0.1, deadline - time.monotonic()))
    elapsed = time.monotonic() - t0
    stats.running = False
    latencies = sorted(stats.latencies)
    emit(
        "result",
        sent=sent,
        publish_ok=sum(1 for s in answers if s < 300),
        publish_errors=sum(1 for s in answers if s >= 300),
        delivered=stats.delivered,
        expected=stats.expected,
        duplicates=stats.duplicates,
        responses=stats.responses,
        empty=stats.empty,
        bad_status=stats.bad_status,
        reconnects=stats.reconnects,
        failed=stats.failed,
        seconds=elapsed,
        p50_ms=(percentile(latencies, 50) or 0) * 1000,
        p99_ms=(percentile(latencies, 99) or 0) * 1000,
        max_ms=(latencies[-1] if latencies else 0) * 1000,
        cdf_ms=[(percentile(latencies, p) or 0) * 1000 for p in range(101)],
        loadgen_cpu_s=own_cpu() - cpu0,
    )


async def main() -> None:
    job = Job(**json.loads(sys.stdin.readline()))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if job.mode == "idle":
        await run_idle(job)
    else:
        await run_delivery(job)
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets need no orderly close


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
