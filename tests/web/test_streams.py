"""SSE and /stream (NDJSON, HTML): delivery, resume, gaps, heartbeats, DELETE."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import httpx
from conftest import ServerProcess, subscribers, wait_until
from rawhttp import Connection, read_events, request, sse_events


async def publish(srv: ServerProcess, channel: str, data: object) -> str:
    answer = await request(
        srv.host,
        srv.port,
        "POST",
        f"/pub/{channel}",
        json.dumps(data).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status in (201, 202), answer.body
    ident = answer.json()["id"]
    assert isinstance(ident, str)
    return ident


async def wait_subscribed(srv: ServerProcess, channel: str, count: int) -> None:
    async with asyncio.timeout(5):
        while True:
            info = (await request(srv.host, srv.port, "GET", f"/channels/{channel}")).json()
            if info["subscribers"] == count:
                return
            await asyncio.sleep(0.01)


def test_sse_delivers_and_resumes_with_last_event_id(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        conn = await Connection.open(server.host, server.port)
        head = await conn.start_stream(f"/sse/{channel}")
        assert head.status == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert head.headers["cache-control"] == "no-store"
        assert head.headers["x-accel-buffering"] == "no"
        await wait_subscribed(server, channel, 1)
        first = await publish(server, channel, {"n": 1})
        second = await publish(server, channel, {"n": 2})
        events = await read_events(conn, second)
        assert [e["id"] for e in events] == [first, second]
        assert [json.loads(e["data"])["data"] for e in events] == [{"n": 1}, {"n": 2}]
        conn.close()
        await wait_subscribed(server, channel, 0)
        third = await publish(server, channel, {"n": 3})
        # Resume: only what came after the last event seen.
        conn = await Connection.open(server.host, server.port)
        await conn.start_stream(f"/sse/{channel}", headers={"Last-Event-ID": first})
        assert [e["id"] for e in await read_events(conn, third)] == [second, third]
        conn.close()
        # The same with the query parameter, and via /sub with Accept: text/event-stream.
        conn = await Connection.open(server.host, server.port)
        head = await conn.start_stream(
            f"/sub/{channel}?last_event_id={second}", headers={"Accept": "text/event-stream"}
        )
        assert head.headers["content-type"].startswith("text/event-stream")
        assert [e["id"] for e in await read_events(conn, third)] == [third]
        conn.close()

    asyncio.run(scenario())


def test_sse_gap_event_and_multi_channel_cursor(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--buffer-size", "3")
    a, b = channel + "a", channel + "b"

    async def scenario() -> None:
        ids = [await publish(srv, a, i) for i in range(5)]
        conn = await Connection.open(srv.host, srv.port)
        await conn.start_stream(f"/sse/{a}?last_event_id={ids[0]}")
        events = await read_events(conn, ids[4])
        assert events[0]["event"] == "gap" and json.loads(events[0]["data"]) == {"channels": [a]}
        assert [json.loads(e["data"])["data"] for e in events[1:]] == [2, 3, 4]
        conn.close()
        # Several channels: each event id is a cursor over all of them.
        conn = await Connection.open(srv.host, srv.port)
        await conn.start_stream(f"/sse/{a},{b}?last_event_id={ids[4]}")
        await wait_subscribed(srv, b, 1)
        b1 = await publish(srv, b, "b1")
        [event] = await read_events(conn, '"b1"')
        conn.close()
        await wait_subscribed(srv, b, 0)
        a5 = await publish(srv, a, "a5")
        resumed = (await request(srv.host, srv.port, "GET", f"/sub/{a},{b}?last_id={event['id']}")).json()
        assert [m["id"] for m in resumed["messages"]] == [a5]
        assert b1 in event["id"]

    asyncio.run(scenario())


def test_sse_heartbeat(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--heartbeat", "0.2")

    async def scenario() -> None:
        conn = await Connection.open(srv.host, srv.port)
        await conn.start_stream(f"/sse/{channel}")
        await conn.read_until(b": heartbeat\n\n", timeout=3)
        conn.close()

    asyncio.run(scenario())


def test_ndjson_stream(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        await publish(server, channel, "before")
        conn = await Connection.open(server.host, server.port)
        head = await conn.start_stream(f"/stream/{channel}?last_id=oldest")
        assert head.headers["content-type"] == "application/x-ndjson"
        assert head.headers["transfer-encoding"] == "chunked"
        await wait_subscribed(server, channel, 1)
        await publish(server, channel, {"x": [1, 2]})
        raw = await conn.read_until(b'{"x":[1,2]}')
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert [m["data"] for m in lines] == ["before", {"x": [1, 2]}]
        conn.close()

    asyncio.run(scenario())


def test_html_stream_escapes_every_value_and_pads(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        conn = await Connection.open(server.host, server.port)
        head = await conn.start_stream(f"/stream/{channel}", headers={"Accept": "text/html"})
        assert head.headers["content-type"].startswith("text/html")
        preamble = await conn.read_until(b"-->\n")
        assert len(preamble) > 1024
        await wait_subscribed(server, channel, 1)
        hostile = {"nick": "<script>x</script>", "message": "<img src=x onerror=alert(1)>"}
        await publish(server, channel, hostile)
        await publish(server, channel, "a & b <i>")
        raw = await conn.read_until(b"a &amp; b &lt;i&gt;")
        assert b"<script>" not in raw and b"<img" not in raw and b"<i>" not in raw
        assert b"&lt;img src=x onerror=alert(1)&gt;" in raw
        assert b"<b>&lt;script&gt;x&lt;/script&gt;</b>" in raw
        conn.close()

    asyncio.run(scenario())


def test_delete_ends_every_transport(server: ServerProcess, http: httpx.Client, channel: str) -> None:
    async def scenario() -> None:
        await publish(server, channel, "x")
        sse = await Connection.open(server.host, server.port)
        await sse.start_stream(f"/sse/{channel}")
        nd = await Connection.open(server.host, server.port)
        await nd.start_stream(f"/stream/{channel}")
        lp = await Connection.open(server.host, server.port)
        lp.send("GET", f"/sub/{channel}")
        await wait_subscribed(server, channel, 3)
        answer = await request(server.host, server.port, "DELETE", f"/pub/{channel}")
        assert answer.status == 200
        assert answer.json() == {"channel": channel, "deleted": True, "subscribers": 3}
        polled = await lp.response()
        assert polled.status == 410 and polled.json()["error"] == "channel_deleted"
        raw = await sse.read_until(b"event: closed")
        assert sse_events(raw)[-1] == {
            "event": "closed",
            "data": json.dumps({"channel": channel}, separators=(",", ":")),
        }
        assert await sse.read_chunk() == b""  # the stream ended
        line = await nd.read_until(b'"closed"')
        assert json.loads(line.strip().splitlines()[-1]) == {"event": "closed", "channel": channel}
        assert await nd.read_chunk() == b""
        for conn in (sse, nd, lp):
            conn.close()
        again = await request(server.host, server.port, "DELETE", f"/pub/{channel}")
        assert again.status == 200 and again.json()["subscribers"] == 0  # deleting is idempotent

    asyncio.run(scenario())
    assert subscribers(http, channel) == 0
    wait_until(lambda: http.get(f"/channels/{channel}").json()["buffered"] == 0, 2, "the channel to be gone")


def test_a_stream_that_stops_reading_is_dropped_not_buffered_forever(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--stream-buffer-bytes", "65536")

    async def scenario() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
        sock.connect((srv.host, srv.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET /sse/{channel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await wait_subscribed(srv, channel, 1)
        publisher = await Connection.open(srv.host, srv.port)
        payload = json.dumps("x" * 60000).encode()
        async with asyncio.timeout(20):
            for _ in range(400):  # ~24 MB: far more than socket buffers and the cap hold
                await publisher.request("POST", f"/pub/{channel}", payload, {"Content-Type": "application/json"})
                info = (await publisher.request("GET", f"/channels/{channel}")).json()
                if info["subscribers"] == 0:
                    break
        assert info["subscribers"] == 0, "the stalled stream was never dropped"
        # The server is fine, and what the stalled client does read ends with the notice.
        assert (await publisher.request("GET", "/healthz")).status == 200
        async with asyncio.timeout(10):
            tail = b""
            while chunk := await reader.read(1 << 20):
                tail = (tail + chunk)[-4096:]
        assert b"event: slow" in tail
        publisher.close()
        writer.close()

    asyncio.run(scenario())


def test_http10_sse_is_close_delimited_and_messages_arrive_unchunked(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET /sse/{channel} HTTP/1.0\r\n\r\n".encode())
        received = b""
        async with asyncio.timeout(5):
            while b": tidings\n\n" not in received:
                received += await reader.read(65536)
        await wait_subscribed(server, channel, 1)
        first = await publish(server, channel, "one")
        second = await publish(server, channel, "two")
        async with asyncio.timeout(5):
            while f"id: {second}".encode() not in received:
                received += await reader.read(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head
        assert body.startswith(b": tidings\n\n")
        assert f'id: {first}\ndata: {{"id":"{first}"'.encode() in body  # no chunk-size lines
        writer.close()

    asyncio.run(scenario())
