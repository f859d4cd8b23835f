"""GET /metrics: Prometheus text format (prometheus-client). Figures are read from the hub, the
relay, the broker and the open connections when scraped, so the delivery path pays nothing per
subscriber; only the publish latency histogram is fed per publish (by the relay)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from tidings.hub import Hub
from tidings.latency import LatencyHistogram
from tidings.relay import Relay
from tidings.web.http import HttpConnection

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Stats:
    """Counters the transports bump where an event happens (a few per request, none per delivery)."""

    def __init__(self) -> None:
        self.gaps_served = 0
        self.slow_disconnects = 0
        self.auth_failures = 0


class TidingsCollector(Collector):
    def __init__(self, hub: Hub, relay: Relay, stats: Stats, connections: Collection[HttpConnection]) -> None:
        self.hub = hub
        self.relay = relay
        self.stats = stats
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        hub, stats, broker = self.hub, self.stats, self.relay.broker
        by_transport: Counter[str] = Counter(_transport(conn) for conn in self.connections)
        connections = GaugeMetricFamily("tidings_connections", "Open connections by what they do", labels=["transport"])
        for transport in ("idle", "longpoll", "sse", "stream", "ws", "request"):
            connections.add_metric([transport], by_transport.get(transport, 0))
        yield connections
        yield GaugeMetricFamily("tidings_channels", "Channels held in this process", value=len(hub.channels))
        yield GaugeMetricFamily(
            "tidings_channels_limit", "Channels this process may hold (--max-channels; 0: none)", value=hub.max_channels
        )
        yield GaugeMetricFamily(
            "tidings_buffered_bytes",
            "Bytes held by the messages buffered in this process (JSON, framings, bookkeeping)",
            value=hub.buffered_bytes,
        )
        yield GaugeMetricFamily(
            "tidings_buffered_bytes_limit",
            "Bytes buffered messages may hold in this process (--max-buffered-bytes; 0: none)",
            value=hub.max_buffered_bytes,
        )
        yield GaugeMetricFamily(
            "tidings_subscribers",
            "Subscribers in this process",
            value=sum(ch.subscribers for ch in hub.channels.values()),
        )
        yield CounterMetricFamily(
            "tidings_publishes", "Publishes accepted by this process", value=self.relay.stats.accepted
        )
        yield CounterMetricFamily(
            "tidings_publish_errors",
            "Publishes refused: broker unreachable (503) or a memory cap reached (507)",
            value=self.relay.stats.refused,
        )
        yield CounterMetricFamily("tidings_messages", "Messages taken in from the bus", value=hub.messages_ingested)
        yield CounterMetricFamily("tidings_deliveries", "Messages handed to subscribers", value=hub.deliveries)
        yield CounterMetricFamily("tidings_gaps_served", "Answers and streams told of a gap", value=stats.gaps_served)
        yield CounterMetricFamily(
            "tidings_slow_disconnects",
            "Streams ended because the client read too slowly",
            value=stats.slow_disconnects,
        )
        yield CounterMetricFamily(
            "tidings_auth_failures",
            "Requests refused by their token or the application's --auth-url (401, 403)",
            value=stats.auth_failures,
        )
        up = GaugeMetricFamily("tidings_broker_up", "Whether the broker is reachable", labels=["broker"])
        up.add_metric([broker.name], 1 if broker.healthy else 0)
        yield up


class HistogramCollector(Collector):
    """A `LatencyHistogram`, as Prometheus reads it."""

    def __init__(self, histogram: LatencyHistogram) -> None:
        self.histogram = histogram

    def collect(self) -> Iterator[Metric]:
        histogram = self.histogram
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(histogram.name, histogram.description, buckets=buckets, sum_value=histogram.total)


def _transport(conn: HttpConnection) -> str:
    held = conn.held
    if held is None:
        return "request" if conn.request is not None else "idle"
    return held.transport


class Metrics:
    def __init__(
        self,
        hub: Hub,
        relay: Relay,
        stats: Stats,
        connections: Collection[HttpConnection],
        auth_url_seconds: LatencyHistogram | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TidingsCollector(hub, relay, stats, connections))
        self.registry.register(HistogramCollector(relay.stats.seconds))
        if auth_url_seconds is not None:
            self.registry.register(HistogramCollector(auth_url_seconds))

    def exposition(self) -> bytes:
        """This process's metrics, in the text format."""
        return generate_latest(self.registry)

    def serve(self, conn: HttpConnection, worker: int | None = None, others: Iterable[dict[str, Any]] = ()) -> None:
        """This process's metrics; for a worker of `--workers N`, every worker's, each series
        labelled with its `worker` number (this one's live, the others' from their snapshots,
        `web/siblings.py`)."""
        if worker is None:
            conn.respond(200, self.exposition(), CONTENT_TYPE)
            return
        families: dict[str, Metric] = {}
        _add_labelled(families, self.registry.collect(), worker)
        for snapshot in others:
            _add_labelled(families, text_string_to_metric_families(snapshot["metrics"]), snapshot["worker"])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(list(families.values())))
        conn.respond(200, generate_latest(registry), CONTENT_TYPE)


def _add_labelled(families: dict[str, Metric], found: Iterable[Metric], worker: int) -> None:
    for family in found:
        if family.name.endswith("_created"):
            continue  # (ours have none; a prometheus-client histogram's, read back from text, is a family of its own)
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        merged.samples.extend(
            Sample(s.name, {**s.labels, "worker": str(worker)}, s.value, s.timestamp, s.exemplar)
            for s in family.samples
        )


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
