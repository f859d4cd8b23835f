"""In-process cost of the Python request path, without sockets or a load generator:
`python -m bench.micro`. Connections get a stub transport and are fed raw request bytes,
so the figures are the server's own Python work per request (syscalls excluded) and are
stable enough to compare one change against another."""

from __future__ import annotations

import asyncio
import time

from tidings.brokers.memory import MemoryBroker
from tidings.config import Settings
from tidings.hub import Hub, wall_clock_ms
from tidings.web.app import App
from tidings.web.http import HttpConnection


class StubTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None


async def measure(subscribers: int = 1000, rounds: int = 100, publishes: int = 20000) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    hub = Hub(buffer_size=1000, buffer_ttl=3600, now_ms=wall_clock_ms())
    app = App(Settings(), MemoryBroker(hub), loop)
    conns = []
    for _ in range(subscribers):
        conn = HttpConnection(app, app.limits, app.timeouts)
        conn.connection_made(StubTransport())  # type: ignore[arg-type]
        conns.append(conn)
    cursor = str(hub.publish("ch", "warm-up", wall_clock_ms()).id)
    poll_s = wake_s = 0.0
    for _ in range(rounds):
        request = b"GET /sub/ch?timeout=100&last_id=%s HTTP/1.1\r\nHost: b\r\n\r\n" % cursor.encode()
        t0 = time.perf_counter()
        for conn in conns:
            conn.data_received(request)
        t1 = time.perf_counter()
        published = hub.publish("ch", "1 2", wall_clock_ms())
        await asyncio.sleep(0)  # the end of the loop turn, where woken long-polls write
        poll_s += t1 - t0
        wake_s += time.perf_counter() - t1
        cursor = str(published.id)
    per = rounds * subscribers
    publish = b"POST /pub/other HTTP/1.1\r\nHost: b\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n1 2"
    t0 = time.perf_counter()
    for _ in range(publishes):
        conns[0].data_received(publish)
    return {
        "long-poll request, held": poll_s / per * 1e6,
        "wake and answer": wake_s / per * 1e6,
        "publish, no subscribers": (time.perf_counter() - t0) / publishes * 1e6,
    }


async def trials(count: int = 7) -> None:
    # This machine shares its cores: the fastest of several trials is the least disturbed one.
    results = [await measure() for _ in range(count)]
    print(f"{'us per operation':26s} {'min':>7s} {'median':>7s}")
    for key in results[0]:
        values = sorted(r[key] for r in results)
        print(f"{key:26s} {values[0]:7.2f} {values[len(values) // 2]:7.2f}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(trials())
    except ImportError:
        asyncio.run(trials())
