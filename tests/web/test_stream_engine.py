"""The stream engine (`streaming.Stream`) and the WebSocket command layer in-process: an `App`
on its own loop, connections with a recording transport fed raw bytes, one loop turn run to
let the batched writes out. What test_streams.py and test_websocket.py check end to end, here
at the seam where the transports differ (how a stream ends) and fast."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from stubs import RecordingTransport
from websockets.frames import Frame, Opcode

from tidings.brokers.memory import MemoryBroker
from tidings.config import Settings
from tidings.hub import Hub, Published, wall_clock_ms
from tidings.web.app import App
from tidings.web.http import HttpConnection

HANDSHAKE = (
    b"GET /ws/%s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Server:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.hub = Hub(buffer_size=100, buffer_ttl=3600, now_ms=wall_clock_ms())
        self.broker = MemoryBroker(self.hub)
        self.app = App(Settings(), self.broker, loop)

    def publish(self, channel: str, data: object) -> Published:
        return self.hub.publish(channel, data, wall_clock_ms())

    def connect(self, request: bytes) -> Client:
        client = Client(self, HttpConnection(self.app, self.app.limits, self.app.timeouts))
        client.send(request)
        return client

    def turn(self) -> None:
        """Run the loop until what this turn scheduled (the batched writes) is done."""
        self.loop.run_until_complete(asyncio.sleep(0))


class Client(RecordingTransport):
    def __init__(self, server: Server, conn: HttpConnection) -> None:
        super().__init__()
        self.server = server
        self.conn = conn
        conn.connection_made(self)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)
        self.server.turn()


@pytest.fixture
def server() -> Iterator[Server]:
    loop = asyncio.new_event_loop()
    try:
        yield Server(loop)
    finally:
        loop.close()


def ws_events(data: bytes) -> list[dict[str, object]]:
    """The JSON text frames in `data` (server frames: unmasked, each under 64 KiB)."""
    events = []
    while data:
        assert data[0] == 0x81, data
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        events.append(json.loads(data[start : start + size]))
        data = data[start + size :]
    return events


def command(payload: object) -> bytes:
    return Frame(Opcode.TEXT, json.dumps(payload).encode()).serialize(mask=True)


def upgrade(server: Server, channels: bytes) -> Client:
    transport = server.connect(HANDSHAKE % channels)
    assert transport.take().startswith(b"HTTP/1.1 101 ")
    return transport


def test_a_websocket_outlives_a_deleted_channel(server: Server) -> None:
    transport = upgrade(server, b"a,b")
    server.hub.delete("a")
    server.turn()
    assert ws_events(transport.take()) == [{"type": "closed", "channel": "a"}]
    published = server.publish("b", "still here")
    server.turn()
    (event,) = ws_events(transport.take())
    assert event["last_id"] == str(published.id)  # one channel left: the message's own id
    assert not transport.closed


def test_an_http_stream_ends_when_its_channel_is_deleted(server: Server) -> None:
    transport = server.connect(b"GET /stream/a HTTP/1.1\r\nHost: t\r\n\r\n")
    transport.take()
    server.hub.delete("a")
    server.turn()
    assert transport.take().endswith(b'{"event":"closed","channel":"a"}\n\r\n0\r\n\r\n')
    assert transport.closed


def test_subscribing_a_second_channel_carries_the_first_ones_position(server: Server) -> None:
    transport = upgrade(server, b"a")
    on_a = server.publish("a", 1)
    server.turn()
    transport.take()
    transport.send(command({"subscribe": ["b"]}))
    on_b = server.publish("b", 2)
    server.turn()
    (event,) = ws_events(transport.take())
    assert event["last_id"] == f"a:{on_a.id},b:{on_b.id}"
    transport.send(command({"unsubscribe": ["a"]}))
    again = server.publish("b", 3)
    server.publish("a", 4)
    server.turn()
    (event,) = ws_events(transport.take())
    assert event["last_id"] == str(again.id)


def test_a_refused_subscribe_command_leaves_its_channels_free_to_subscribe(server: Server) -> None:
    transport = upgrade(server, b"a")
    transport.send(command({"subscribe": ["b"], "last_id": "not-a-cursor"}))
    (refusal,) = ws_events(transport.take())
    assert refusal["type"] == "error" and refusal["error"] == "invalid_cursor", refusal
    transport.send(command({"subscribe": ["b"]}))
    published = server.publish("b", "after the refusal")
    server.turn()
    (event,) = ws_events(transport.take())
    message = {"id": str(published.id), "channel": "b", "data": "after the refusal", "time": published.id.ms}
    assert event["message"] == message


def test_a_stream_counts_in_the_metrics_as_its_transport(server: Server) -> None:
    streams = {
        "longpoll": b"GET /sub/a?timeout=30 HTTP/1.1\r\nHost: t\r\n\r\n",
        "sse": b"GET /sse/a HTTP/1.1\r\nHost: t\r\n\r\n",
        "stream": b"GET /stream/a?format=html HTTP/1.1\r\nHost: t\r\n\r\n",
        "ws": HANDSHAKE % b"a",
    }
    for transport, request in streams.items():
        client = server.connect(request)
        assert client.conn.held is not None and client.conn.held.transport == transport
