"""python -m bench capacity: more idle subscribers than one process may hold, on one channel,
then one publish that must reach every one of them.

The subscribers are held by several load-generator processes (each has the same descriptor
limit as a server process; 20,000 here), using source addresses 127.0.0.1, .2, ... (one
address has ~28,000 ephemeral ports). Reported per server and transport: subscribers held,
server RSS and RSS per subscriber (over the idle server's), and the time from the publish to
the message's arrival: p50, p99 (from the generators' pooled distributions) and the last one.

Servers are those of `python -m bench` plus `tidings-w4` and `nchan-w4` (four workers each).
The server is not pinned here: its workers need every core, and the generators share them.
Every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import LoadGen, server_fields
from bench.loadgen import Job
from bench.procstat import rss_kib
from bench.servers import MANY_PROCESS_SERVERS, SERVERS, Server


def run_one(server: Server, transport: str, subscribers: int, processes: int, log: Any) -> dict[str, Any]:
    server.start()
    generators: list[LoadGen] = []
    try:
        time.sleep(1.0)  # (workers settle)
        base = rss_kib(server.pids())
        shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
        prefix = f"cap{int(time.time() * 1000) % 10**8}"
        for i in range(processes):
            job = Job(
                "fanout", server.port, transport=transport, subscribers=shares[i], messages=1, rate=0.0,
                prefix=prefix, publishers=1, max_seconds=60.0, first=sum(shares[:i]), publishes=i == processes - 1,
                **server_fields(server),
            )  # fmt: skip
            generators.append(LoadGen(job, pinned=False))
        ready = [gen.read(300) for gen in generators]
        held = sum(event["connected"] for event in ready)
        log(f"{server.name} {transport}: {held} subscribers held")
        time.sleep(2.0)  # let the server finish accepting before reading RSS
        rss = rss_kib(server.pids())
        for gen in generators:
            gen.send("go")
        results = [gen.read(120) for gen in generators]
    except RuntimeError:
        if server.log is not None:  # (what the server said helps more than the generator's traceback)
            server.log.seek(0)
            log(f"{server.name} said: {server.log.read().decode(errors='replace')[-3000:]}")
        raise
    finally:
        for gen in generators:
            gen.close()
        server.stop()
    pooled = sorted(point for result in results for point in result["cdf_ms"])
    delivered = sum(result["delivered"] for result in results)
    return {
        "server": server.name,
        "transport": transport,
        "subscribers": subscribers,
        "held": held,
        "delivered": delivered,
        "lost": sum(result["expected"] for result in results) - delivered,
        "rss_mib": rss / 1024,
        "kib_per_subscriber": (rss - base) / max(1, held),
        "p50_ms": statistics.median(pooled) if pooled else 0.0,
        "p99_ms": pooled[int(0.99 * (len(pooled) - 1))] if pooled else 0.0,
        "last_ms": max((result["max_ms"] for result in results), default=0.0),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | transport | held | delivered | lost | RSS MiB | KiB/subscriber | p50 ms | p99 ms | last ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['transport']} | {r['held']} | {r['delivered']} | {r['lost']} | {r['rss_mib']:.0f} "
            f"| {r['kib_per_subscriber']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['last_ms']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    servers = {**SERVERS, **MANY_PROCESS_SERVERS}
    parser = argparse.ArgumentParser(prog="python -m bench capacity", description=__doc__)
    parser.add_argument("--servers", default="tidings-w4,nchan-w4", help=f"comma-separated, of {', '.join(servers)}")
    parser.add_argument("--transports", default="longpoll,sse", help="comma-separated, of longpoll, sse, ws")
    parser.add_argument("--subscribers", type=int, default=60_000)
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes")
    parser.add_argument("--out", type=Path, help="folder for <date>-capacity.md/json (default: only printed)")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.subscribers // args.processes > hard - 1000:
        parser.error(f"{args.subscribers // args.processes} subscribers per generator: more than the limit {hard}")

    def log(line: str) -> None:
        print(f"[capacity] {line}", file=sys.stderr, flush=True)

    rows = []
    for name in args.servers.split(","):
        why = servers[name]().unavailable()
        if why:
            log(f"skipping {name}: {why}")
            continue
        for transport in args.transports.split(","):
            if transport not in servers[name]().transports:
                log(f"skipping {name} on {transport}: it is measured on {', '.join(servers[name]().transports)} only")
                continue
            rows.append(run_one(servers[name](), transport, args.subscribers, args.processes, log))
    text = (
        f"## Capacity {datetime.date.today()}: {args.subscribers} idle subscribers on one channel, "
        f"{args.processes} load generators, one publish\n\n{table(rows)}\n"
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{datetime.date.today()}-capacity"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0 if all(row["lost"] == 0 and row["held"] == args.subscribers for row in rows) else 1
