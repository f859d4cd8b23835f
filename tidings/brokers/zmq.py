"""ZeroMQ: fan-out between Tidings processes through a forwarder, with no Redis.

Topology: `tidings zmq-proxy` binds an XSUB (the frontend, where publishers connect) and an
XPUB (the backend, where subscribers connect) and forwards with `zmq.proxy`. Every process
connects one PUB socket to the frontend and one SUB socket to the backend, and subscribes
only to the channels it has subscribers for (ZeroMQ filters on the publishing side, so a
process receives no traffic for other channels).

On the bus a message is two or three frames: the channel name; the payload; and, optionally,
`<publisher> <seq>` — a publisher's name and its sequence number on that channel, 1, 2, 3 …
With the third frame the payload is JSON and a receiver that sees a sequence number skip
knows messages were dropped (ZeroMQ drops at high-water marks and while a peer is away): the
next message is marked `after_loss` and subscribers get a gap. Without it (a plain external
publisher) the payload is text, or JSON when it is an object or array, and drops go unseen.

Ids: there is no shared history, so each process numbers the messages it receives itself
(`<ms>-<seq>`, increasing per channel). A cursor is therefore meaningful to the process that
issued it; on another process it is treated as a time, and reported as a gap when older than
what that process holds. Use sticky sessions (or the Redis broker) for exact resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any

import zmq
import zmq.asyncio

from tidings.brokers.base import cancel_all, foreign_data
from tidings.brokers.memory import MemoryBroker
from tidings.errors import InvalidChannel
from tidings.hub import Hub, JSONValue, Message, MessageId, encode_json, validate_channel, wall_clock_ms

log = logging.getLogger("tidings.zmq")

PROBE = b"probe"  # a process's own message that tells it its subscription works end to end
PROBE_INTERVAL = 0.05  # seconds between probes while a subscription starts
ACTIVATION_TIMEOUT = 1.0  # after this a subscription counts as started even without its probe back
IDLE_CHECK = 30.0  # seconds between looks for channels nobody here subscribes to any more
HIGH_WATER_MARK = 100_000  # messages queued per peer before ZeroMQ drops


def parse_url(url: str) -> tuple[str, str]:
    """``zmq://HOST:PORT1,PORT2`` (TCP: publish into PORT1, receive from PORT2) or
    ``zmq:ENDPOINT1,ENDPOINT2`` with full ZeroMQ endpoints (``ipc:///tmp/front,ipc:///tmp/back``)."""
    if url.startswith("zmq://"):
        host, _, ports = url[len("zmq://") :].rpartition(":")
        front, sep, back = ports.partition(",")
        if not host or not sep or not front.isdigit() or not back.isdigit():
            raise ValueError(f"not a ZeroMQ URL (zmq://HOST:PORT1,PORT2): {url!r}")
        return f"tcp://{host}:{front}", f"tcp://{host}:{back}"
    front, sep, back = url[len("zmq:") :].partition(",")
    if not sep or "://" not in front or "://" not in back:
        raise ValueError(f"not a ZeroMQ URL (zmq:ENDPOINT1,ENDPOINT2): {url!r}")
    return front, back


def set_socket_options(sock: zmq.Socket[Any]) -> None:
    """What every socket on the bus is set to, the forwarder's (`tidings zmq-proxy`) too: queue
    up to HIGH_WATER_MARK messages per peer, and drop what is still unsent at close."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)


class ZmqBroker(MemoryBroker):
    """The in-memory broker (this process numbers and buffers what it holds; deleting reaches
    this process's subscribers), and a forwarder that carries publishes between processes."""

    name = "zmq"
    needs_activation = True

    def __init__(self, hub: Hub, url: str) -> None:
        super().__init__(hub)
        self.frontend, self.backend = parse_url(url)
        self.node = secrets.token_hex(8)
        self.context = zmq.asyncio.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.sub = self.context.socket(zmq.SUB)
        for sock in (self.pub, self.sub):
            set_socket_options(sock)
        self.sent: dict[str, int] = {}  # our sequence number per channel
        self.seen: dict[tuple[bytes, str], int] = {}  # (publisher, channel) -> last sequence number
        self.active: dict[str, asyncio.Future[None]] = {}  # channels subscribed (done once probed)
        self._probe_echoed: dict[str, int] = {}  # which probe came back first, per channel
        self.received = 0  # messages taken off the bus (for /healthz: shows topic filtering)
        self.lost = 0  # messages known dropped by the bus (sequence numbers skipped)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle

    async def start(self) -> None:
        # ZeroMQ connects in the background and reconnects by itself: a forwarder that is not
        # there yet (or goes away) leaves messages local to each process until it is back.
        self.pub.connect(self.frontend)
        self.sub.connect(self.backend)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive_loop()), loop.create_task(self._forget_idle())]
        log.info("ZeroMQ: publishing to %s, subscribing at %s", self.frontend, self.backend)

    async def close(self) -> None:
        await cancel_all(self._tasks)
        self.pub.close(0)
        self.sub.close(0)
        self.context.term()

    def stats(self) -> dict[str, JSONValue]:
        return {"received": self.received, "lost": self.lost, "channels": len(self.active)}

    # -- publishing

    def forward(self, channel: str, data: JSONValue) -> None:
        # Delivered here already (this process's numbering); the other processes get it through
        # the forwarder, and a forwarder that is away only costs them this message.
        seq = self.sent[channel] = self.sent.get(channel, 0) + 1
        self._send(channel, encode_json(data), b"%s %d" % (self.node.encode(), seq))

    def _send(self, channel: str, payload: bytes, meta: bytes) -> None:
        with contextlib.suppress(zmq.Again):  # a PUB socket drops rather than block
            self.pub.send_multipart([channel.encode(), payload, meta], flags=zmq.NOBLOCK)

    # -- subscriptions

    def ready(self, channels: tuple[str, ...]) -> bool:
        return all(name in self.active and self.active[name].done() for name in channels)

    async def activate(self, channels: tuple[str, ...]) -> None:
        await asyncio.gather(*(self._activate(name) for name in channels))

    async def _activate(self, channel: str) -> None:
        started = self.active.get(channel)
        if started is not None:
            await asyncio.shield(started)
            return
        loop = asyncio.get_running_loop()
        started = self.active[channel] = loop.create_future()
        self.sub.setsockopt(zmq.SUBSCRIBE, channel.encode())
        # Probe until our own message comes back: the subscription had then reached our
        # publisher, and so every publisher (the forwarder tells them all alike). What this
        # process received before that probe was sent may be incomplete.
        marks: list[MessageId] = []
        deadline = loop.time() + ACTIVATION_TIMEOUT
        while not started.done() and loop.time() < deadline:
            marks.append(self.hub.channel(channel).last_id)
            self._send(channel, b"", b"%s %s%d" % (self.node.encode(), PROBE, len(marks) - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(started), PROBE_INTERVAL)
        if started.done():
            mark = marks[self._probe_echoed.pop(channel, len(marks) - 1)]
        else:
            log.debug("no probe back for %s: is the forwarder at %s running?", channel, self.frontend)
            started.set_result(None)
            mark = self.hub.channel(channel).last_id
        self.hub.known_from(channel, mark)

    async def _forget_idle(self) -> None:
        """Unsubscribe from channels nobody here has subscribed to since the last look."""
        idle: set[str] = set()
        while True:
            await asyncio.sleep(IDLE_CHECK)
            unused = set()
            for name, started in self.active.items():
                ch = self.hub.get(name)
                if started.done() and (ch is None or not ch.subscribers):
                    unused.add(name)
            for name in unused & idle:
                del self.active[name]
                self.sub.setsockopt(zmq.UNSUBSCRIBE, name.encode())
                for key in [key for key in self.seen if key[1] == name]:
                    del self.seen[key]
            idle = unused - idle

    # -- receiving

    async def _receive_loop(self) -> None:
        while True:
            frames = await self.sub.recv_multipart()
            try:
                self._receive(frames)
            except Exception:
                log.exception("a message from the bus could not be handled")

    def _receive(self, frames: list[bytes]) -> None:
        if len(frames) not in (2, 3):
            log.debug("ignoring a %d-frame message (expected channel, payload[, publisher seq])", len(frames))
            return
        try:
            channel = validate_channel(frames[0].decode())
        except (UnicodeDecodeError, InvalidChannel):
            return
        if channel not in self.active:
            return  # a longer name that shares a subscribed prefix (ZeroMQ filters by prefix)
        after_loss = False
        if len(frames) == 3:
            publisher, _, seq_text = frames[2].partition(b" ")
            if seq_text.startswith(PROBE):
                started = self.active[channel]
                if publisher == self.node.encode() and not started.done() and seq_text[len(PROBE) :].isdigit():
                    self._probe_echoed[channel] = int(seq_text[len(PROBE) :])
                    started.set_result(None)
                return
            if publisher == self.node.encode():
                return  # our own message, delivered here already
            if not seq_text.isdigit():
                log.debug("ignoring a message on %s with a malformed sequence frame", channel)
                return
            seq = int(seq_text)
            key = (publisher, channel)
            last = self.seen.get(key)
            if last is not None and seq <= last:
                return  # a repeat
            if last is not None and seq > last + 1:
                after_loss = True
                self.lost += seq - last - 1
                log.warning("the bus dropped %d message(s) from %s on %s", seq - last - 1, publisher.decode(), channel)
            self.seen[key] = seq
        try:
            data = json.loads(frames[1]) if len(frames) == 3 else foreign_data(frames[1])
        except ValueError:
            log.debug("ignoring a message on %s whose payload is not JSON", channel)
            return
        self.received += 1
        now = wall_clock_ms()
        self.hub.ingest(Message(self.hub.next_id(channel, now), channel, data, now, after_loss=after_loss), now)


__all__ = ["ZmqBroker", "parse_url", "set_socket_options"]
