"""GET /metrics in Prometheus text format, checked with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
from conftest import ServerProcess, scrape, wait_until
from rawhttp import Connection
from websockets.asyncio.client import connect


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


def test_websocket_publishes_count_like_http_ones(start_server: Callable[..., ServerProcess], channel: str) -> None:
    # One channel may be held: the first publish creates it, a publish to a second is refused.
    srv = start_server("--max-channels", "1")

    async def scenario() -> None:
        before = scrape(srv)
        async with connect(f"ws://{srv.host}:{srv.port}/ws") as ws:
            await ws.send(json.dumps({"publish": {"channel": channel, "data": "accepted"}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "published"
            await ws.send(json.dumps({"publish": {"channel": channel + "-b", "data": "refused"}}))
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert refused["type"] == "error" and refused["error"] == "too_many_channels", refused
        after = scrape(srv)
        for name in ("tidings_publishes_total", "tidings_publish_errors_total", "tidings_publish_seconds_count"):
            assert after[(name, ())] == before[(name, ())] + 1, name

    asyncio.run(scenario())
