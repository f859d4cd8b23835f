"""The sequencer: one process that numbers every message of a ZeroMQ bus, keeps its history,
and fans it out to the Tidings processes, so that a cursor means the same in every one of them.

`tidings zmq-proxy` runs it. Three ZeroMQ sockets, all bound here (and a Unix socket, below):

- `requests` (ROUTER): what Tidings processes ask (`ZmqBroker`, tidings/brokers/zmq.py):
  publish, history, info, delete, probe, report; and presence: `here` (changes to a process's, or the
  whole of it) and `who` (the others', for some channels). Each request is one frame of fields
  ``op ref deadline *args`` (`deadline`: wall-clock ms after which the asker has given up, so the
  request is dropped) and each answer ``ref ok *results`` or ``ref err code detail``. The
  requests a process makes in one loop turn travel as one message of such frames, and their
  answers come back as one (each message costs a hop through ZeroMQ's I/O threads).
- `backend` (XPUB): the fan-out. A process subscribes to ``channel NUL`` for the channels it has
  subscribers for (filtered here: the XPUB by the frame's start, and a frame no ZeroMQ process
  subscribed to is not even sent, see `_subscription`) and to ``CONTROL NUL``:
  ``channel m id previous-id lost data-JSON`` a message; `previous id` is the channel's id
  before it, so a process that holds a different one knows it missed messages and fetches them
  (`lost` counts messages no history can give back: dropped before they reached here);
  ``channel probe token last-id`` the answer to a probe (the subscription works; what came
  before `last id` is history); ``channel deleted``; ``CONTROL epoch version`` every
  `HEARTBEAT` seconds: this sequencer is alive, since when, and the version of its frames.
- `frontend` (XSUB): programs publishing with a plain ZeroMQ PUB, ``[channel, payload]`` (text,
  or JSON when an object or array) or ``[channel, JSON payload, b"<publisher> <seq>"]`` (a
  sequence number per publisher and channel: a skip is reported as lost). Numbered and kept
  like any publish. Subscriptions arriving at the backend are passed on to them (an XPUB
  publisher can wait for its audience), and the frontend takes every channel.

`--local PATH` adds a Unix stream socket for Tidings processes on the same machine (what
`tidings serve --workers` uses): the same frames, requests, answers and fan-out, carried as
records (`RecordReader`, `record_header`) on one connection per process, written once per loop
turn. It is ~4x cheaper per round trip than ZeroMQ's ipc:// (measured: ZeroMQ moves every
message through its I/O threads; this socket is read and written by the event loop itself), and
ZeroMQ stays for processes on other hosts and for plain ZeroMQ publishers. A record is a 4-byte
big-endian length, then a kind byte (REQUEST, SUBSCRIBE, UNSUBSCRIBE from a process; ANSWER,
MESSAGE from here), then the frame. A process subscribes by channel name; every connection gets
the heartbeats. A process that stops reading is disconnected past PEER_BUFFER bytes unsent (where
ZeroMQ would drop messages silently past its high-water mark): it connects again, subscribes
again and reads what it missed from the history, channel by channel (`ZmqBroker._link_changed`).

Between the sequencer and Tidings processes a message is one ZeroMQ frame whose fields are
separated by NUL (`pack`/`unpack`), not one frame per field: pyzmq's `send_multipart` costs
~7 us for six frames against ~0.5 us for one `send` (measured), and a frame per field was most
of the sequencer's cost per publish. No field holds a NUL: channel names cannot, ids and counts
are digits, and the JSON is compact UTF-8 (`checked_json`; raw NUL is not JSON).

The history is a `Hub` (the pure core, as in a server with the memory broker): the same ring
buffers, sizes, TTL, caps and ids. Its floor is the sequencer's start, its `epoch`: a restarted
sequencer knows nothing older, so cursors from before it are gaps, never silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import zmq

from tidings.brokers.base import foreign_data
from tidings.encoding import decode_json, encode_json
from tidings.errors import InvalidChannel, OverCapacity, TidingsError
from tidings.hub import Hub, JSONValue, MessageId, validate_channel, wall_clock_ms

log = logging.getLogger("tidings.sequencer")

SEP = b"\x00"  # between the fields of a frame (see the module's docstring)
# The version of these frames, in every heartbeat: a process that hears another one says so and
# counts the sequencer as away (503s with a reason), instead of its requests silently timing out.
WIRE_VERSION = b"2"
CONTROL = b""  # the channel field of heartbeats: their frames start with SEP, no channel's does
HEARTBEAT = 0.5  # seconds between heartbeats
NODE_TTL = 5.0  # a process's reported subscriber counts stand this long
HIGH_WATER_MARK = 100_000  # messages queued per peer before ZeroMQ drops
PEER_PING_MS = 1000  # ZeroMQ's own heartbeat between connected sockets (see set_socket_options)
PEER_SILENCE_MS = 5000  # no traffic nor ping for this long: the connection is dropped

# The local carrier's records (see the module's docstring).
REQUEST, SUBSCRIBE, UNSUBSCRIBE, ANSWER, MESSAGE = b"q", b"s", b"u", b"a", b"m"
MAX_RECORD = 256 * 1024 * 1024  # bytes: a longer record is a broken peer, not a message
PEER_BUFFER = 64 * 1024 * 1024  # bytes unsent to a local process before it is disconnected


def set_socket_options(sock: zmq.Socket[Any]) -> None:
    """What every socket on the bus is set to: queue up to HIGH_WATER_MARK messages per peer,
    drop what is still unsent at close, and ping the peer every second (ZMTP heartbeats): a
    connection to a host that vanished (no FIN, e.g. a power cut) is dropped after a few seconds
    of silence and ZeroMQ reconnects, instead of waiting for TCP to give up, which takes hours."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.HEARTBEAT_IVL, PEER_PING_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, PEER_SILENCE_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, PEER_SILENCE_MS)


# (ints: pyzmq's enums cost a few Python calls per use)
NOBLOCK, EVENTS, POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class Inbox:
    """Reads a ZeroMQ socket from the event loop: every queued message goes to `handle` when the
    socket's descriptor signals, and again after each send on it (`sent`): ZeroMQ's descriptor
    is edge-triggered, and a send may take the edge that announced a message. (pyzmq's asyncio
    sockets cost a future and a loop turn per message: with them a publish through the sequencer
    cost ~10x one into the hub, measured with bench's D scenario.) A message is one frame
    (`handle` gets bytes), or several for the sockets whose peers send several (`multipart`:
    `handle` gets a list)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[Any],
        handle: Callable[[Any], None],
        multipart: bool = False,
    ) -> None:
        self.loop, self.sock, self.handle = loop, sock, handle
        self.receive: Callable[[int], Any] = sock.recv_multipart if multipart else sock.recv
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self.due = False
        self.closed = False
        loop.add_reader(self.fd, self.drain)
        self.sent()  # what came before

    def drain(self) -> None:
        self.due = False
        if self.closed:
            return  # (a look scheduled before the socket was closed)
        sock, receive, handle = self.sock, self.receive, self.handle
        while cast(int, sock.getsockopt(EVENTS)) & POLLIN:
            try:
                message = receive(NOBLOCK)
            except zmq.Again:
                break
            try:
                handle(message)
            except Exception:
                log.exception("a ZeroMQ message could not be handled")

    def sent(self) -> None:
        """After a send (or a subscription) on the socket: look again at the end of this turn."""
        if not self.due:
            self.due = True
            self.loop.call_soon(self.drain)

    def close(self) -> None:
        self.closed = True
        self.loop.remove_reader(self.fd)


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """Send one message of several frames; raises zmq.Again, having sent nothing, when the socket
    cannot take it (a full queue; no peer yet for a socket set IMMEDIATE). (`send_multipart`
    costs ~1.2 us per frame in pyzmq's flag enums; a send with int flags ~0.45 us.)"""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, NOBLOCK if i == last else SNDMORE_NOBLOCK)


def checked_json(data: bytes) -> bytes:
    """`data` if it is compact UTF-8 JSON, as Tidings processes send it, else the same value
    encoded so (raises ValueError when it is not JSON at all): whatever reaches the requests
    socket reaches subscribers as it is, and SSE and NDJSON frame messages by lines."""
    value = decode_json(data.decode())  # (strict UTF-8: no BOM, no UTF-16; JSON has no raw NUL)
    return encode_json(value) if b"\n" in data or b"\r" in data else data


def pack(*fields: bytes) -> bytes:
    """One frame of fields (see the module's docstring)."""
    return SEP.join(fields)


def unpack(frame: bytes, count: int) -> list[bytes]:
    """The `count` fields of a frame, the last one taking the rest; raises ValueError when
    there are fewer."""
    fields = frame.split(SEP, count - 1)
    if len(fields) != count:
        raise ValueError(f"a frame of {len(fields)} field(s), expected {count}")
    return fields


def parse_id(raw: bytes) -> MessageId:
    return MessageId.parse(raw.decode())


def record_header(kind: bytes, frame: bytes) -> bytes:
    """What goes before `frame` in a record of the local carrier."""
    return (len(frame) + 1).to_bytes(4, "big") + kind


def encode_records(kind: bytes, frames: Iterable[bytes]) -> bytes:
    """Records of one kind, ready to write in one go."""
    return b"".join([part for frame in frames for part in (record_header(kind, frame), frame)])


class RecordReader:
    """Splits what a stream delivers into records: (kind, frame) pairs, kind as an int."""

    def __init__(self) -> None:
        self.rest = b""  # the start of a record not complete yet
        self.parts: list[bytes] = []  # more of it, joined once the record is complete
        self.needed = 0  # the bytes the incomplete record needs in all (0: not known yet)
        self.have = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The records completed by `data`; raises ValueError for a malformed stream."""
        if self.parts or self.rest:
            if self.needed and self.have + len(data) < self.needed:  # (a long record: no copies)
                self.parts.append(data)
                self.have += len(data)
                return []
            data = b"".join([self.rest, *self.parts, data])
            self.rest, self.parts, self.needed, self.have = b"", [], 0, 0
        records = []
        pos, size = 0, len(data)
        while size - pos >= 4:
            length = int.from_bytes(data[pos : pos + 4], "big")
            if not 1 <= length <= MAX_RECORD:
                raise ValueError(f"a record of {length} bytes")
            end = pos + 4 + length
            if end > size:
                self.needed = 4 + length
                break
            records.append((data[pos + 4], data[pos + 5 : end]))
            pos = end
        if pos < size:
            self.rest = data[pos:]
            self.have = size - pos
        return records


def bind_unix(path: str) -> socket.socket:
    """A listening Unix stream socket at `path`, replacing a stale one (left by a sequencer
    that was killed); raises OSError when the path is in use by a live one or is not a socket."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)  # (a live one too busy to accept still counts as live)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # nobody listens there any more
            else:
                raise OSError(errno.EADDRINUSE, f"a sequencer already listens at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class LocalPeer(asyncio.Protocol):
    """A Tidings process connected to the sequencer's Unix socket: its requests are answered,
    and the messages of the channels it subscribed to are sent to it, all batched per loop turn."""

    def __init__(self, sequencer: Sequencer) -> None:
        self.sequencer = sequencer
        self.loop = asyncio.get_running_loop()
        self.reader = RecordReader()
        self.channels: set[bytes] = set()
        self.out: list[bytes] = []  # headers and frames to write at the end of this turn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)
        transport.set_write_buffer_limits(high=PEER_BUFFER)
        self.sequencer.peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.sequencer.peers.discard(self)
        for channel in self.channels:
            self.sequencer._tell_publishers(b"\x00" + channel)

    def pause_writing(self) -> None:
        # Dropping what it cannot take would leave its channels short until their next message;
        # a process connecting again reads what it missed from the history, channel by channel.
        log.warning("a local process left over %d MiB unread: disconnected", PEER_BUFFER >> 20)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except ValueError as exc:
            log.warning("a local process sent a malformed stream (%s): disconnected", exc)
            assert self.transport is not None
            self.transport.abort()
            return
        sequencer, now = self.sequencer, wall_clock_ms()
        for kind, frame in records:
            if kind == REQUEST_KIND:
                reply = sequencer._reply(frame, now)
                if reply is not None:
                    if len(reply) >= MAX_RECORD:  # (a history beyond what a record may hold)
                        ref = reply[: reply.find(SEP)]
                        reply = pack(ref, b"err", b"too_large", b"an answer too large for the Unix socket")
                    self.send(ANSWER, record_header(ANSWER, reply), reply)
            elif kind == SUBSCRIBE_KIND and frame not in self.channels:
                self.channels.add(frame)
                sequencer._tell_publishers(b"\x01" + frame)
            elif kind == UNSUBSCRIBE_KIND and frame in self.channels:
                self.channels.discard(frame)
                sequencer._tell_publishers(b"\x00" + frame)

    def deliver(self, channel: bytes, header: bytes, frame: bytes) -> None:
        """A frame of the fan-out (`channel`: its first field; CONTROL goes to every process)."""
        if channel in self.channels or channel == CONTROL:
            self.send(MESSAGE, header, frame)

    def send(self, kind: bytes, header: bytes, frame: bytes) -> None:
        """Write `frame` (after `header`, its `record_header`) at the end of this loop turn."""
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out += (header, frame)

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None:
            self.transport.write(b"".join(out))


REQUEST_KIND, SUBSCRIBE_KIND, UNSUBSCRIBE_KIND = REQUEST[0], SUBSCRIBE[0], UNSUBSCRIBE[0]


class Sequencer:
    def __init__(self, hub: Hub, requests: str, backend: str, frontend: str, local: str | None = None) -> None:
        self.hub = hub
        self.epoch = str(hub.floor).encode()
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.xpub = self.context.socket(zmq.XPUB)
        self.xsub = self.context.socket(zmq.XSUB)
        for sock in (self.router, self.xpub, self.xsub):
            set_socket_options(sock)
        self.inboxes: list[Inbox] = []
        self.endpoints = (requests, backend, frontend)
        self.local = local  # the Unix socket's path, for processes on this machine
        self.local_socket: socket.socket | None = None
        self.local_inode = 0  # (whose file `close` removes: not one a successor bound since)
        self.local_server: asyncio.Server | None = None
        self.peers: set[LocalPeer] = set()
        # Per process: its subscriber counts by channel, and when it last reported them.
        self.counts: dict[bytes, tuple[float, dict[str, int]]] = {}
        # Per process: who its subscribers are, by channel (`Presence.report`), and since when.
        self.presence: dict[bytes, tuple[float, dict[str, Any]]] = {}
        # Per external publisher and channel: its last sequence number.
        self.seen: dict[tuple[bytes, str], int] = {}
        self.published = 0
        # What the processes on ZeroMQ subscribed to (from the XPUB's events): a frame for no one
        # there is not sent (a send and a look at the socket per frame, ~1.5 us, measured); a
        # subscription to anything but a whole channel (a tool listening with a prefix) gets all.
        self.zmq_channels: set[bytes] = set()
        self.zmq_prefixes: set[bytes] = set()

    def bind(self) -> None:
        """Bind every socket; raises zmq.ZMQError or OSError (e.g. the address is in use)."""
        requests, backend, frontend = self.endpoints
        self.router.bind(requests)
        self.xpub.bind(backend)
        self.xsub.bind(frontend)
        self.xsub.send(b"\x01")  # every channel, from every publisher
        if self.local is not None:
            self.local_socket = bind_unix(self.local)
            self.local_inode = os.stat(self.local).st_ino

    async def run(self) -> None:
        """Serve until cancelled."""
        loop = asyncio.get_running_loop()
        self.requests_in = Inbox(loop, self.router, self._requests, multipart=True)
        self.subscriptions_in = Inbox(loop, self.xpub, self._subscription)
        self.frontend_in = Inbox(loop, self.xsub, self._from_frontend, multipart=True)
        self.inboxes = [self.requests_in, self.subscriptions_in, self.frontend_in]
        if self.local_socket is not None:
            self.local_server = await loop.create_unix_server(lambda: LocalPeer(self), sock=self.local_socket)
        while True:
            self._send(pack(CONTROL, self.epoch, WIRE_VERSION))
            self.hub.sweep(wall_clock_ms())
            self._forget_silent()
            await asyncio.sleep(HEARTBEAT)

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.close()
        if self.local_server is not None:
            self.local_server.close()
        elif self.local_socket is not None:
            self.local_socket.close()
        for peer in list(self.peers):
            if peer.transport is not None:
                peer.transport.abort()
        if self.local_socket is not None:
            with contextlib.suppress(OSError):
                if os.stat(cast(str, self.local)).st_ino == self.local_inode:  # (not a successor's)
                    os.unlink(cast(str, self.local))
        for sock in (self.router, self.xpub, self.xsub):
            sock.close(0)
        self.context.term()

    # -- fan-out

    def _send(self, frame: bytes) -> None:
        """Fan a frame out to the processes subscribed to its channel (its first field), on
        ZeroMQ and on the Unix socket; heartbeats (channel CONTROL) to every one."""
        channel = frame[: frame.find(SEP)]
        if channel in self.zmq_channels or self.zmq_prefixes or channel == CONTROL:
            with contextlib.suppress(zmq.Again):  # an XPUB drops for a peer over its high-water mark
                self.xpub.send(frame, NOBLOCK)
            if self.inboxes:
                self.subscriptions_in.sent()
        if self.peers:
            header = record_header(MESSAGE, frame)
            for peer in self.peers:
                peer.deliver(channel, header, frame)

    def _subscription(self, event: bytes) -> None:
        """Note a (un)subscription of a process on ZeroMQ (``channel NUL``; the XPUB tells the
        first and the last of each), and pass it on to the publishers at the frontend, who know
        channels by name alone (their first frame)."""
        kind, topic = event[:1], event[1:]
        if kind not in (b"\x00", b"\x01") or topic == CONTROL + SEP:
            return  # (not a subscription: XSUB peers may send anything)
        whole = topic.endswith(SEP) and topic.find(SEP) == len(topic) - 1  # ``channel NUL``; else a prefix
        channels, name = (self.zmq_channels, topic[:-1]) if whole else (self.zmq_prefixes, topic)
        if kind == b"\x01":
            channels.add(name)
        else:
            channels.discard(name)
        if whole:
            self._tell_publishers(event[:-1])

    def _tell_publishers(self, event: bytes) -> None:
        """Pass a (un)subscription (``\\x01channel`` or ``\\x00channel``) to the frontend."""
        with contextlib.suppress(zmq.ZMQError):  # (Again; or closed, a peer leaving at the end)
            self.xsub.send(event, NOBLOCK)
        if self.inboxes:
            self.frontend_in.sent()

    # -- publishing

    def publish(self, channel: str, data: bytes, lost: int = 0) -> bytes:
        """Number, keep and fan out one message (`data`: its JSON, checked); its id, encoded.
        Raises OverCapacity."""
        now = wall_clock_ms()
        previous = self.hub.last_id(channel)
        message = self.hub.make_message(channel, data, now)
        if lost:
            message.after_loss = True
        self.hub.ingest(message, now)
        self.published += 1
        ident = str(message.id).encode()
        self._send(pack(channel.encode(), b"m", ident, str(previous).encode(), b"%d" % lost, data))
        return ident

    def _from_frontend(self, frames: list[bytes]) -> None:
        try:
            self._external(frames)
        except OverCapacity as exc:
            log.warning("a message from a ZeroMQ publisher was not kept: %s", exc.detail)
        except Exception:
            log.exception("a message from a ZeroMQ publisher could not be handled")

    def _external(self, frames: list[bytes]) -> None:
        if len(frames) not in (2, 3):
            log.debug("ignoring a %d-frame message (expected channel, payload[, publisher seq])", len(frames))
            return
        try:
            channel = validate_channel(frames[0].decode())
        except (UnicodeDecodeError, InvalidChannel):
            return
        lost = 0
        if len(frames) == 3:
            publisher, _, seq_text = frames[2].partition(b" ")
            if not seq_text.isdigit():
                log.debug("ignoring a message on %s with a malformed sequence frame", channel)
                return
            seq, key = int(seq_text), (publisher, channel)
            last = self.seen.get(key)
            if last is not None and seq <= last:
                return  # a repeat
            if last is not None and seq > last + 1:
                lost = seq - last - 1
                log.warning("the bus dropped %d message(s) from %s on %s", lost, publisher.decode(), channel)
            self.seen[key] = seq
            try:
                data = encode_json(decode_json(frames[1].decode()))  # (compact: SSE and NDJSON frame by lines)
            except ValueError:
                log.debug("ignoring a message on %s whose payload is not JSON", channel)
                return
        else:
            data = encode_json(foreign_data(frames[1]))
        self.publish(channel, data, lost)

    # -- requests

    def _requests(self, frames: list[bytes]) -> None:
        """A process's requests of one loop turn (one frame each), answered in one message."""
        peer, replies = frames[0], []
        now = wall_clock_ms()
        for frame in frames[1:]:
            reply = self._reply(frame, now)
            if reply is not None:
                replies.append(reply)
        if replies:
            with contextlib.suppress(zmq.Again):  # (a ROUTER drops instead, but to be sure)
                send_frames(self.router, [peer, *replies])
            self.requests_in.sent()

    def _reply(self, frame: bytes, now: int) -> bytes | None:
        try:
            op, ref, deadline, args = unpack(frame, 4)
        except ValueError:
            return None
        if not deadline.isdigit() or now > int(deadline):
            return None  # the asker has answered its client already (a timeout)
        try:
            return pack(ref, b"ok", *self.answer(op, args))
        except TidingsError as exc:
            return pack(ref, b"err", exc.code.encode(), exc.detail.encode())
        except ValueError as exc:  # (a malformed request: nothing of ours sends one)
            return pack(ref, b"err", b"invalid_request", str(exc).encode())
        except Exception:
            log.exception("a request (%r) failed", op)
            return pack(ref, b"err", b"internal_error", b"the sequencer failed")

    def answer(self, op: bytes, args: bytes) -> list[bytes]:
        """The results of one request (see the module's docstring). Raises TidingsError for a
        refusal, ValueError for a malformed request."""
        if op == b"pub":
            name, node, own, data = unpack(args, 4)
            channel = _channel(name)
            ident = self.publish(channel, checked_json(data))
            return [ident, b"%d" % self._subscribers(channel, node, int(own))]
        if op == b"hist":
            name, after = unpack(args, 2)
            channel = _channel(name)
            messages, complete_after = self.hub.history(channel, parse_id(after), wall_clock_ms())
            return [str(complete_after).encode(), *(m.json for m in messages)]
        if op == b"info":
            name, node, own = unpack(args, 3)
            channel = _channel(name)
            info = self.hub.info(channel, wall_clock_ms())
            subscribers = self._subscribers(channel, node, int(own))
            return [b"%d" % subscribers, b"%d" % info.buffered, str(info.last_id).encode()]
        if op == b"del":
            name, node, own = unpack(args, 3)
            channel = _channel(name)
            existed = self.hub.delete(channel) is not None
            self._send(pack(name, b"deleted"))
            return [b"1" if existed else b"0", b"%d" % self._subscribers(channel, node, int(own))]
        if op == b"probe":
            name, token = unpack(args, 2)
            channel = _channel(name)
            self._send(pack(name, b"probe", token, str(self.hub.last_id(channel)).encode()))
            return []
        if op == b"report":  # a process's subscriber counts
            node, report = unpack(args, 2)
            self.counts[node] = (time.monotonic(), _json_object(report))
            return []
        if op == b"here":  # changes to a process's presence (whole: replacing what it said before)
            node, whole, report = unpack(args, 3)
            changes = _json_object(report)
            known = self.presence.get(node)
            if whole != b"1" and known is None:
                return [b"0"]  # (forgotten, or never told: it says it all next time)
            held = {} if whole == b"1" or known is None else known[1]
            for channel, entry in changes.items():
                if entry is None:
                    held.pop(channel, None)
                else:
                    held[channel] = entry
            self.presence[node] = (time.monotonic(), held)
            return [b"1"]
        if op == b"who":
            node, names = unpack(args, 2)
            wanted = json.loads(names)
            if not isinstance(wanted, list):
                raise ValueError("who asks about a list of channels")
            views = {
                name: [held[name] for other, (_, held) in self.presence.items() if other != node and name in held]
                for name in wanted
                if isinstance(name, str)
            }
            return [encode_json(views)]
        raise ValueError(f"unknown request {op[:20]!r}")

    def _subscribers(self, channel: str, node: bytes, own: int) -> int:
        """Subscribers over every process: the asking one's count as it says, the others' as
        they last reported (within NODE_TTL; see `_forget_silent`)."""
        return own + sum(counts.get(channel, 0) for name, (_, counts) in self.counts.items() if name != node)

    def _forget_silent(self) -> None:
        """Drop the counts and presence of processes that have not reported within NODE_TTL (done with each
        heartbeat rather than per request: a look at every process per publish cost ~1 us)."""
        now = time.monotonic()
        for reports in (self.counts, self.presence):
            for gone in [name for name, (at, _) in reports.items() if now - at > NODE_TTL]:
                del reports[gone]

    def stats(self) -> dict[str, JSONValue]:
        return {"published": self.published, "channels": len(self.hub.channels), "processes": len(self.counts)}


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("a report is a JSON object")
    return value


def _channel(raw: bytes) -> str:
    try:
        return validate_channel(raw.decode())
    except UnicodeDecodeError:
        raise InvalidChannel("a channel name is UTF-8") from None
