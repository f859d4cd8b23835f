"""A lean HTTP/1.1 client for one URL: POST a JSON body, get the status and body back, over a
small pool of keep-alive connections. What `--auth-url` calls (tidings/auth_backend.py).

Why not httpx (a dependency already): measured on this machine, one httpx.AsyncClient POST to a
local aiohttp app cost ~1,350 us of CPU on uvloop; an --auth-url check not in the cache was then
~10x the long-poll it guarded. This client is an asyncio Protocol parsed by httptools, as the
server's own edge is (`web/http.py`).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

MAX_BODY = 1 << 20  # bytes of an answer at most


class UpstreamError(Exception):
    """No usable answer: the connection failed, closed early, or the answer was malformed or too large."""


class _Exchange(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.lost = False
        self.keep_alive = False  # (read when the answer completes: httptools forgets it after)
        self.received = False  # (anything of the current answer: a request is resent only if not)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's: not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(UpstreamError("the connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"a malformed answer: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            raise UpstreamError("an answer too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.body, self.size, self.received, self.keep_alive = [], 0, False, False
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        return self.answer

    @property
    def reusable(self) -> bool:
        return self.keep_alive and not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class JsonPoster:
    def __init__(self, url: str, timeout: float, max_connections: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http:// or https:// URL, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]  # (no credentials in a Host header)
        self.head = f"POST {self.target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
        self.timeout = timeout
        self.idle: list[_Exchange] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """The status and body of the answer; raises UpstreamError or TimeoutError."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"{self.head}{extra}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
        async with asyncio.timeout(self.timeout), self.slots:
            while self.idle:  # a kept-alive connection the server may have closed meanwhile
                exchange = self.idle.pop()
                if not exchange.reusable:
                    continue
                try:
                    return await self._exchange(exchange, request)
                except UpstreamError:
                    if exchange.received:
                        raise
                    # (closed unanswered, before a byte: a stale connection; the question is safe to ask again)
            loop = asyncio.get_running_loop()
            try:
                _, exchange = await loop.create_connection(_Exchange, self.host, self.port, ssl=self.ssl)
            except OSError as exc:
                raise UpstreamError(f"cannot connect: {exc}") from None
            return await self._exchange(exchange, request)

    async def _exchange(self, exchange: _Exchange, request: bytes) -> tuple[int, bytes]:
        try:
            answer = await exchange.send(request)
        except BaseException:
            exchange.close()  # (a timeout mid-answer leaves it unusable)
            raise
        if exchange.reusable:
            self.idle.append(exchange)
        else:
            exchange.close()
        return answer

    def close(self) -> None:
        for exchange in self.idle:
            exchange.close()
        self.idle.clear()
