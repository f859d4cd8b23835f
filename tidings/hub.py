"""The pure core: channels, message ids, ring buffers, cursors and waiter bookkeeping.

Nothing here touches sockets, HTTP, an event loop or a broker. Transports register
subscribers (objects with two callbacks); brokers feed messages in with `ingest`.
Time is passed in explicitly (milliseconds) so that tests can drive it by hand.

Message ids have the form ``<ms>-<seq>`` (the same form Redis Streams use): the
server time in milliseconds and a counter within that millisecond. They strictly
increase per channel, across channel reclamation and across restarts of a process
(as long as the clock does not jump back further than the last id issued).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

JSONValue = Any
"""A value that `json.dumps` accepts."""

CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_CHANNELS_PER_REQUEST: Final = 32
DEFAULT_BATCH: Final = 100
TOMBSTONE_LIMIT: Final = 100_000


class TidingsError(ValueError):
    """Bad input from a client; `code` names the problem, the message explains it."""

    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidChannel(TidingsError):
    code = "invalid_channel"


class InvalidCursor(TidingsError):
    code = "invalid_cursor"


def validate_channel(name: str) -> str:
    if CHANNEL_NAME.fullmatch(name) is None:
        raise InvalidChannel(f"channel names are 1-128 characters of A-Za-z0-9_.:- (got {name[:140]!r})")
    return name


@functools.lru_cache(maxsize=4096)
def parse_channels(spec: str) -> tuple[str, ...]:
    """`a,b,c` → ("a", "b", "c"): validated, duplicates dropped, order kept. Cached: the
    same few specs arrive on every poll."""
    names = tuple(dict.fromkeys(spec.split(",")))
    if len(names) > MAX_CHANNELS_PER_REQUEST:
        raise InvalidChannel(f"at most {MAX_CHANNELS_PER_REQUEST} channels per request (got {len(names)})")
    for name in names:
        validate_channel(name)
    return names


class MessageId(NamedTuple):
    """Ordered as (ms, seq): tuple comparison, which is what cursors and rings compare."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    def next(self, now_ms: int) -> MessageId:
        """The smallest id after this one at time `now_ms` (never goes backwards)."""
        if now_ms > self.ms:
            return MessageId(now_ms, 0)
        return MessageId(self.ms, self.seq + 1)

    @classmethod
    def parse(cls, text: str) -> MessageId:
        ms, sep, seq = text.partition("-")
        if not sep or not ms.isdigit() or not seq.isdigit() or len(text) > 40:
            raise InvalidCursor(f"not a message id: {text[:60]!r}")
        return cls(int(ms), int(seq))


ZERO_ID: Final = MessageId(0, 0)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_json(value: JSONValue) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class Message:
    """One published message. Its JSON form is encoded once and shared by every subscriber;
    transports cache their own framings of it in `framed`. `channel` must already be a
    valid channel name (see `validate_channel`). Only the JSON is kept, not `data` as
    published: a parsed body can take twenty times its JSON's size (`[[],[],...]`).

    A `live` message (one published on the bus without going through a broker's history,
    e.g. a plain Redis PUBLISH) is delivered to current subscribers only: it is not
    buffered, has no id of its own (`"id": null`) and carries the channel's last id as
    `id`, so that cursors neither move nor break because of it."""

    __slots__ = ("after_loss", "channel", "framed", "id", "json", "live", "time")

    def __init__(
        self, id: MessageId, channel: str, data: JSONValue, time: int, live: bool = False, after_loss: bool = False
    ) -> None:
        self.id = id
        self.channel = channel
        self.time = time
        self.live = live
        # The bus lost messages just before this one (see `Hub.ingest`).
        self.after_loss = after_loss
        # Only `data` needs a JSON encoder: channel names are validated characters, ids digits.
        self.json = b'{"id":%s,"channel":"%s","data":%s,"time":%d}' % (
            b"null" if live else b'"%s"' % str(id).encode(),
            channel.encode(),
            encode_json(data),
            time,
        )
        self.framed: dict[str, bytes] = {}

    @property
    def data(self) -> JSONValue:
        """What was published (decoded from the JSON again: only the HTML stream needs it)."""
        return json.loads(self.json)["data"]

    def frame(self, key: str, build: Callable[[Message], bytes]) -> bytes:
        """A transport's encoding of this message, built on first use."""
        encoded = self.framed.get(key)
        if encoded is None:
            encoded = self.framed[key] = build(self)
        return encoded

    def __repr__(self) -> str:
        return f"Message({self.id}, {self.channel!r}, {self.data!r})"


OLDEST: Final = "oldest"


class Cursor:
    """Where a client left off. Token forms (opaque to clients):

    - ``<ms>-<seq>``: one position that applies to every requested channel (ids are
      time-ordered, so this is meaningful across channels too);
    - ``<channel>:<ms>-<seq>,<channel>:<ms>-<seq>``: a position per channel, as the
      server returns for multi-channel requests;
    - ``oldest``: everything still buffered.
    """

    __slots__ = ("default", "oldest", "positions")

    def __init__(
        self, default: MessageId | None = None, positions: dict[str, MessageId] | None = None, oldest: bool = False
    ) -> None:
        self.default = default
        self.positions = positions or {}
        self.oldest = oldest

    @staticmethod
    def parse(token: str | None) -> Cursor:
        """The cursor a token stands for. Cursors are shared (see `_parse_cursor`): never mutate one."""
        if token is None or token == "":
            return NOW
        if len(token) > _CACHED_TOKEN_CHARS:
            return _parse_cursor.__wrapped__(token)
        return _parse_cursor(token)

    def position(self, channel: str) -> MessageId | None:
        """None means "from now on"."""
        if self.oldest:
            return ZERO_ID
        return self.positions.get(channel, self.default)


NOW: Final = Cursor()
_CACHED_TOKEN_CHARS: Final = 256  # longer tokens are parsed each time (the cache stays small)


@functools.lru_cache(maxsize=4096)
def _parse_cursor(token: str) -> Cursor:
    # After a fan-out every subscriber polls again with the same token: parse it once.
    if token == OLDEST:
        return Cursor(oldest=True)
    if ":" not in token:
        return Cursor(MessageId.parse(token))
    positions: dict[str, MessageId] = {}
    for part in token.split(","):
        name, sep, pos = part.rpartition(":")
        if not sep or CHANNEL_NAME.fullmatch(name) is None:
            raise InvalidCursor(f"not a cursor: {token[:60]!r}")
        positions[name] = MessageId.parse(pos)
    if len(positions) > MAX_CHANNELS_PER_REQUEST:
        raise InvalidCursor("cursor names too many channels")
    return Cursor(positions=positions)


def cursor_token(channels: Sequence[str], positions: dict[str, MessageId]) -> str:
    if len(channels) == 1:
        return str(positions[channels[0]])
    return ",".join(f"{name}:{positions[name]}" for name in channels)


class Waiter(Protocol):
    """A one-shot subscriber (a held long-poll): woken by the first message on any of its
    channels, after which the hub has already removed it from that channel — unless `wake`
    returns False (a message it has already seen, see `Hub.follows_bus`): it then stays."""

    def wake(self, message: Message) -> bool: ...

    def channel_closed(self, channel: str) -> None: ...


class StreamSubscriber(Protocol):
    """A subscriber that stays: receives every message until it leaves."""

    def deliver(self, message: Message) -> None: ...

    def channel_closed(self, channel: str) -> None: ...


class Channel:
    """One channel's buffer and subscribers. The ring and the stream set are created on
    first use: an idle channel with one long-poll waiter then costs ~0.5 KB, not ~1.5 KB."""

    __slots__ = ("horizon", "last_id", "name", "ring", "streams", "waiters")

    def __init__(self, name: str, known_from: MessageId) -> None:
        self.name = name
        self.ring: deque[Message] | None = None
        self.last_id = known_from  # the newest id issued on this channel
        # Every message with an id above the horizon is still in the ring.
        self.horizon = known_from
        self.waiters: set[Waiter] = set()
        self.streams: set[StreamSubscriber] | None = None

    @property
    def subscribers(self) -> int:
        return len(self.waiters) + (len(self.streams) if self.streams else 0)

    @property
    def buffered(self) -> int:
        return len(self.ring) if self.ring else 0

    def vouch_from(self, ident: MessageId) -> None:
        """Nothing up to `ident` can be vouched for: drop the buffer, so every older cursor is a gap."""
        if self.ring:
            self.ring.clear()
        self.horizon = ident

    def expire(self, now_ms: int, ttl_ms: int) -> None:
        ring = self.ring
        if not ring:
            return
        cutoff = now_ms - ttl_ms
        while ring and ring[0].time < cutoff:
            self.horizon = ring.popleft().id

    def append(self, message: Message, size: int) -> None:
        ring = self.ring
        if ring is None:
            ring = self.ring = deque()
        ring.append(message)
        self.last_id = message.id
        while len(ring) > size:
            self.horizon = ring.popleft().id

    def after(self, position: MessageId) -> list[Message]:
        """Buffered messages with an id above `position`, oldest first."""
        ring = self.ring
        if not ring or ring[-1].id <= position:
            return []
        newer: list[Message] = []
        for message in reversed(ring):
            if message.id <= position:
                break
            newer.append(message)
        newer.reverse()
        return newer


@dataclass(slots=True)
class Batch:
    """The answer to a read: messages after the cursor, the cursor to send next, the
    channels on which messages after the cursor are no longer buffered (`gaps`), and the
    channels on which this hub's buffer does not reach back to the cursor (`incomplete`:
    the gaps, and `oldest` reads of channels buffered here only since some point) — a
    broker with history of its own can fill those in (see `backfill`)."""

    messages: list[Message]
    positions: dict[str, MessageId]
    gaps: list[str]
    more: bool = False
    incomplete: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    channel: str
    subscribers: int
    buffered: int
    last_id: MessageId


class Hub:
    """`follows_bus`: this hub is fed by a bus it shares with other processes, so a client
    may hold a cursor ahead of this hub's last id (it saw a message elsewhere that has not
    arrived here yet). Reads then continue from such a cursor, and subscribers decline the
    messages up to it when they arrive. Without a bus, a cursor ahead is a clock that went
    back across a restart, and reads continue from the hub's last id instead."""

    def __init__(
        self, *, buffer_size: int = 100, buffer_ttl: float = 3600.0, now_ms: int, follows_bus: bool = False
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if buffer_ttl <= 0:
            raise ValueError("buffer_ttl must be positive")
        self.buffer_size = buffer_size
        self.ttl_ms = int(buffer_ttl * 1000)
        self.follows_bus = follows_bus
        self.channels: dict[str, Channel] = {}
        self.messages_ingested = 0  # for metrics: messages taken in, and deliveries made of them
        self.deliveries = 0
        # What this hub knows nothing before: its start. A cursor older than that on a
        # channel this hub never saw may have missed messages (e.g. across a restart).
        self.floor = MessageId(now_ms, 0)
        # Reclaimed channels that had messages: their last id, so that ids continue
        # above it and a cursor at it is known to have missed nothing.
        self.tombstones: dict[str, MessageId] = {}

    # -- channels

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel(name, self.tombstones.pop(name, self.floor))
        return ch

    def _reclaim(self, ch: Channel) -> None:
        del self.channels[ch.name]
        if ch.last_id > self.floor:
            self.tombstones[ch.name] = ch.last_id
            if len(self.tombstones) > TOMBSTONE_LIMIT:
                # Forget the oldest; raising the floor keeps cursors honest (a gap at worst).
                oldest = next(iter(self.tombstones))
                self.floor = max(self.floor, self.tombstones.pop(oldest))

    def info(self, name: str, now_ms: int) -> ChannelInfo:
        ch = self.channels.get(name)
        if ch is None:
            last = self.tombstones.get(name, self.floor)
            return ChannelInfo(name, 0, 0, last)
        ch.expire(now_ms, self.ttl_ms)
        return ChannelInfo(name, ch.subscribers, ch.buffered, ch.last_id)

    # -- publishing

    def make_message(self, name: str, data: JSONValue, now_ms: int) -> Message:
        """A new message with the next id of channel `name` (for brokers that let the hub
        assign ids). It is not stored or delivered until `ingest`."""
        ch = self.channel(name)
        return Message(ch.last_id.next(now_ms), name, data, now_ms)

    def ingest(self, message: Message, now_ms: int) -> int:
        """Store `message` and hand it to every subscriber of its channel. Returns how many
        subscribers it reached. A message not newer than the channel's last id is dropped."""
        ch = self.channel(message.channel)
        if message.live:
            message.id = ch.last_id
        elif message.id <= ch.last_id:
            return 0
        else:
            ch.expire(now_ms, self.ttl_ms)
            if message.after_loss:
                ch.vouch_from(message.id)  # the bus lost what came before it
            ch.append(message, self.buffer_size)
        reached = 0
        waiters = ch.waiters
        if waiters:
            ch.waiters = set()
            reached = len(waiters)
            for waiter in waiters:
                if not waiter.wake(message):
                    ch.waiters.add(waiter)
                    reached -= 1
        streams = ch.streams
        if streams:
            reached += len(streams)
            for stream in streams:
                stream.deliver(message)
        self.messages_ingested += 1
        self.deliveries += reached
        return reached

    def delete(self, name: str) -> int | None:
        """Drop a channel and its buffer; tell every subscriber. None if it did not exist."""
        ch = self.channels.pop(name, None)
        if ch is None:
            return None
        if ch.last_id > self.floor:
            self.tombstones[name] = ch.last_id
        reached = ch.subscribers
        waiters, streams = ch.waiters, ch.streams or set()
        ch.waiters, ch.streams = set(), None
        for waiter in waiters:
            waiter.channel_closed(name)
        for stream in streams:
            stream.channel_closed(name)
        return reached

    def backfill(self, name: str, history: Sequence[Message], complete_after: MessageId, now_ms: int) -> None:
        """Merge a broker's history of channel `name`: `history` holds, oldest first, every
        message the broker has with an id above `complete_after`. Messages newer than the
        channel's last id are ingested (delivered to subscribers as usual); older ones this
        hub lacks go back into the buffer, so that reads reach back to `complete_after`."""
        ch = self.channel(name)
        if complete_after < ch.horizon:
            older = [m for m in history if complete_after < m.id <= ch.horizon]
            ring = ch.ring
            if ring is None:
                ring = ch.ring = deque()
            ring.extendleft(reversed(older))
            ch.horizon = complete_after
            while len(ring) > self.buffer_size:
                ch.horizon = ring.popleft().id
        for message in history:
            if message.id > ch.last_id:
                self.ingest(message, now_ms)
        ch.expire(now_ms, self.ttl_ms)

    def known_from(self, name: str, ident: MessageId) -> None:
        """This hub receives every message of channel `name` after `ident` from now on, and
        cannot vouch for anything before (e.g. the bus subscription for it just began):
        cursors older than `ident` are gaps."""
        ch = self.channel(name)
        if ident > ch.horizon:
            ch.vouch_from(ident)
            ch.last_id = max(ch.last_id, ident)

    def rebase(self, floor: MessageId) -> None:
        """This hub receives every message with an id from `floor` on (a bus subscription
        began then, in the bus's clock, which may be behind this process's): channels it
        has not seen start there."""
        self.floor = floor

    # -- reading

    def read(
        self,
        names: Sequence[str],
        cursor: Cursor,
        now_ms: int,
        limit: int | None = DEFAULT_BATCH,
    ) -> Batch:
        """Messages after `cursor` on `names`, oldest first (at most `limit`), and the cursor
        that continues from exactly there. Never creates channels."""
        positions: dict[str, MessageId] = {}
        incomplete: list[str] = []
        pending: list[Message] = []
        for name in names:
            ch = self.channels.get(name)
            start = cursor.position(name)
            if ch is None:
                last = self.tombstones.get(name, self.floor)
                if start is not None and start < last:
                    incomplete.append(name)
                positions[name] = start if self.follows_bus and start is not None and start > last else last
                continue
            ch.expire(now_ms, self.ttl_ms)
            if start is None:
                positions[name] = ch.last_id
                continue
            if start < ch.horizon:
                incomplete.append(name)
            newer = ch.after(start)
            pending.extend(newer)
            # With nothing pending, continue from the channel's newest id — or from a cursor
            # ahead of it when following a bus (see the class's note).
            positions[name] = start if newer or (self.follows_bus and start > ch.last_id) else ch.last_id
        more = False
        if len(names) > 1:
            pending.sort(key=_message_order)
        if limit is not None and len(pending) > limit:
            more = True
            del pending[limit:]
        for message in pending:
            positions[message.channel] = message.id
        # `oldest` asks for whatever is buffered: nothing counts as missed.
        gaps = [] if cursor.oldest else incomplete
        return Batch(pending, positions, gaps, more, incomplete)

    def wait(self, names: Iterable[str], waiter: Waiter) -> None:
        for name in names:
            self.channel(name).waiters.add(waiter)

    def unwait(self, names: Iterable[str], waiter: Waiter) -> None:
        for name in names:
            ch = self.channels.get(name)
            if ch is not None:
                ch.waiters.discard(waiter)

    def join(self, names: Iterable[str], stream: StreamSubscriber) -> None:
        for name in names:
            ch = self.channel(name)
            if ch.streams is None:
                ch.streams = set()
            ch.streams.add(stream)

    def leave(self, names: Iterable[str], stream: StreamSubscriber) -> None:
        for name in names:
            ch = self.channels.get(name)
            if ch is not None and ch.streams is not None:
                ch.streams.discard(stream)

    # -- housekeeping

    def sweep(self, now_ms: int) -> int:
        """Expire old messages and reclaim channels left with no messages and no
        subscribers. Returns how many channels were reclaimed."""
        idle = []
        ttl_ms = self.ttl_ms
        for ch in self.channels.values():
            ch.expire(now_ms, ttl_ms)
            if not ch.ring and not ch.waiters and not ch.streams:
                idle.append(ch)
        for ch in idle:
            self._reclaim(ch)
        return len(idle)


def _message_order(message: Message) -> MessageId:
    return message.id
