"""A lean asyncio HTTP/1.1 client for tests that make thousands of requests or need to
control the socket itself (drop it, stop reading, send raw bytes). Parses responses with
httptools, reads streams chunk by chunk; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def json(self) -> Any:
        return json.loads(self.body)


class _Parser:
    def __init__(self) -> None:
        self.response = Response()
        self.headers_done = False
        self.complete = False
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        self.response.body = b"".join(self._body)
        self.complete = True


class Connection:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parser: _Parser | None = None

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 10) -> Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    def send(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self._parser = _Parser()

    async def _feed_until(self, done: Any, timeout: float) -> None:
        assert self._parser is not None
        async with asyncio.timeout(timeout):
            while not done():
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                self._parser.parser.feed_data(data)

    async def response(self, timeout: float = 10) -> Response:
        parser = self._parser
        assert parser is not None
        await self._feed_until(lambda: parser.complete, timeout)
        return parser.response

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Response:
        self.send(method, path, body, headers)
        return await self.response(timeout)

    async def start_stream(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10) -> Response:
        """Send a GET and wait for the response headers; read the body with `read_chunk`."""
        self.send("GET", path, headers=headers)
        parser = self._parser
        assert parser is not None
        await self._feed_until(lambda: parser.headers_done, timeout)
        return parser.response

    async def read_chunk(self, timeout: float = 10) -> bytes:
        """The next piece of a streamed body; b"" once the response is complete."""
        parser = self._parser
        assert parser is not None
        async with asyncio.timeout(timeout):
            while parser.chunks.empty() and not parser.complete:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection mid-stream")
                parser.parser.feed_data(data)
        if not parser.chunks.empty():
            return parser.chunks.get_nowait()
        return b""

    async def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        """Stream body bytes until `marker` has been seen."""
        seen = b""
        async with asyncio.timeout(timeout):
            while marker not in seen:
                piece = await self.read_chunk(timeout)
                if not piece:
                    raise AssertionError(f"stream ended before {marker!r}; got {seen[-500:]!r}")
                seen += piece
        return seen

    def close(self) -> None:
        self.writer.close()


async def request(host: str, port: int, method: str, path: str, body: bytes = b"", **kw: Any) -> Response:
    conn = await Connection.open(host, port)
    try:
        return await conn.request(method, path, body, **kw)
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[dict[str, str]]:
    """Parse complete SSE events (comments dropped)."""
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            events.append(fields)
    return events


async def read_events(conn: Connection, until: str, timeout: float = 10) -> list[dict[str, str]]:
    """Read SSE events until one whose data or id contains `until` is complete."""
    raw = b""
    async with asyncio.timeout(timeout):
        while True:
            piece = await conn.read_chunk(timeout)
            if not piece:
                raise AssertionError(f"stream ended before {until!r}; got {raw[-500:]!r}")
            raw += piece
            events = sse_events(raw)
            if any(until in e.get("data", "") or until == e.get("id") for e in events):
                return events
