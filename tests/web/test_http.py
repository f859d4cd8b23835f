"""The HTTP edge itself: keep-alive, pipelining, limits, timeouts, vanished clients."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
from conftest import ServerProcess, subscribers, wait_until
from rawhttp import Connection, request
from websockets.asyncio.client import connect
from websockets.datastructures import Headers


async def raw_exchange(srv: ServerProcess, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(data)
    async with asyncio.timeout(timeout):
        received = await reader.read()
    writer.close()
    return received


def test_keep_alive_and_pipelining_answer_in_order(server: ServerProcess, channel: str) -> None:
    pipelined = (
        f"POST /pub/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
        f"GET /sub/{channel}?last_id=oldest HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).encode()
    received = asyncio.run(raw_exchange(server, pipelined))
    assert re.findall(rb"HTTP/1\.1 (\d+)", received) == [b"202", b"200", b"200"]
    assert received.index(b'"one"') < received.index(b'"status":"ok"')


def test_a_held_poll_delays_pipelined_requests_but_keeps_order(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        conn = await Connection.open(server.host, server.port)
        held = f"GET /sub/{channel}?timeout=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
        conn.writer.write((held + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").encode())
        received = b""
        async with asyncio.timeout(5):
            while b'"status":"ok"' not in received:
                received += await conn.reader.read(65536)
        assert received.index(b'"messages":[]') < received.index(b'"status":"ok"')
        conn.close()

    asyncio.run(scenario())


def test_malformed_requests_get_a_4xx_and_a_closed_connection(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--max-header-count", "10", "--max-url-bytes", "200")

    async def scenario() -> None:
        garbage = await raw_exchange(srv, b"\x00\x01 nonsense\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        smuggle = await raw_exchange(
            srv, b"POST /pub/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert smuggle.startswith(b"HTTP/1.1 400 ")
        headers = "".join(f"X-{i}: v\r\n" for i in range(11))
        many = await raw_exchange(srv, f"GET /healthz HTTP/1.1\r\n{headers}\r\n".encode())
        assert many.startswith(b"HTTP/1.1 431 ")
        long_url = await raw_exchange(srv, f"GET /{'a' * 300} HTTP/1.1\r\n\r\n".encode())
        assert long_url.startswith(b"HTTP/1.1 414 ")
        bad_utf8 = await raw_exchange(srv, b"GET /sub/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bad_utf8.startswith(b"HTTP/1.1 400 ")
        for answer in (garbage, smuggle, many, long_url, bad_utf8):
            assert b"Traceback" not in answer and b'"error"' in answer
        # The server still serves.
        assert (await request(srv.host, srv.port, "GET", "/healthz")).status == 200

    asyncio.run(scenario())


def test_a_client_trickling_headers_is_dropped(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--request-timeout", "0.5")

    async def scenario() -> None:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        async with asyncio.timeout(5):
            received = await reader.read()
        assert received.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3
        writer.close()

    asyncio.run(scenario())


def test_a_request_split_over_many_reads_is_answered(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        data = f"POST /pub/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode()
        for i in range(len(data)):  # one byte per write; the server sees many reads
            writer.write(data[i : i + 1])
            await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202 ")
        writer.close()

    asyncio.run(scenario())


def test_idle_keep_alive_connections_are_closed(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--keepalive-timeout", "0.3")

    async def scenario() -> None:
        conn = await Connection.open(srv.host, srv.port)
        assert (await conn.request("GET", "/healthz")).status == 200
        async with asyncio.timeout(5):
            assert await conn.reader.read() == b""
        conn.close()

    asyncio.run(scenario())


def test_500_vanished_long_polls_are_released_within_a_second(server: ServerProcess, channel: str) -> None:
    async def open_all() -> list[Connection]:
        conns = await asyncio.gather(*(Connection.open(server.host, server.port) for _ in range(500)))
        for conn in conns:
            conn.send("GET", f"/sub/{channel}?timeout=60")
            await conn.writer.drain()
        return list(conns)

    async def scenario() -> float:
        conns = await open_all()
        async with asyncio.timeout(10):
            while (await request(server.host, server.port, "GET", f"/channels/{channel}")).json()["subscribers"] < 500:
                await asyncio.sleep(0.02)
        for conn in conns:
            conn.writer.transport.abort()
        started = time.monotonic()
        async with asyncio.timeout(5):
            while (await request(server.host, server.port, "GET", f"/channels/{channel}")).json()["subscribers"]:
                await asyncio.sleep(0.01)
        return time.monotonic() - started

    released_in = asyncio.run(scenario())
    assert released_in < 1.0, f"500 dropped clients took {released_in:.2f} s to be released"


def test_subscriber_counts_stay_exact_through_churn(server: ServerProcess, channel: str) -> None:
    """Clients of every transport join and vanish at random, publishes wake the long-polls;
    after every round the server's count equals what the clients know is open."""
    rng = random.Random(7)

    async def count(name: str) -> int:
        info = (await request(server.host, server.port, "GET", f"/channels/{name}")).json()
        return int(info["subscribers"])

    async def settle(name: str, expected: int) -> None:
        try:
            async with asyncio.timeout(2):
                while await count(name) != expected:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"{name}: server counts {await count(name)}, clients hold {expected}") from None

    async def scenario() -> None:
        polls: list[Connection] = []  # held on both channels
        streams: list[Connection] = []  # on the first channel only
        for _ in range(15):
            for _ in range(rng.randint(5, 30)):
                conn = await Connection.open(server.host, server.port)
                if rng.random() < 0.5:
                    conn.send("GET", f"/sub/{channel},{channel}x?timeout=60")
                    polls.append(conn)
                else:
                    await conn.start_stream(f"/{rng.choice(['sse', 'stream'])}/{channel}")
                    streams.append(conn)
            for group in (polls, streams):
                rng.shuffle(group)
                for _ in range(rng.randint(0, len(group))):
                    group.pop().writer.transport.abort()
            if rng.random() < 0.3:  # answers, and so releases, every held long-poll
                await request(server.host, server.port, "POST", f"/pub/{channel}", b"tick")
                for conn in polls:
                    assert (await conn.response()).status == 200
                    conn.close()
                polls.clear()
            await settle(channel, len(polls) + len(streams))
            await settle(channel + "x", len(polls))
        for conn in polls + streams:
            conn.writer.transport.abort()
        await settle(channel, 0)
        await settle(channel + "x", 0)

    asyncio.run(scenario())


IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"
)


def assert_current_date(headers: dict[str, str] | Headers, started: float) -> None:
    """A Date header in RFC 9110's preferred format, naming a second of this test."""
    date = headers.get("date", "")
    assert IMF_FIXDATE.fullmatch(date), f"Date: {date!r}"
    assert int(started) <= parsedate_to_datetime(date).timestamp() <= time.time()


def test_every_answer_carries_the_date(server: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        started = time.time()
        assert_current_date((await request(server.host, server.port, "GET", "/healthz")).headers, started)
        assert_current_date((await request(server.host, server.port, "GET", "/nowhere")).headers, started)
        before = (await request(server.host, server.port, "GET", f"/sub/{channel}?timeout=0")).json()["last_id"]
        held = await Connection.open(server.host, server.port)
        held.send("GET", f"/sub/{channel}?last_id={before}")  # answered from bytes shared by every waiting poll
        await asyncio.to_thread(wait_until, lambda: subscribers_of(server, channel) == 1, 5, "the poll to wait")
        await request(server.host, server.port, "POST", f"/pub/{channel}", b"hi")
        first = await held.response()
        assert_current_date(first.headers, started)
        # The same shared bytes answer a later poll for that message, with that later answer's Date.
        await asyncio.to_thread(wait_until, lambda: int(time.time()) > int(started), 2, "the clock's next second")
        later = time.time()
        again = await request(server.host, server.port, "GET", f"/sub/{channel}?last_id={before}")
        assert again.json()["messages"] == first.json()["messages"]
        assert_current_date(again.headers, later)
        stream = await Connection.open(server.host, server.port)
        assert_current_date((await stream.start_stream(f"/sse/{channel}")).headers, started)
        async with connect(f"ws://{server.host}:{server.port}/ws/{channel}") as ws:
            assert ws.response is not None
            assert_current_date(ws.response.headers, started)
        for conn in (held, stream):
            conn.close()

    asyncio.run(scenario())


def subscribers_of(srv: ServerProcess, channel: str) -> int:
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        return subscribers(client, channel)


def split_response(data: bytes) -> tuple[dict[str, str], bytes]:
    """The first response's headers (lower-case names), and every byte after its head."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return {"status": lines[0].split()[1], **headers}, rest


def test_head_is_get_without_its_body_where_the_answer_is_immediate(server: ServerProcess, channel: str) -> None:
    httpx.post(f"{server.url}/pub/{channel}", content="x", timeout=10)
    for path in ("/metrics", f"/channels/{channel}", "/", "/static/tidings.js", "/healthz", "/openapi.json"):
        # HEAD, then GET on the same connection: the GET's answer must follow the HEAD's head at once.
        pipelined = (
            f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, rest = split_response(asyncio.run(raw_exchange(server, pipelined.encode())))
        assert head["status"] == "200" and rest.startswith(b"HTTP/1.1 200 "), (path, head, rest[:100])
        get, body = split_response(rest)
        assert head["content-type"] == get["content-type"], path
        assert head["content-length"] == get["content-length"] == str(len(body)), path


def test_head_of_a_subscription_is_405_naming_get(server: ServerProcess, channel: str) -> None:
    # A poll that waits or a stream that never ends has no headers to give on their own.
    for path in (f"/sub/{channel}", f"/sse/{channel}", f"/stream/{channel}", f"/ws/{channel}"):
        sent = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        head, rest = split_response(asyncio.run(raw_exchange(server, sent)))
        assert head["status"] == "405" and head["allow"] == "GET" and rest == b"", (path, head, rest)
