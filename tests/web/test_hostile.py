"""Hostile input through raw sockets: every request gets a 4xx or a closed connection — never a
5xx, never a traceback — and the server keeps serving other clients meanwhile."""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import ServerProcess
from rawhttp import Connection, request

HOSTILE = {
    "two content-lengths": b"POST /pub/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "content-length and chunked": (
        b"POST /pub/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "negative content-length": b"POST /pub/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "NUL in the path": b"GET /sub/a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "non-UTF-8 path": b"GET /sub/\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
    "percent-encoded non-UTF-8": b"GET /sub/%C3%28 HTTP/1.1\r\nHost: a\r\n\r\n",
    "path traversal": b"GET /static/../../../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
    "encoded traversal": b"GET /static/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: a\r\n\r\n",
    "dots as a channel": b"GET /sub/.. HTTP/1.1\r\nHost: a\r\n\r\n",
    "encoded slash in a channel": b"POST /pub/a%2Fb HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
    "invalid JSON": (
        b"POST /pub/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope"
    ),
    "invalid UTF-8 body": b"POST /pub/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\xff\xfe",
    "bad cursor": b"GET /sub/x?last_id=12-x HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad timeout": b"GET /sub/x?timeout=nan HTTP/1.1\r\nHost: a\r\n\r\n",
    "huge timeout": b"GET /sub/x?timeout=1e308 HTTP/1.1\r\nHost: a\r\n\r\n",
    "33 channels": b"GET /sub/" + b",".join(b"c%d" % i for i in range(33)) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipelined garbage": b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01\x02\x00garbage\r\n\r\n",
    "bare garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "unknown method": b"BREW /pub/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "huge header": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_gets_4xx_or_close_and_the_server_serves_on(server: ServerProcess, name: str) -> None:
    async def scenario() -> None:
        bystander = await Connection.open(server.host, server.port)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(HOSTILE[name])
        await writer.drain()
        received = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    received += chunk
        except TimeoutError:
            pass  # still open, having answered (or waiting for more): fine, as long as it is no 5xx
        except ConnectionResetError:
            pass
        writer.close()
        statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
        assert all(status < 500 for status in statuses), received[:300]
        assert b"Traceback" not in received
        if name not in ("pipelined garbage",):
            assert all(400 <= status < 500 for status in statuses), (statuses, received[:300])
        # Someone else on the server meanwhile is served as usual.
        assert (await bystander.request("GET", "/healthz")).status == 200
        assert (await request(server.host, server.port, "GET", "/healthz")).status == 200
        bystander.close()

    asyncio.run(scenario())
