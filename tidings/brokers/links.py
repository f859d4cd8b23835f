"""How a Tidings process reaches the sequencer (tidings/sequencer.py): two carriers of the same
frames. `ZmqLink` (a DEALER for requests, a SUB for the fan-out) reaches a sequencer on any host;
`UnixLink` (one Unix stream connection, records written once per loop turn) reaches one on this
machine ~4x cheaper per round trip, and is what `tidings serve --workers` uses. `ZmqBroker`
(tidings/brokers/zmq.py) does the rest alike over either.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import cast

import zmq

from tidings.brokers.base import cancel_all
from tidings.sequencer import (
    ANSWER,
    CONTROL,
    MESSAGE,
    REQUEST,
    SEP,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Inbox,
    RecordReader,
    encode_records,
    send_frames,
    set_socket_options,
)

log = logging.getLogger("tidings.zmq")

RECONNECT_DELAY = (0.02, 0.5)  # seconds between attempts to reach a sequencer's Unix socket (first, most)
STEADY = 1.0  # seconds a connection must last for the next attempt to start at the shortest delay
ANSWER_KIND, MESSAGE_KIND = ANSWER[0], MESSAGE[0]


def _ignore(_: object) -> None:
    pass


class Link(ABC):
    """Requests out; answers (`answer`, one frame each) and fan-out frames (`message`) in."""

    where: str  # the sequencer's address, for log lines

    @abstractmethod
    def open(
        self, answer: Callable[[bytes], None], message: Callable[[bytes], None], changed: Callable[[bool], None]
    ) -> None:
        """Start connecting (in the background, and again whenever the connection is lost).
        `changed(False)` when a connection is lost, `changed(True)` when one is made again
        (not the first time): what was sent or published meanwhile may be lost. (ZeroMQ does
        not tell: it reconnects by itself; the previous-id check and the heartbeats are what
        notice there.)"""

    @abstractmethod
    def send(self, requests: list[bytes]) -> bool:
        """Send one loop turn's requests; False, having sent none, when not connected."""

    @abstractmethod
    def subscribe(self, channel: bytes) -> None:
        """Receive the channel's fan-out from now on (heartbeats come always)."""

    @abstractmethod
    def unsubscribe(self, channel: bytes) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def parse_url(url: str) -> tuple[str, str, str]:
    """The sequencer's frontend, backend and requests endpoints: ``zmq://HOST:P1,P2,P3`` (TCP)
    or ``zmq:ENDPOINT1,ENDPOINT2,ENDPOINT3`` (e.g. ``ipc://`` ones), in the order
    `tidings zmq-proxy --frontend --backend --requests` binds them."""
    if url.startswith("zmq://"):
        host, _, ports = url[len("zmq://") :].rpartition(":")
        numbers = ports.split(",")
        if not host or len(numbers) != 3 or not all(n.isdigit() for n in numbers):
            raise ValueError(f"not a ZeroMQ URL (zmq://HOST:FRONTEND,BACKEND,REQUESTS ports): {url!r}")
        front, back, requests = (f"tcp://{host}:{n}" for n in numbers)
        return front, back, requests
    endpoints = url[len("zmq:") :].split(",")
    if len(endpoints) != 3 or not all("://" in e for e in endpoints):
        raise ValueError(f"not a ZeroMQ URL (zmq:FRONTEND,BACKEND,REQUESTS endpoints): {url!r}")
    front, back, requests = endpoints
    return front, back, requests


def link_for(url: str) -> Link:
    """The carrier a broker URL names: ``zmq+unix:PATH`` (`tidings zmq-proxy --local PATH`), or
    a ZeroMQ one (see `parse_url`). Raises ValueError."""
    if url.startswith("zmq+unix:"):
        path = url[len("zmq+unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"not a sequencer's Unix socket (zmq+unix:/ABSOLUTE/PATH): {url!r}")
        return UnixLink(path)
    _, backend, requests = parse_url(url)
    return ZmqLink(requests, backend)


class ZmqLink(Link):
    def __init__(self, requests: str, backend: str) -> None:
        self.requests, self.backend = requests, backend
        self.where = requests
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.sub = self.context.socket(zmq.SUB)
        for sock in (self.dealer, self.sub):
            set_socket_options(sock)
        self.dealer.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a sequencer that is not there: a 503 now
        self.inboxes: list[Inbox] = []

    def open(
        self, answer: Callable[[bytes], None], message: Callable[[bytes], None], changed: Callable[[bool], None]
    ) -> None:
        # ZeroMQ connects in the background and reconnects by itself.
        self.dealer.connect(self.requests)
        self.sub.connect(self.backend)
        self.sub.setsockopt(zmq.SUBSCRIBE, CONTROL + SEP)

        def answers(frames: list[bytes]) -> None:  # (one ZeroMQ message: a turn's answers)
            for frame in frames:
                answer(frame)

        loop = asyncio.get_running_loop()
        self.answers_in = Inbox(loop, self.dealer, answers, multipart=True)
        self.messages_in = Inbox(loop, self.sub, message)
        self.inboxes = [self.answers_in, self.messages_in]

    def send(self, requests: list[bytes]) -> bool:
        try:
            send_frames(self.dealer, requests)
            return True
        except zmq.ZMQError:  # (Again: no sequencer connected; anything else: not sent either)
            return False
        finally:
            self.answers_in.sent()

    def subscribe(self, channel: bytes) -> None:
        # (ZeroMQ filters on the frame's start: the separator makes it this channel's alone)
        self.sub.setsockopt(zmq.SUBSCRIBE, channel + SEP)
        self.messages_in.sent()

    def unsubscribe(self, channel: bytes) -> None:
        self.sub.setsockopt(zmq.UNSUBSCRIBE, channel + SEP)
        self.messages_in.sent()

    async def close(self) -> None:
        for inbox in self.inboxes:
            inbox.close()
        self.dealer.close(0)
        self.sub.close(0)
        self.context.term()


class UnixLink(Link, asyncio.Protocol):
    """One connection to the sequencer's Unix socket, made again whenever it is lost: then every
    subscription is sent again, and `changed(True)` has the broker read what each channel missed
    from the history (`ZmqBroker._link_changed`)."""

    def __init__(self, path: str) -> None:
        self.path = self.where = path
        self.channels: set[bytes] = set()
        self.transport: asyncio.Transport | None = None
        self.reader = RecordReader()
        self.task: asyncio.Task[None] | None = None
        self.lost: asyncio.Future[None] | None = None
        self.answer: Callable[[bytes], None] = _ignore
        self.message: Callable[[bytes], None] = _ignore
        self.changed: Callable[[bool], None] = _ignore
        self.connections = 0

    def open(
        self, answer: Callable[[bytes], None], message: Callable[[bytes], None], changed: Callable[[bool], None]
    ) -> None:
        self.answer, self.message, self.changed = answer, message, changed
        self.task = asyncio.get_running_loop().create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_DELAY[0]
        while True:
            self.lost = loop.create_future()
            try:
                await loop.create_unix_connection(lambda: self, self.path)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])
                continue
            made = loop.time()
            await self.lost
            # (one that ends at once, e.g. a sequencer refusing what this one sends, is no
            # reason to try again at once)
            delay = RECONNECT_DELAY[0] if loop.time() - made > STEADY else min(delay * 2, RECONNECT_DELAY[1])
            await asyncio.sleep(delay)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)
        self.reader = RecordReader()
        if self.channels:
            transport.write(encode_records(SUBSCRIBE, self.channels))
        self.connections += 1
        if self.connections > 1:
            self.changed(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self.changed(False)

    def data_received(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except ValueError as exc:
            log.error("a malformed stream from the sequencer at %s (%s): connecting again", self.path, exc)
            assert self.transport is not None
            self.transport.abort()
            return
        answer, message = self.answer, self.message
        for kind, frame in records:
            try:
                if kind == MESSAGE_KIND:
                    message(frame)
                elif kind == ANSWER_KIND:
                    answer(frame)
            except Exception:
                log.exception("a frame from the sequencer could not be handled")

    def send(self, requests: list[bytes]) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(encode_records(REQUEST, requests))
        return True

    def _tell(self, kind: bytes, channel: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_records(kind, [channel]))

    def subscribe(self, channel: bytes) -> None:
        self.channels.add(channel)
        self._tell(SUBSCRIBE, channel)

    def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self._tell(UNSUBSCRIBE, channel)

    async def close(self) -> None:
        if self.task is not None:
            await cancel_all([self.task])
        if self.transport is not None:
            self.transport.abort()


__all__ = ["Link", "UnixLink", "ZmqLink", "link_for", "parse_url"]
