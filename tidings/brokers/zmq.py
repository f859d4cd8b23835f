"""ZeroMQ: Tidings processes sharing one sequencer (`tidings zmq-proxy`, tidings/sequencer.py),
with no Redis.

The sequencer numbers every message and keeps the history, as Redis does for the Redis broker:
ids and cursors are the same in every process, and a client resumes exactly on any of them.
This process asks it (publish, history, info, delete, probe, report) and receives from it
only the channels it has subscribers for, since it filters at the sender; over ZeroMQ (any host)
or its Unix socket (this machine: ``zmq+unix:PATH``, ~4x cheaper), tidings/brokers/links.py. The
hub's buffers are a cache of the sequencer's history.

Every message arrives with the id its channel had before it. When that is not the id this
process holds, messages went missing on the way (ZeroMQ drops at high-water marks and while a
peer is away) and the history fills them in before the message is delivered; only what the
history no longer has is a gap. A sequencer that restarts has a new epoch (its heartbeat says
so): every channel here is caught up from the new history, and what it cannot give back is a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from tidings.brokers.base import NumberingBus, cancel_all
from tidings.brokers.links import link_for
from tidings.encoding import encode_json
from tidings.errors import TOO_MANY_CHANNELS, BrokerFailed, BrokerUnavailable, TidingsError, TooManyChannels
from tidings.hub import (
    ZERO_ID,
    ChannelInfo,
    Cursor,
    Hub,
    JSONValue,
    Message,
    MessageId,
    Published,
    wall_clock_ms,
)
from tidings.presence import RemoteView, encode_report, merge_reports
from tidings.sequencer import CONTROL, HEARTBEAT, SEP, WIRE_VERSION, pack, parse_id

log = logging.getLogger("tidings.zmq")
T = TypeVar("T")

REQUEST_TIMEOUT = 2.0  # seconds before an unanswered request is a 503
CONNECT_WAIT = 5.0  # seconds a starting process waits for the sequencer before serving anyway
PROBE_INTERVAL = 0.05  # seconds between probes while a subscription starts
IDLE_CHECK = 30.0  # seconds between looks for channels nobody here subscribes to any more
REPORT_INTERVAL = 1.0  # seconds between reports of this process's subscriber counts
SILENCE = 4 * HEARTBEAT  # no heartbeat for this long: the sequencer is away


class Request(NamedTuple):
    """A request awaiting the sequencer's answer: its future, the loop time it gives up, and
    what makes the answer's fields into the future's result."""

    answer: asyncio.Future[Any]
    expires: float
    read: Callable[[list[bytes]], Any]


def _fields(results: list[bytes]) -> list[bytes]:
    return results


def _refusal(fields: list[bytes]) -> TidingsError:
    code, detail = [*fields, b"", b""][:2]
    if code == TOO_MANY_CHANNELS.encode():
        return TooManyChannels(detail.decode(errors="replace"))
    return BrokerUnavailable(f"the sequencer refused: {detail.decode(errors='replace')}")


class ZmqBroker(NumberingBus):
    name = "zmq"
    keeps_history = True
    needs_activation = True

    def __init__(self, hub: Hub, url: str) -> None:
        super().__init__(hub)
        self.link = link_for(url)
        self.node = secrets.token_hex(8).encode()
        self.refs = itertools.count()
        self.pending: dict[bytes, Request] = {}  # by reference (see `_request`, `_expire`)
        self.outgoing: list[tuple[bytes, bytes]] = []  # requests of this loop turn, not sent yet
        self.closed = False
        self.told_presence = False  # the sequencer holds a presence report of ours
        self.other_version = False  # the sequencer's frames are of another version (see `_heartbeat`)
        self.active: dict[str, asyncio.Future[None]] = {}  # channels subscribed (done once probed)
        self.repairing: dict[str, list[list[bytes]]] = {}  # channels being caught up: what arrived meanwhile
        self.gapped: set[str] = set()  # channels whose next message comes after a loss (a new sequencer)
        self.epoch: bytes | None = None
        self.heard = 0.0  # loop time of the last heartbeat
        self.received = 0  # messages taken off the bus (for /healthz: shows topic filtering)
        self.lost = 0  # messages the bus lost for good (dropped before the sequencer had them)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.link.open(self._answer, self._receive, self._link_changed)
        self._tasks = [
            loop.create_task(self._expire()),
            loop.create_task(self._report()),
            loop.create_task(self._forget_idle()),
        ]
        # The link connects in the background: wait (bounded) until the sequencer answers, so that
        # the first publish is not refused for a connection still being made.
        deadline = loop.time() + CONNECT_WAIT
        while True:
            try:
                await self._ask(b"report", self.node, b"{}")
                break
            except BrokerUnavailable:
                if loop.time() > deadline:
                    log.warning("the sequencer at %s is not reachable yet; serving, and retrying", self.link.where)
                    break
                await asyncio.sleep(0.02)
        log.info("the sequencer at %s", self.link.where)

    async def close(self) -> None:
        await cancel_all(self._tasks)
        if self.told_presence:  # (so that the others do not list our users for NODE_TTL more)
            with contextlib.suppress(BrokerUnavailable, TimeoutError):
                await asyncio.wait_for(self._ask(b"here", self.node, b"1", b"{}"), 0.5)
        self.closed = True
        for request in self.pending.values():
            if not request.answer.done():
                request.answer.set_exception(BrokerUnavailable("the server is stopping"))
        self.pending.clear()
        self.outgoing.clear()
        await self.link.close()

    @property
    def healthy(self) -> bool:
        return self.epoch is not None and asyncio.get_running_loop().time() - self.heard < SILENCE

    def stats(self) -> dict[str, JSONValue]:
        return {"received": self.received, "lost": self.lost, "channels": len(self.active)}

    # -- requests

    def _request(self, op: bytes, args: tuple[bytes, ...], read: Callable[[list[bytes]], T]) -> asyncio.Future[T]:
        """Send a request; its future gets `read(fields of the answer)`, or BrokerUnavailable
        (the sequencer is not reachable, or did not answer within REQUEST_TIMEOUT; see `_expire`),
        or TooManyChannels, or BrokerFailed (a malformed answer). A future, not a coroutine: a
        publish needs no task of its own.

        The requests of one loop turn leave together (`_send_requests`: one ZeroMQ message, or
        one write on the Unix socket) and their answers come back so: each message is a hop
        between processes (over ZeroMQ, through its I/O threads on both sides), which is most
        of what a publish through the sequencer costs."""
        answer: asyncio.Future[T] = self.loop.create_future()
        if self.closed:
            answer.set_exception(BrokerUnavailable("the server is stopping"))
            return answer
        ref = b"%d" % next(self.refs)
        # The deadline: a request that reaches the sequencer after it (ZeroMQ resends what was
        # queued when a connection comes back) is dropped there, so that a 503 for a timeout
        # does not turn into a publish later.
        deadline = b"%d" % (wall_clock_ms() + int(REQUEST_TIMEOUT * 1000))
        if not self.outgoing:
            self.loop.call_soon(self._send_requests)
        self.outgoing.append((ref, pack(op, ref, deadline, *args)))
        self.pending[ref] = Request(answer, self.loop.time() + REQUEST_TIMEOUT, read)
        return answer

    def _send_requests(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.closed:
            return  # (`close` has failed them)
        if not self.link.send([frame for _, frame in outgoing]):
            for ref, _ in outgoing:
                request = self.pending.pop(ref, None)
                if request is not None and not request.answer.done():
                    request.answer.set_exception(BrokerUnavailable("the sequencer is not reachable"))

    async def _ask(self, op: bytes, *args: bytes) -> list[bytes]:
        return await self._request(op, args, _fields)

    def _answer(self, frame: bytes) -> None:
        ref, _, rest = frame.partition(SEP)
        request = self.pending.pop(ref, None)
        if request is None or request.answer.done():
            return  # (given up)
        status, _, results = rest.partition(SEP)
        fields = results.split(SEP) if results else []
        if status != b"ok":
            request.answer.set_exception(_refusal(fields))
            return
        try:
            request.answer.set_result(request.read(fields))
        except Exception as exc:
            log.error("a malformed answer from the sequencer: %r (%s)", frame[:200], exc)
            request.answer.set_exception(BrokerFailed("a malformed answer from the sequencer"))

    async def _expire(self) -> None:
        """Fail the requests left unanswered past REQUEST_TIMEOUT: one timer for all of them
        (a timeout per request, `asyncio.wait_for`, cost a task and a timer handle each)."""
        while True:
            await asyncio.sleep(REQUEST_TIMEOUT / 8)
            now = self.loop.time()
            for ref, request in list(self.pending.items()):
                if request.answer.done():
                    del self.pending[ref]  # (its asker was cancelled)
                elif request.expires < now:
                    del self.pending[ref]
                    request.answer.set_exception(
                        BrokerUnavailable(f"the sequencer did not answer within {REQUEST_TIMEOUT:g} s")
                    )

    def _own_count(self, channel: str) -> bytes:
        ch = self.hub.get(channel)
        return b"%d" % (ch.subscribers if ch is not None else 0)

    def publish(self, channel: str, data: JSONValue) -> asyncio.Future[Published]:
        # This process delivers its own message when it comes back from the sequencer, in
        # order with everyone else's.
        def published(fields: list[bytes]) -> Published:
            return Published(parse_id(fields[0]), channel, int(fields[1]))

        args = (channel.encode(), self.node, self._own_count(channel), encode_json(data))
        return self._request(b"pub", args, published)

    def delete(self, channel: str) -> asyncio.Future[int | None]:
        def deleted(fields: list[bytes]) -> int | None:
            told = int(fields[1])
            return told if fields[0] == b"1" or told else None

        return self._request(b"del", (channel.encode(), self.node, self._own_count(channel)), deleted)

    def info(self, channel: str, now_ms: int) -> asyncio.Future[ChannelInfo]:
        def info(fields: list[bytes]) -> ChannelInfo:
            last = max(parse_id(fields[2]), self.hub.info(channel, now_ms).last_id)
            return ChannelInfo(channel, int(fields[0]), int(fields[1]), last)

        return self._request(b"info", (channel.encode(), self.node, self._own_count(channel)), info)

    async def _report(self) -> None:
        presence = self.hub.presence
        full = True  # (the first report, and whenever the sequencer does not know ours)
        at_once = False  # (a whole one the sequencer asked for goes without waiting)
        while True:
            if not at_once:
                await asyncio.sleep(REPORT_INTERVAL)
            at_once = False
            counts = {name: ch.subscribers for name, ch in self.hub.channels.items() if ch.subscribers}
            changes = presence.report(full)
            with contextlib.suppress(BrokerUnavailable):
                await self._ask(b"report", self.node, json.dumps(counts).encode())
            if not (changes or presence.reported or self.told_presence):
                continue  # (nothing held, nothing to take back)
            try:
                known = await self._ask(b"here", self.node, b"1" if full else b"0", encode_report(changes))
            except BrokerUnavailable:
                full = True
                continue
            # Each report keeps ours alive there; one it could not add to (it restarted, or forgot
            # us) is answered 0: the next one is whole.
            full = at_once = known == [b"0"]
            self.told_presence = bool(presence.reported)

    def presence_elsewhere(self, channels: list[str]) -> asyncio.Future[dict[str, RemoteView]]:
        def views(fields: list[bytes]) -> dict[str, RemoteView]:
            reports = json.loads(fields[0])
            return {name: merge_reports(held) for name, held in reports.items() if held}

        return self._request(b"who", (self.node, encode_json(channels)), views)

    # -- history

    async def fill(self, channels: list[str], cursor: Cursor) -> None:
        await asyncio.gather(*(self._fill(name, cursor.position(name) or ZERO_ID) for name in channels))

    async def _fill(self, channel: str, after: MessageId) -> None:
        """Load the history after `after` into the hub. Its first message newer than this
        process's comes after a loss when the history does not reach back to what this process
        last had (or the sequencer restarted since): live subscribers are told of a gap."""
        complete_after, *raw = await self._ask(b"hist", channel.encode(), str(after).encode())
        horizon = parse_id(complete_after)
        history = []
        for item in raw:
            fields = json.loads(item)
            history.append(Message.from_data(MessageId.parse(fields["id"]), channel, fields["data"], fields["time"]))
        last = self.hub.last_id(channel)
        newer = [message for message in history if message.id > last]
        if newer and (horizon > last or channel in self.gapped):
            newer[0].after_loss = True
            self.gapped.discard(channel)
        self.hub.backfill(channel, history, horizon, wall_clock_ms())

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
        self.link.subscribe(channel.encode())
        # Probe until the sequencer's answer comes back on the subscription: from then on
        # every message of the channel reaches this process, and what came before is history.
        try:
            while not started.done():
                await self._ask(b"probe", channel.encode(), self.node)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(started), PROBE_INTERVAL)
        except BaseException:
            if not started.done():
                del self.active[channel]  # the next read tries again
                self.link.unsubscribe(channel.encode())
                started.cancel()
            raise

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
                self.link.unsubscribe(name.encode())
            idle = unused - idle

    # -- receiving

    def _receive(self, frame: bytes) -> None:
        frames = frame.split(SEP, 5)  # (a message's data, last, keeps whatever it holds)
        if len(frames) < 2:
            return
        if frames[0] == CONTROL:
            self._heartbeat(frames[1], frames[2] if len(frames) > 2 else b"1")
            return
        try:
            channel = frames[0].decode()
        except UnicodeDecodeError:
            return
        started = self.active.get(channel)
        if started is None:
            return  # (unsubscribed a moment ago)
        kind = frames[1]
        if kind == b"probe" and len(frames) == 4:
            if frames[2] == self.node and not started.done():
                self.hub.known_from(channel, parse_id(frames[3]))
                started.set_result(None)
        elif kind == b"deleted":
            self.hub.delete(channel)
        elif kind == b"m" and started.done() and len(frames) == 6:
            self.received += 1
            waiting = self.repairing.get(channel)
            if waiting is not None:
                waiting.append(frames)
            elif parse_id(frames[3]) > self.hub.last_id(channel):
                self._repair(channel, frames)
            else:
                self._ingest(channel, frames)

    def _ingest(self, channel: str, frames: list[bytes]) -> None:
        ident, lost = parse_id(frames[2]), int(frames[4])
        if lost:
            self.lost += lost
        if channel in self.gapped:
            self.gapped.discard(channel)
            lost = lost or 1
        now = wall_clock_ms()
        self.hub.ingest(Message(ident, channel, frames[5], ident.ms, after_loss=bool(lost)), now)

    def _repair(self, channel: str, frames: list[bytes]) -> None:
        """Messages before this one did not arrive: fetch them, then deliver in order."""
        self.repairing[channel] = [frames]
        self._tasks.append(self.loop.create_task(self._catch_up(channel)))

    async def _catch_up(self, channel: str) -> None:
        fetched = False
        try:
            await self._fill(channel, self.hub.last_id(channel))
            fetched = True
        except BrokerUnavailable as exc:
            log.warning("messages on %s missed and not fetched: %s", channel, exc)
        except Exception:  # (whatever it is, what waits must not wait forever)
            log.exception("messages on %s missed and not fetched", channel)
        waiting = self.repairing.pop(channel, [])
        for frames in waiting:
            if parse_id(frames[2]) > self.hub.last_id(channel):
                if not fetched:
                    self.gapped.add(channel)  # what is gone is a gap
                    fetched = True
                self._ingest(channel, frames)
        current = asyncio.current_task()
        self._tasks = [task for task in self._tasks if task is not current and not task.done()]

    def _link_changed(self, up: bool) -> None:
        """The connection to the sequencer was lost (`up` False) or made again (True; see
        `Link.open`). Lost: what awaits an answer will not get one, so it is refused now rather
        than at its timeout, and the bus counts as away until the next heartbeat. Made again:
        every channel subscribed here reads what it missed from the history, since nothing may
        come on a channel that has gone quiet to show, by its previous id, that some is missing."""
        if not up:
            self.heard = float("-inf")
            for request in self.pending.values():
                if not request.answer.done():
                    request.answer.set_exception(BrokerUnavailable("the connection to the sequencer was lost"))
            self.pending.clear()
            return
        for name, started in self.active.items():
            if started.done() and name not in self.repairing:
                self.repairing[name] = []
                self._tasks.append(self.loop.create_task(self._catch_up(name)))

    def _heartbeat(self, epoch: bytes, version: bytes) -> None:
        if version != WIRE_VERSION:
            if not self.other_version:
                log.error(
                    "the sequencer at %s speaks version %s of the bus, this process %s: run the same Tidings in both",
                    self.link.where, version.decode(errors="replace")[:20], WIRE_VERSION.decode(),
                )  # fmt: skip
            self.other_version = True
            return  # (not heard: the bus counts as away)
        self.other_version = False
        self.heard = asyncio.get_running_loop().time()
        if self.epoch is None:
            self.epoch = epoch
            self.hub.rebase(parse_id(epoch))  # the history begins no earlier than the sequencer
        elif epoch != self.epoch:
            # A new sequencer knows nothing of the old one's messages: cursors from before it are
            # gaps, and each channel's next message here tells its live subscribers so.
            log.warning("the sequencer restarted (epoch %s): what came before it is a gap", epoch.decode())
            self.epoch = epoch
            floor = parse_id(epoch)
            for name in list(self.hub.channels):
                if self.hub.last_id(name) < floor:  # (else read from the new history already, gap told)
                    self.hub.known_from(name, floor)
                    self.gapped.add(name)


__all__ = ["ZmqBroker"]
