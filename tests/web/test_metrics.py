"""GET /metrics in Prometheus text format, checked with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from conftest import ServerProcess, scrape, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import Connection
from websockets.asyncio.client import connect

from tidings.latency import LatencyHistogram
from tidings.web.metrics import HistogramCollector


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


def test_latency_histogram_reads_as_prometheus_buckets() -> None:
    """A value on a bound counts in that bound's bucket (Prometheus' `le`); past the last, in +Inf."""
    histogram = LatencyHistogram("t_seconds", "test", (0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.5):
        histogram.observe(seconds)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HistogramCollector(histogram))
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("t_seconds_bucket", "0.001")] == 2
    assert values[("t_seconds_bucket", "0.01")] == 3
    assert values[("t_seconds_bucket", "+Inf")] == 4 and values[("t_seconds_count", None)] == 4
    assert values[("t_seconds_sum", None)] == pytest.approx(0.5035)
