"""The GRIP backend behind Pushpin in the benchmark: `python -m bench.grip_backend PORT`.

Pushpin asks it about every new subscriber (`GET /sse/<channel>`), and it answers with GRIP
instructions: hold the stream open, subscribed to `<channel>`, as `text/event-stream`. It
never sees a message (publishes go to Pushpin's publish port). `GET /healthz` says what it is.
Raw asyncio + httptools, on 127.0.0.1 only, so that it costs as little as an application's
backend could.
"""

from __future__ import annotations

import asyncio
import sys

import httptools

HOLD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\n"
    b"Grip-Channel: %s\r\nContent-Length: 0\r\n\r\n"
)
HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\ngrip-backend\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class Backend(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.partition(b"?")[0]
        self.url = b""
        channel = path[len(b"/sse/") :] if path.startswith(b"/sse/") else b""
        if channel:  # (names are the generator's own, [a-z0-9-]: nothing to escape in a header)
            self.transport.write(HOLD % channel)
        else:
            self.transport.write(HEALTH if path == b"/healthz" else NOT_FOUND)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, "127.0.0.1", port, backlog=8192)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
