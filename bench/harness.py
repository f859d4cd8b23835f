"""Runs the scenarios: for each server and transport, a fresh server pinned to CPU 0 and a
load generator pinned to CPU 1, server CPU and RSS read from /proc around the measured part.

Scenarios (the issue's letters):
  A idle      N held subscribers: server RSS and RSS per connection
  B fanout    S subscribers on one channel, M messages at a fixed rate
  C channels  many channels, one subscriber each, publishes spread over them
  D publish   publishes/s with 0 and 100 subscribers
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import Job
from bench.procstat import cpu_seconds, rss_kib
from bench.servers import SERVER_CPU, Server

LOADGEN_CPU = 1


@dataclass(frozen=True)
class Plan:
    idle_levels: list[int]
    fanout: list[tuple[int, int, float]]  # (subscribers, messages, rate)
    channels: tuple[int, int, float]  # (channels, messages, rate)
    publish: tuple[int, list[int]]  # (messages, subscriber counts)
    repeat: int


FULL = Plan(
    idle_levels=[1000, 5000, 10000, 20000, 50000],
    fanout=[(1000, 100, 5.0), (1000, 200, 20.0), (5000, 100, 10.0), (5000, 200, 20.0)],
    channels=(10000, 5000, 500.0),
    publish=(20000, [0, 100]),
    repeat=3,
)
QUICK = Plan(
    idle_levels=[1000, 5000],
    fanout=[(1000, 40, 20.0)],
    channels=(2000, 500, 500.0),
    publish=(3000, [0, 100]),
    repeat=1,
)


@dataclass
class Row:
    scenario: str
    case: str  # e.g. "longpoll S=1000 M=100 @5/s"
    server: str
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class LoadGen:
    """The load generator process, one per run (pinned to LOADGEN_CPU), or one of several
    (`pinned=False`: `python -m bench capacity`)."""

    def __init__(self, job: Job, pinned: bool = True) -> None:
        def pin() -> None:
            if pinned and len(os.sched_getaffinity(0)) > 1:
                os.sched_setaffinity(0, {LOADGEN_CPU})

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin,
        )
        self.send(json.dumps(asdict(job)))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        """The next event line; the generator bounds its own loops, this bounds the wait."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the load generator exited (code {self.proc.wait(5)})")
            if line.startswith("{"):
                event: dict[str, Any] = json.loads(line)
                return event
        raise RuntimeError("the load generator did not answer in time")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _prefix() -> str:
    return "r" + uuid.uuid4().hex[:8]


def server_fields(server: Server) -> dict[str, Any]:
    """What the load generator needs to know about a server besides its port."""
    return {"flavour": server.flavour, "publish_port": server.publish_port, "connect_batch": server.connect_batch}


def idle(server_factory: Callable[[], Server], transport: str, levels: list[int]) -> list[Row]:
    """A: hold N subscribers (distinct channels), read RSS at each level."""
    server = server_factory()
    rows = []
    with running(server):
        base = rss_kib(server.pids())
        gen = LoadGen(Job("idle", server.port, transport=transport, levels=levels, prefix=_prefix(),
                          **server_fields(server)))  # fmt: skip
        try:
            for _ in levels:
                event = gen.read(120)
                time.sleep(0.5)  # let the server finish accepting before reading RSS
                rss = rss_kib(server.pids())
                level = event["level"]
                rows.append(
                    Row(
                        "A",
                        f"{transport} N={level}",
                        server.name,
                        {
                            "held": event["connected"],
                            "rss_mib": rss / 1024,
                            "kib_per_conn": (rss - base) / max(1, event["connected"]),
                        },
                    )
                )
                gen.send("next")
            gen.read(30)
        finally:
            gen.close()
    return rows


def delivery(server_factory: Callable[[], Server], job_fields: dict[str, Any]) -> tuple[dict[str, float], list[float]]:
    """B, C and D: subscribers in place, then publish; server CPU over the publishing part."""
    server = server_factory()
    with running(server):
        job = Job(port=server.port, prefix=_prefix(), **server_fields(server), **job_fields)
        gen = LoadGen(job)
        try:
            ready = gen.read(180)
            pids = server.pids()
            cpu0 = cpu_seconds(pids)
            gen.send("go")
            result = gen.read(job.max_seconds + 60)
            cpu_ms = (cpu_seconds(pids) - cpu0) * 1000
            rss = rss_kib(pids)
        finally:
            gen.close()
    delivered = result["delivered"]
    sent = result["sent"]
    metrics = {
        "connected": ready["connected"],
        "sent": sent,
        "publish_errors": result["publish_errors"],
        "delivered": delivered,
        "lost": result["expected"] - delivered,
        "duplicates": result["duplicates"],
        "delivered_per_s": delivered / result["seconds"] if result["seconds"] else 0.0,
        "publishes_per_s": sent / result["seconds"] if result["seconds"] else 0.0,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "server_cpu_ms": cpu_ms,
        "cpu_ms_per_1k": cpu_ms / delivered * 1000 if delivered else 0.0,
        "cpu_ms_per_1k_responses": cpu_ms / result["responses"] * 1000 if result["responses"] else 0.0,
        "cpu_ms_per_1k_publishes": cpu_ms / sent * 1000 if sent else 0.0,
        "rss_mib": rss / 1024,
        "loadgen_cpu_pct": 100 * result["loadgen_cpu_s"] / result["seconds"] if result["seconds"] else 0.0,
    }
    return metrics, result["cdf_ms"]


def median_row(scenario: str, case: str, server: str, samples: list[dict[str, float]]) -> Row:
    keys = samples[0].keys()
    merged = {k: statistics.median(s[k] for s in samples) for k in keys}
    # Loss and duplicates are never smoothed away: report the worst repetition.
    for worst in ("lost", "duplicates", "publish_errors"):
        if worst in merged:
            merged[worst] = max(s[worst] for s in samples)
    return Row(scenario, case, server, merged, samples)


TRANSPORTS = ("longpoll", "sse", "ws")


def run(
    plan: Plan,
    factories: dict[str, Callable[[], Server]],
    scenarios: set[str],
    log: Callable[[str], None],
    transports: tuple[str, ...] = TRANSPORTS,
) -> list[Row]:
    rows: list[Row] = []
    said: set[tuple[str, str]] = set()

    def supports(name: str, factory: Callable[[], Server], transport: str) -> bool:
        supported = factory().transports
        if transport in supported:
            return True
        if (name, transport) not in said:  # once per server and transport, not per case
            said.add((name, transport))
            log(f"skipping {name} on {transport}: it is measured on {', '.join(supported)} only")
        return False

    def each(scenario: str, case: str, job_fields: dict[str, Any]) -> None:
        for name, factory in factories.items():
            # Publishing to nobody (D with 0 subscribers) needs no transport.
            if job_fields.get("subscribers") and not supports(name, factory, job_fields.get("transport", "longpoll")):
                continue
            samples, cdfs = [], []
            for rep in range(plan.repeat):
                log(f"{scenario} {case} {name} #{rep + 1}")
                metrics, cdf = delivery(factory, job_fields)
                samples.append(metrics)
                cdfs.append(cdf)
            row = median_row(scenario, case, name, samples)
            row.extra["cdf_ms"] = cdfs[len(cdfs) // 2]
            rows.append(row)

    if "A" in scenarios:
        for transport in transports:
            for name, factory in factories.items():
                if not supports(name, factory, transport):
                    continue
                log(f"A {transport} {name}")
                per_rep = [idle(factory, transport, plan.idle_levels) for _ in range(plan.repeat)]
                for i, first in enumerate(per_rep[0]):
                    rows.append(median_row("A", first.case, name, [rep[i].metrics for rep in per_rep]))
    if "B" in scenarios:
        for transport in transports:
            for subs, msgs, rate in plan.fanout:
                each("B", f"{transport} S={subs} M={msgs} @{rate:g}/s", dict(
                    mode="fanout", transport=transport, subscribers=subs, messages=msgs, rate=rate,
                    max_seconds=msgs / rate + 30,
                ))  # fmt: skip
    if "C" in scenarios:
        channels, msgs, rate = plan.channels
        for transport in transports:
            each("C", f"{transport} {channels} channels M={msgs} @{rate:g}/s", dict(
                mode="channels", transport=transport, subscribers=channels, channels=channels, messages=msgs,
                rate=rate, max_seconds=msgs / rate + 30,
            ))  # fmt: skip
    if "D" in scenarios:
        msgs, sub_counts = plan.publish
        for subs in sub_counts:
            each("D", f"{msgs} publishes, {subs} long-poll subscribers", dict(
                mode="publish", transport="longpoll", subscribers=subs, messages=msgs, rate=0.0, max_seconds=60.0,
            ))  # fmt: skip
    return rows


__all__ = ["FULL", "QUICK", "SERVER_CPU", "TRANSPORTS", "Plan", "Row", "run"]
