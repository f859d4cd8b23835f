"""WebSocket: delivery and resume, publish and (un)subscribe over the socket, bad frames,
pings, deleted channels, and a client that stops reading. Clients: the `websockets` library,
and raw sockets where the test needs to misbehave."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, subscribers, wait_until
from rawhttp import Connection
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from tidings.web.websocket import _between_frames


async def frame(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    data = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(data, dict)
    return data


async def frames_until(ws: ClientConnection, kind: str, timeout: float = 5) -> list[dict[str, Any]]:
    got = []
    async with asyncio.timeout(timeout):
        while not got or got[-1]["type"] != kind:
            got.append(await frame(ws, timeout))
    return got


def ws_url(srv: ServerProcess, path: str) -> str:
    return f"ws://{srv.host}:{srv.port}{path}"


def test_messages_arrive_with_cursors_and_a_reconnect_resumes(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server, f"/ws/{channel}")) as ws:
            await asyncio.to_thread(wait_until, lambda: _count(server, channel) == 1, 5, "the socket to subscribe")
            first = _publish(server, channel, {"n": 1})
            message = await frame(ws)
            assert message == {"type": "message", "last_id": first, "message": message["message"]}
            assert message["message"]["data"] == {"n": 1} and message["message"]["id"] == first
        later = [_publish(server, channel, {"n": n}) for n in (2, 3)]
        async with connect(ws_url(server, f"/ws/{channel}?last_id={first}")) as ws:
            backlog = [await frame(ws), await frame(ws)]
            assert [f["last_id"] for f in backlog] == later
            assert [f["message"]["data"]["n"] for f in backlog] == [2, 3]

    asyncio.run(scenario())


def test_publish_subscribe_and_unsubscribe_over_the_socket(server: ServerProcess, channel: str) -> None:
    other = channel + "-b"

    async def scenario() -> None:
        async with connect(ws_url(server, "/ws")) as ws:
            await ws.send(json.dumps({"subscribe": [channel, other]}))
            await asyncio.to_thread(wait_until, lambda: _count(server, other) == 1, 5, "the subscription")
            await ws.send(json.dumps({"publish": {"channel": other, "data": "from the socket"}}))
            got = await frames_until(ws, "published")
            assert [f["type"] for f in got] == ["message", "published"]
            assert got[0]["message"]["data"] == "from the socket"
            assert got[0]["last_id"].count(":") == 2  # the multi-channel cursor
            assert got[1]["channel"] == other and got[1]["subscribers"] == 1
            # Long-polls see what the socket published, too.
            answer = httpx.get(f"{server.url}/sub/{other}?last_id=oldest").json()
            assert [m["data"] for m in answer["messages"]] == ["from the socket"]
            await ws.send(json.dumps({"unsubscribe": [other]}))
            await asyncio.to_thread(wait_until, lambda: _count(server, other) == 0, 5, "the unsubscription")
            _publish(server, other, "not for us")
            _publish(server, channel, "for us")
            assert (await frame(ws))["message"]["data"] == "for us"
            await ws.send(json.dumps({"nonsense": True}))
            assert (await frame(ws))["error"] == "invalid_command"
            await ws.send(json.dumps({"publish": {"channel": "bad name!", "data": 1}}))
            assert (await frame(ws))["error"] == "invalid_channel"

    asyncio.run(scenario())


def test_bad_frames_close_with_clear_codes(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--max-message-bytes", "1000")

    async def closed_with(send: object) -> int | None:
        async with connect(ws_url(srv, f"/ws/{channel}"), max_size=None) as ws:
            await ws.send(send)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return None

    async def scenario() -> None:
        assert await closed_with(b"\x00binary") == 1003
        assert await closed_with("not json") == 1007
        assert await closed_with(json.dumps({"publish": {"channel": channel, "data": float("nan")}})) == 1007
        assert await closed_with(json.dumps({"publish": {"channel": channel, "data": "x" * 5000}})) == 1009
        # Not a WebSocket request at all: a JSON error, not a hang.
        answer = httpx.get(f"{srv.url}/ws/{channel}")
        assert answer.status_code == 426 and answer.json()["error"] == "upgrade_required"

    asyncio.run(scenario())


def test_the_server_pings_and_deleting_a_channel_keeps_the_socket(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--heartbeat", "0.2")
    other = channel + "-b"

    async def scenario() -> None:
        sock = await _raw_socket(srv, f"/ws/{channel},{other}")
        reader, writer = await asyncio.open_connection(sock=sock)
        async with asyncio.timeout(5):
            assert (await reader.readexactly(2)) == b"\x89\x00"  # an empty ping frame
        writer.close()
        async with connect(ws_url(srv, f"/ws/{channel},{other}")) as ws:
            await asyncio.to_thread(wait_until, lambda: _count(srv, other) == 1, 5, "the subscription")
            assert httpx.delete(f"{srv.url}/pub/{other}").status_code == 200
            assert await frame(ws) == {"type": "closed", "channel": other}
            _publish(srv, channel, "still here")
            assert (await frame(ws))["message"]["data"] == "still here"

    asyncio.run(scenario())


async def _stall(srv: ServerProcess, channel: str) -> bytes:
    """A socket on `channel` that stops reading, flooded until the server drops it (a server with
    a small --stream-buffer-bytes): the last bytes the server sent it."""
    sock = await _raw_socket(srv, f"/ws/{channel}", receive_buffer=4096)
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        wait_until(lambda: subscribers(client, channel) == 1, 5, "the socket to subscribe")
        publisher = await Connection.open(srv.host, srv.port)
        payload = json.dumps("x" * 60000).encode()
        async with asyncio.timeout(20):
            for _ in range(400):  # far more than socket buffers and the cap hold
                await publisher.request("POST", f"/pub/{channel}", payload, {"Content-Type": "application/json"})
                if subscribers(client, channel) == 0:
                    break
        assert subscribers(client, channel) == 0, "the stalled socket was never dropped"
        publisher.close()
    reader, writer = await asyncio.open_connection(sock=sock)
    tail = b""
    async with asyncio.timeout(10):
        while chunk := await reader.read(1 << 20):
            tail = (tail + chunk)[-4096:]
    writer.close()
    return tail


def test_a_socket_that_stops_reading_is_closed_not_buffered_forever(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--stream-buffer-bytes", "65536")
    tail = asyncio.run(_stall(srv, channel))
    assert b'"type":"slow"' in tail and b"\x88" in tail  # the notice, then a close frame


def test_the_close_code_says_why_the_server_ended_the_socket(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--stream-buffer-bytes", "65536")
    slow = asyncio.run(_stall(srv, channel))
    # The last frame: close (0x88), 15 bytes: the code 1008 (policy violation) and the reason.
    assert slow.endswith(b"\x88\x0f" + (1008).to_bytes(2, "big") + b"slow consumer")

    async def shutdown() -> None:
        async with connect(ws_url(srv, f"/ws/{channel}")) as ws:
            await asyncio.to_thread(wait_until, lambda: _count(srv, channel) == 1, 5, "the socket to subscribe")
            exited = asyncio.get_running_loop().run_in_executor(None, srv.terminate)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # going away
            await exited

    asyncio.run(shutdown())


def test_frames_split_across_reads_and_fragmented_commands_are_whole(server: ServerProcess, channel: str) -> None:
    """Between frames the server keeps no frame parser (an idle socket's memory); within one, and
    within a fragmented message, it must. Each step ends on an answer (a pong, a frame) to what
    it sent, so the next bytes arrive in a later read."""

    def publish(n: int) -> bytes:
        return json.dumps({"publish": {"channel": channel, "data": n}}).encode()

    async def scenario() -> None:
        sock = await _raw_socket(server, f"/ws/{channel}")
        reader, writer = await asyncio.open_connection(sock=sock)
        client = ClientProtocol(parse_uri(ws_url(server, f"/ws/{channel}")), state=State.OPEN)

        async def until(wanted: Callable[[Frame], bool]) -> list[Frame]:
            got: list[Frame] = []
            async with asyncio.timeout(5):
                while not any(wanted(f) for f in got):
                    data = await reader.read(65536)
                    assert data, f"the server closed the socket; it sent {got}"
                    client.receive_data(data)
                    got.extend(e for e in client.events_received() if isinstance(e, Frame))
            return got

        def pong(data: bytes) -> Callable[[Frame], bool]:
            return lambda f: f.opcode is Opcode.PONG and f.data == data

        def published(f: Frame) -> bool:
            return f.opcode is Opcode.TEXT and json.loads(f.data)["type"] == "published"

        def send(*frames: Frame) -> bytes:
            return b"".join(f.serialize(mask=True) for f in frames)

        # A frame cut after its 2-byte head: the server has read the head, nothing is buffered.
        whole = send(Frame(Opcode.TEXT, publish(1)))
        writer.write(send(Frame(Opcode.PING, b"a")) + whole[:2])
        await until(pong(b"a"))
        writer.write(whole[2:])
        got = await until(published)
        assert [json.loads(f.data)["type"] for f in got if f.opcode is Opcode.TEXT] == ["message", "published"]
        # A command in two fragments, a ping between them.
        command = publish(2)
        writer.write(send(Frame(Opcode.TEXT, command[:10], fin=False), Frame(Opcode.PING, b"b")))
        await until(pong(b"b"))
        writer.write(send(Frame(Opcode.CONT, command[10:])))
        got = await until(published)
        assert json.loads(got[0].data)["message"]["data"] == 2
        writer.close()

    asyncio.run(scenario())


def test_the_frame_parser_is_seen_to_rest_only_between_frames() -> None:
    """What lets an idle socket drop its protocol (see the test above for the behaviour): should a
    later `websockets` park its parser elsewhere, this fails and sockets merely keep it."""

    def fed(*chunks: bytes) -> ServerProtocol:
        protocol = ServerProtocol(state=State.OPEN)
        for chunk in chunks:
            protocol.receive_data(chunk)
        protocol.events_received()
        return protocol

    whole = Frame(Opcode.TEXT, b'{"subscribe": ["a"]}').serialize(mask=True)
    assert _between_frames(fed(whole))
    assert _between_frames(fed(whole[:7], whole[7:]))
    for cut in (1, 2, 6, len(whole) - 1):
        assert not _between_frames(fed(whole[:cut]))
    fragment = Frame(Opcode.TEXT, b'{"subscribe"', fin=False).serialize(mask=True)
    assert not _between_frames(fed(fragment))
    assert _between_frames(fed(fragment, Frame(Opcode.CONT, b': ["a"]}').serialize(mask=True)))
    closing = fed(Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True))
    assert not _between_frames(closing)


async def _raw_socket(srv: ServerProcess, path: str, receive_buffer: int = 0) -> socket.socket:
    """A WebSocket opened by hand (handshake read), for tests that must not read like a client."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((srv.host, srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    sock.settimeout(None)
    sock.setblocking(False)
    return sock


def _publish(srv: ServerProcess, channel: str, data: object) -> str:
    answer = httpx.post(f"{srv.url}/pub/{channel}", json=data, timeout=10)
    assert answer.status_code in (201, 202), answer.text
    ident = answer.json()["id"]
    assert isinstance(ident, str)
    return ident


def _count(srv: ServerProcess, channel: str) -> int:
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        return subscribers(client, channel)


def test_adding_a_channel_keeps_the_cursor_of_the_first(server: ServerProcess, channel: str) -> None:
    other = channel + "-b"

    async def scenario() -> None:
        async with connect(ws_url(server, f"/ws/{channel}")) as ws:
            await asyncio.to_thread(wait_until, lambda: _count(server, channel) == 1, 5, "the socket to subscribe")
            first = _publish(server, channel, "one")
            assert (await frame(ws))["last_id"] == first  # one channel: the cursor is the id
            await ws.send(json.dumps({"subscribe": [other]}))
            await asyncio.to_thread(wait_until, lambda: _count(server, other) == 1, 5, "the second subscription")
            second = _publish(server, other, "two")
            assert (await frame(ws))["last_id"] == f"{channel}:{first},{other}:{second}"

    asyncio.run(scenario())


def test_a_handshake_must_be_http_1_1_and_a_426_names_the_protocol(server: ServerProcess, channel: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /ws/{channel} HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(handshake.encode())
        received = b""
        while chunk := sock.recv(65536):  # the server answers and closes (bounded by the timeout)
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), received  # RFC 6455 4.1: a handshake is HTTP/1.1
    assert json.loads(body)["error"] == "bad_handshake"
    # A plain GET: 426, saying which protocol to upgrade to (RFC 9110 15.5.22).
    answer = httpx.get(f"{server.url}/ws/{channel}", timeout=10)
    assert answer.status_code == 426 and answer.json()["error"] == "upgrade_required"
    assert answer.headers["upgrade"] == "websocket" and answer.headers["connection"].lower() == "upgrade"


def test_a_bad_cursor_is_refused_before_the_upgrade(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(server, f"/ws/{channel}?last_id=nonsense")):
                pass
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body)["error"] == "invalid_cursor"

    asyncio.run(scenario())
    assert "Traceback" not in server.log()
