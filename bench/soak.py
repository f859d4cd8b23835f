"""python -m bench soak: many subscribers with churn and steady publishing for minutes, on one
server after another; server RSS and open descriptors sampled over time, every message checked.

Subscribers are spread over channels and over long-poll, SSE and WebSocket. Each second a share
of them leaves (closes its socket without a goodbye, as a closed tab does) and rejoins a moment
later from the last id it saw. Message `n` on a channel carries the number `n`, so a subscriber
knows exactly what it should have seen: loss, duplicates and gap notices are counted, not guessed.
After publishing stops every subscriber must catch up to its channel's last message; then all
leave and the server's descriptors must return to where they were before anyone came.

Runs on the load generator's core (the server gets the other); every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import httptools
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from bench import report
from bench.harness import LOADGEN_CPU
from bench.loadgen import HOST, CollectsResponse, Job, Publisher, flush_websocket, longpoll_request, open_publisher
from bench.procstat import rss_kib
from bench.servers import SERVERS, Server

SOURCES = 4  # 127.0.0.1..4: churn leaves client ports in TIME_WAIT; four addresses give room
TRANSPORTS = ("longpoll", "sse", "ws")


@dataclass
class Plan:
    subscribers: int = 10_000
    channels: int = 100
    minutes: float = 10.0
    rate: float = 50.0  # publishes per second, round-robin over the channels
    churn: float = 0.01  # share of subscribers that leave (and rejoin) each second
    buffer: int = 50  # messages kept per channel: full after 100 s at the default rate
    warmup: float = 120.0  # seconds before RSS counts as settled (buffers full, pools grown)
    sample: float = 5.0  # seconds between samples


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    connected: int
    received: int


@dataclass
class Tally:
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    gaps: int = 0
    bad_status: int = 0
    left: int = 0  # churn departures
    dropped: int = 0  # connections the server or the network ended unasked
    failed: int = 0  # connection attempts that failed after retries
    connected: int = 0
    published: int = 0
    publish_errors: int = 0


@dataclass
class Outcome:
    server: str
    plan: Plan
    samples: list[Sample] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    rss_start_mib: float = 0.0
    fds_start: int = 0
    fds_after_leave: int = 0
    missing_at_end: int = 0
    seconds: float = 0.0


class Follower:
    """One subscriber across its reconnections: its channel, transport and position."""

    __slots__ = ("channel", "client", "cursor", "etag", "index", "next_seq", "transport")

    def __init__(self, index: int, channel: str, transport: str, cursor: str) -> None:
        self.index = index
        self.channel = channel
        self.transport = transport
        self.cursor = cursor  # Tidings' last_id / Nchan's event id ("" = from the oldest)
        self.etag = ""  # Nchan long-poll: Last-Modified and Etag resume a poll together
        self.next_seq = 0
        self.client: SoakClient | None = None

    def take(self, tally: Tally, seq: int) -> None:
        if seq < self.next_seq:
            tally.duplicates += 1
            return
        tally.lost += seq - self.next_seq
        tally.received += 1
        self.next_seq = seq + 1


class Soak:
    def __init__(self, server: Server, plan: Plan) -> None:
        self.server = server
        self.plan = plan
        self.flavour = server.flavour
        self.tally = Tally()
        self.running = True
        self.channels = [f"soak-{i}" for i in range(plan.channels)]
        starts = {name: self.starting_cursor(name) for name in self.channels}
        self.followers = [
            Follower(i, name, TRANSPORTS[(i // plan.channels) % 3], starts[name])
            for i, name in ((i, self.channels[i % plan.channels]) for i in range(plan.subscribers))
        ]
        self.sent = dict.fromkeys(self.channels, 0)  # messages accepted per channel
        self.tasks: set[asyncio.Task[None]] = set()
        self.away = 0  # subscribers waiting to rejoin

    def starting_cursor(self, channel: str) -> str:
        """Where a subscriber starts so that it sees message 0: Nchan starts a subscriber without
        one at its oldest message; Tidings names the position of a channel with nothing in it."""
        if self.flavour == "nchan":
            return ""
        conn = http.client.HTTPConnection(HOST, self.server.port, timeout=10)
        try:
            conn.request("GET", f"/channels/{channel}")
            return str(json.loads(conn.getresponse().read())["last_id"])
        finally:
            conn.close()

    def spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self, follower: Follower) -> None:
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        kind = {"longpoll": LongPollClient, "sse": SSEClient, "ws": WebSocketClient}[follower.transport]
        source = f"127.0.0.{1 + follower.index % SOURCES}"
        for attempt in range(8):
            try:
                await loop.create_connection(
                    lambda: kind(self, follower), HOST, self.server.port, local_addr=(source, 0)
                )
                return
            except OSError:
                await asyncio.sleep(0.1 * (attempt + 1))
        self.tally.failed += 1

    def rejoin_later(self, follower: Follower, delay: float) -> None:
        self.away += 1

        def rejoin() -> None:
            self.away -= 1
            self.spawn(self.join(follower))

        asyncio.get_running_loop().call_later(delay, rejoin)

    async def churn(self, deadline: float) -> None:
        count = max(1, round(self.plan.subscribers * self.plan.churn))
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            present = [f for f in random.sample(self.followers, min(len(self.followers), 3 * count)) if f.client]
            for follower in present[:count]:
                assert follower.client is not None
                follower.client.leave()
                self.tally.left += 1
                self.rejoin_later(follower, random.uniform(0.2, 2.0))

    async def publish(self, deadline: float) -> None:
        free: asyncio.Queue[Publisher] = asyncio.Queue()
        answers: list[int] = []
        # One keep-alive connection, one publish at a time: the next number depends on this answer.
        await open_publisher(Job("publish", self.server.port, self.server.flavour), free, answers)
        started = time.monotonic()
        n = 0
        conn = await asyncio.wait_for(free.get(), 10)
        free.put_nowait(conn)
        while time.monotonic() < deadline:
            delay = started + n / self.plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await asyncio.wait_for(free.get(), 10)
            channel = self.channels[n % len(self.channels)]
            before = len(answers)
            conn.send(channel, b"%d" % self.sent[channel])
            await asyncio.wait_for(free.get(), 10)  # the same connection, answered
            if answers[before] < 300:
                self.sent[channel] += 1
                self.tally.published += 1
            else:
                self.tally.publish_errors += 1
            free.put_nowait(conn)
            n += 1
        if conn.transport is not None:
            conn.transport.close()

    def missing(self) -> int:
        return sum(self.sent[f.channel] - f.next_seq for f in self.followers)


class SoakClient(asyncio.Protocol):
    def __init__(self, soak: Soak, follower: Follower) -> None:
        self.soak = soak
        self.follower = follower
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.leaving = False
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.soak.running:  # a rejoin that landed after everyone left
            self.leaving = True
            self.transport.abort()
            return
        self.follower.client = self
        self.start()

    def start(self) -> None:
        raise NotImplementedError

    def count_in(self) -> None:
        if not self.counted:
            self.counted = True
            self.soak.tally.connected += 1

    def leave(self) -> None:
        self.leaving = True
        if self.transport is not None:
            self.transport.abort()  # as a vanished browser: no goodbye, no lingering

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.soak.tally.bad_status += 1
            self.leave()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.soak.tally.connected -= 1
        if self.follower.client is self:
            self.follower.client = None
        if not self.leaving and self.soak.running:
            self.soak.tally.dropped += 1
            self.soak.rejoin_later(self.follower, 0.1)


class LongPollClient(CollectsResponse, SoakClient):
    def start(self) -> None:
        self.count_in()  # a poll may be held at once: connected is as good as it gets
        self.on_message_begin()
        self.poll()

    def poll(self) -> None:
        assert self.transport is not None
        f = self.follower
        self.transport.write(longpoll_request(self.soak.flavour, f.channel, f.cursor, f.etag.encode(), 30))

    def on_message_complete(self) -> None:
        tally, f = self.soak.tally, self.follower
        status = self.parser.get_status_code()
        if status == 200:
            body = b"".join(self.body)
            if self.soak.flavour == "nchan":
                f.cursor = self.headers.get(b"last-modified", b"").decode()
                f.etag = self.headers.get(b"etag", b"").decode()
                for line in body.split(b"\n"):
                    if line:
                        f.take(tally, int(line))
            else:
                answer = json.loads(body)
                f.cursor = answer["last_id"]
                tally.gaps += answer["gap"]
                for message in answer["messages"]:
                    f.take(tally, int(message["data"]))
        elif status not in (304, 408):  # a poll that timed out
            tally.bad_status += 1
        if not self.leaving:
            self.poll()


class SSEClient(SoakClient):
    def start(self) -> None:
        assert self.transport is not None
        self.pending = b""
        f = self.follower
        resume = b"Last-Event-ID: %s\r\n" % f.cursor.encode() if f.cursor else b""
        self.transport.write(
            b"GET /sse/%s HTTP/1.1\r\nHost: s\r\nAccept: text/event-stream\r\n%s\r\n" % (f.channel.encode(), resume)
        )

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() == 200:
            self.count_in()
        else:
            self.soak.tally.bad_status += 1

    def on_body(self, body: bytes) -> None:
        events = (self.pending + body).split(b"\n\n")
        self.pending = events.pop()
        tally, f = self.soak.tally, self.follower
        for event in events:
            fields: dict[bytes, bytes] = {}
            for line in event.split(b"\n"):
                name, _, value = line.partition(b": ")
                if name and not line.startswith(b":"):
                    fields[name] = value
            if b"data" not in fields:
                continue
            if fields.get(b"event") == b"gap":
                tally.gaps += 1
            elif b"event" not in fields:
                data = fields[b"data"]
                f.take(tally, int(data if self.soak.flavour == "nchan" else json.loads(data)["data"]))
                f.cursor = fields.get(b"id", b"").decode() or f.cursor


class WebSocketClient(SoakClient):
    """Tidings only: Nchan's WebSocket frames carry no message id to resume from."""

    def start(self) -> None:
        f = self.follower
        uri = parse_uri(f"ws://{HOST}:{self.soak.server.port}/ws/{f.channel}?last_id={f.cursor}")
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        flush_websocket(self.protocol, self.transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        tally, f = self.soak.tally, self.follower
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    frame = json.loads(bytes(event.data))
                    if frame["type"] == "message":
                        f.take(tally, int(frame["message"]["data"]))
                        f.cursor = frame["last_id"]
                    elif frame["type"] == "gap":
                        tally.gaps += 1
            elif getattr(event, "status_code", 0) == 101:
                self.count_in()
            else:
                tally.bad_status += 1
        flush_websocket(self.protocol, self.transport)  # pongs


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


async def run_one(server: Server, plan: Plan, log: Callable[[str], None]) -> Outcome:
    outcome = Outcome(server.name, plan)
    pids = server.pids()
    outcome.rss_start_mib = rss_kib(pids) / 1024
    outcome.fds_start = open_fds(pids)
    soak = Soak(server, plan)
    if server.flavour == "nchan":  # see WebSocketClient
        for follower in soak.followers:
            follower.transport = follower.transport.replace("ws", "longpoll")
    t0 = time.monotonic()

    def sample() -> None:
        pids[:] = server.pids()
        outcome.samples.append(
            Sample(
                time.monotonic() - t0, rss_kib(pids) / 1024, open_fds(pids), soak.tally.connected, soak.tally.received
            )
        )

    async def sampler() -> None:
        while soak.running:
            sample()
            await asyncio.sleep(plan.sample)

    sampling = asyncio.get_running_loop().create_task(sampler())
    gate = asyncio.Semaphore(256)

    async def join(follower: Follower) -> None:
        async with gate:
            await soak.join(follower)

    await asyncio.gather(*(join(f) for f in soak.followers))
    settle = time.monotonic() + 30  # handshakes still in flight
    while soak.tally.connected + soak.tally.failed < plan.subscribers and time.monotonic() < settle:
        await asyncio.sleep(0.05)
    log(f"{server.name}: {soak.tally.connected} of {plan.subscribers} joined in {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + plan.minutes * 60
    churning = asyncio.get_running_loop().create_task(soak.churn(deadline))
    last_log = time.monotonic()
    publishing = asyncio.get_running_loop().create_task(soak.publish(deadline))
    while not publishing.done():
        await asyncio.sleep(1)
        if time.monotonic() - last_log >= 60:
            last_log = time.monotonic()
            s = outcome.samples[-1]
            log(f"{server.name} t={s.t:.0f}s RSS {s.rss_mib:.1f} MiB fds {s.fds} connected {s.connected} "
                f"received {s.received} lost {soak.tally.lost}")  # fmt: skip
    await publishing
    await churning
    # Everyone catches up (rejoins still pending land within two seconds).
    catch_up = time.monotonic() + 60
    while (soak.missing() or soak.away or soak.tasks) and time.monotonic() < catch_up:
        await asyncio.sleep(0.2)
    outcome.missing_at_end = soak.missing()
    soak.running = False
    for follower in soak.followers:
        if follower.client is not None:
            follower.client.leave()
    settle = time.monotonic() + 30
    while time.monotonic() < settle:
        await asyncio.sleep(0.2)
        sample()
        if outcome.samples[-1].fds <= outcome.fds_start:
            break
    outcome.fds_after_leave = outcome.samples[-1].fds
    sampling.cancel()
    outcome.seconds = time.monotonic() - t0
    outcome.tally = soak.tally
    return outcome


def summary(o: Outcome) -> dict[str, float]:
    settled = [s for s in o.samples if s.t >= o.plan.warmup and s.connected > 0]
    rss = [s.rss_mib for s in settled] or [0.0]
    t = o.tally
    return {
        "rss_start_mib": o.rss_start_mib,
        "rss_settled_min_mib": min(rss),
        "rss_settled_max_mib": max(rss),
        "rss_spread_pct": 100 * (max(rss) - min(rss)) / min(rss) if min(rss) else 0.0,
        "rss_drift_pct": 100 * (rss[-1] - rss[0]) / rss[0] if rss[0] else 0.0,
        "fds_start": o.fds_start,
        "fds_peak": max(s.fds for s in o.samples),
        "fds_after_leave": o.fds_after_leave,
        "published": t.published,
        "received": t.received,
        "lost": t.lost + o.missing_at_end,
        "duplicates": t.duplicates,
        "gaps": t.gaps,
        "departures": t.left,
        "dropped": t.dropped,
        "failed": t.failed,
        "bad_status": t.bad_status,
        "publish_errors": t.publish_errors,
    }


ROWS = [
    ("rss_start_mib", "RSS before clients, MiB", "{:.1f}"),
    ("rss_settled_min_mib", "RSS after warm-up, min MiB", "{:.1f}"),
    ("rss_settled_max_mib", "RSS after warm-up, max MiB", "{:.1f}"),
    ("rss_spread_pct", "RSS spread after warm-up, %", "{:.1f}"),
    ("rss_drift_pct", "RSS first → last settled sample, %", "{:+.1f}"),
    ("fds_start", "open fds before clients", "{:.0f}"),
    ("fds_peak", "open fds, peak", "{:.0f}"),
    ("fds_after_leave", "open fds after all left", "{:.0f}"),
    ("published", "messages published", "{:.0f}"),
    ("received", "deliveries", "{:.0f}"),
    ("lost", "lost (incl. never caught up)", "{:.0f}"),
    ("duplicates", "duplicates", "{:.0f}"),
    ("gaps", "gap notices", "{:.0f}"),
    ("departures", "churn departures (= rejoins)", "{:.0f}"),
    ("dropped", "connections dropped unasked", "{:.0f}"),
    ("failed", "failed connection attempts", "{:.0f}"),
    ("bad_status", "error answers", "{:.0f}"),
    ("publish_errors", "publish errors", "{:.0f}"),
]


def table(outcomes: list[Outcome]) -> str:
    sums = {o.server: summary(o) for o in outcomes}
    names = list(sums)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, heading, fmt in ROWS:
        lines.append(f"| {heading} | " + " | ".join(fmt.format(sums[n][key]) for n in names) + " |")
    return "\n".join(lines)


def timeline(outcomes: list[Outcome]) -> str:
    """RSS and descriptors once a minute, side by side."""
    lines = ["| minute | " + " | ".join(f"{o.server} RSS MiB | fds" for o in outcomes) + " |",
             "|---:|" + "---:|---:|" * len(outcomes)]  # fmt: skip
    minutes = int(max(o.plan.minutes for o in outcomes)) + 1
    for minute in range(minutes + 1):
        cells = []
        for o in outcomes:
            near = min(o.samples, key=lambda s: abs(s.t - 60 * minute))
            cells.append(f"{near.rss_mib:.1f} | {near.fds}")
        lines.append(f"| {minute} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (rss_ax, fd_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for o in outcomes:
        times = [s.t / 60 for s in o.samples]
        rss_ax.plot(times, [s.rss_mib for s in o.samples], label=o.server)
        fd_ax.plot(times, [s.fds for s in o.samples], label=o.server)
    for ax in (rss_ax, fd_ax):
        ax.axvline(outcomes[0].plan.warmup / 60, color="grey", linestyle=":", linewidth=1)
        ax.legend()
    plan = outcomes[0].plan
    title = f"{plan.subscribers} subscribers, {plan.churn:.0%}/s churn, {plan.rate:.0f} publishes/s"
    rss_ax.set(xlabel="minutes", ylabel="server RSS (MiB)", title=f"Soak: {title}")
    fd_ax.set(xlabel="minutes", ylabel="server open file descriptors", title="Open descriptors (all leave at the end)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    defaults = Plan()
    parser.add_argument("--servers", default="tidings,nchan", help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="publishes per second")
    parser.add_argument("--churn", type=float, default=defaults.churn, help="share leaving and rejoining per second")
    parser.add_argument("--buffer", type=int, default=defaults.buffer, help="messages buffered per channel")
    parser.add_argument("--out", type=Path, help="folder for <date>-soak.md and .png (default bench/results)")
    args = parser.parse_args(argv)
    plan = Plan(args.subscribers, args.channels, args.minutes, args.rate, args.churn, args.buffer,
                warmup=min(defaults.warmup, args.minutes * 60 / 5))  # fmt: skip
    out = args.out or Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {LOADGEN_CPU})

    def log(line: str) -> None:
        print(f"[soak] {line}", file=sys.stderr, flush=True)

    outcomes: list[Outcome] = []
    for name in args.servers.split(","):
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
        server = SERVERS[name]()
        server.buffer = plan.buffer
        why = server.unavailable()
        if server.flavour not in ("tidings", "nchan"):
            why = "its subscribers cannot resume from a message id, which the soak's churn needs"
        if why:
            log(f"skipping {name}: {why}")
            continue
        server.start()
        try:
            outcomes.append(_run(run_one(server, plan, log)))
        finally:
            server.stop()
        log(f"{name}: {json.dumps(summary(outcomes[-1]))}")
    if not outcomes:
        return 1
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    mix = "long-poll, SSE and WebSocket in thirds (Nchan: long-poll and SSE; its WebSocket frames carry no id)"
    text = "\n".join([
        f"## Soak {stamp}: {plan.subscribers} subscribers on {plan.channels} channels, {plan.minutes:g} min",
        "",
        f"{mix}; {plan.churn:.0%} of subscribers leave each second and rejoin 0.2-2 s later from their last id; "
        f"{plan.rate:g} publishes/s; {plan.buffer} messages buffered per channel. "
        f"Settled = after {plan.warmup:.0f} s of warm-up.",
        "",
        report.environment(),
        "",
        table(outcomes),
        "",
        timeline(outcomes),
    ])  # fmt: skip
    print(text)
    (out / f"{stamp}-soak.md").write_text(text + "\n")
    (out / f"{stamp}-soak.json").write_text(json.dumps([asdict(o) for o in outcomes]) + "\n")
    if plot(outcomes, out / f"{stamp}-soak.png"):
        log(f"wrote {out / (stamp + '-soak.md')} and the plot")
    failed = [o.server for o in outcomes if summary(o)["lost"] or summary(o)["duplicates"]]
    if failed:
        log(f"LOSS or DUPLICATES on {', '.join(failed)}")
    return 1 if failed else 0


def _run(coro: Coroutine[None, None, Outcome]) -> Outcome:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    outcome: Outcome = uvloop.run(coro)
    return outcome
