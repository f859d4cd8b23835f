"""GET /metrics in Prometheus text format, checked with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from conftest import ServerProcess, scrape, wait_until
from rawhttp import Connection


def test_metrics_count_connections_subscribers_publishes_and_gaps(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()
    other = channel + "-b"

    async def scenario() -> None:
        held = await Connection.open(srv.host, srv.port)
        held.send("GET", f"/sub/{channel}?timeout=30")
        stream = await Connection.open(srv.host, srv.port)
        await stream.start_stream(f"/sse/{other}")
        await asyncio.to_thread(
            wait_until, lambda: scrape(srv)[("tidings_subscribers", ())] == 2, 5, "two subscribers in the metrics"
        )
        before = scrape(srv)
        assert before[("tidings_connections", (("transport", "longpoll"),))] == 1
        assert before[("tidings_connections", (("transport", "sse"),))] == 1
        assert before[("tidings_broker_up", (("broker", "memory"),))] == 1
        httpx.post(f"{srv.url}/pub/{other}", json="x", timeout=10)
        httpx.get(f"{srv.url}/sub/{channel}", params={"last_id": "1-0", "timeout": 0}, timeout=10)  # a gap
        after = scrape(srv)
        assert after[("tidings_publishes_total", ())] == before[("tidings_publishes_total", ())] + 1
        assert after[("tidings_deliveries_total", ())] == before[("tidings_deliveries_total", ())] + 1
        assert after[("tidings_gaps_served_total", ())] == before[("tidings_gaps_served_total", ())] + 1
        assert after[("tidings_publish_seconds_count", ())] == before[("tidings_publish_seconds_count", ())] + 1
        held.close()
        stream.close()

    asyncio.run(scenario())
