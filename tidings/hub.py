"""The pure core: channels, message ids, ring buffers, cursors and waiter bookkeeping.

Nothing here touches sockets, HTTP, an event loop or a broker. Transports register
subscribers (objects with two callbacks); a publish made in this process comes in through
`publish`, messages from a bus through `ingest`.
Time is passed in explicitly (milliseconds) so that tests can drive it by hand.

Message ids have the form ``<ms>-<seq>`` (the same form Redis Streams use): the
server time in milliseconds and a counter within that millisecond. They strictly
increase per channel, across channel reclamation and across restarts of a process
(as long as the clock does not jump back further than the last id issued).
"""

from __future__ import annotations

import functools
import heapq
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from tidings.encoding import encode_json
from tidings.errors import BuffersFull, InvalidChannel, InvalidCursor, TooManyChannels
from tidings.presence import Presence

JSONValue = Any
"""A value that `json.dumps` accepts."""

CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_CHANNELS_PER_REQUEST: Final = 32
DEFAULT_BATCH: Final = 100
TOMBSTONE_LIMIT: Final = 100_000
# What a buffered message holds besides the bytes of its JSON and framings: the object, its id,
# its framing cache and its place in the ring, and per framing (measured with tracemalloc,
# within 10%; see `Message.cost`).
MESSAGE_OVERHEAD: Final = 400
FRAMING_OVERHEAD: Final = 64


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


class Message:
    """One published message. Its JSON form is encoded once and shared by every subscriber;
    transports cache their own framings of it in `framed`. `channel` must already be a
    valid channel name (see `validate_channel`). Only the JSON is kept, not `data` as
    published: a parsed body can take twenty times its JSON's size (`[[],[],...]`).

    A `live` message (one published on the bus without going through a broker's history,
    e.g. a plain Redis PUBLISH) is delivered to current subscribers only: it is not
    buffered, has no id of its own (`"id": null`) and carries the channel's last id as
    `id`, so that cursors neither move nor break because of it."""

    __slots__ = ("after_loss", "channel", "cost", "framed", "id", "json", "live", "tally", "time")

    def __init__(
        self, id: MessageId, channel: str, data_json: bytes, time: int, live: bool = False, after_loss: bool = False
    ) -> None:
        """`data_json`: the data as compact JSON already (`encode_json`'s, or checked to be like
        it: `sequencer.checked_json`): what arrives from a bus is not decoded and encoded again."""
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
            data_json,
            time,
        )
        self.framed: dict[str, bytes] = {}
        # The bytes this message holds (its framings included as they are built), and, while
        # it is buffered, the total of its hub's buffers, which they count towards.
        self.cost = MESSAGE_OVERHEAD + len(self.json)
        self.tally: Tally | None = None

    @classmethod
    def from_data(
        cls, id: MessageId, channel: str, data: JSONValue, time: int, live: bool = False, after_loss: bool = False
    ) -> Message:
        """A message of data not yet encoded."""
        return cls(id, channel, encode_json(data), time, live, after_loss)

    @property
    def data(self) -> JSONValue:
        """What was published (decoded from the JSON again: only the HTML stream needs it)."""
        return json.loads(self.json)["data"]

    def frame(self, key: str, build: Callable[[Message], bytes]) -> bytes:
        """A transport's encoding of this message, built on first use."""
        encoded = self.framed.get(key)
        if encoded is None:
            encoded = self.framed[key] = build(self)
            cost = FRAMING_OVERHEAD + len(encoded)
            self.cost += cost
            if self.tally is not None:
                self.tally.bytes += cost
        return encoded

    def __repr__(self) -> str:
        return f"Message({self.id}, {self.channel!r}, {self.data!r})"


class Tally:
    """The bytes held by every buffered message of one hub (see `Message.cost`), kept up to
    date wherever a buffer changes, so that reading it (a publish, /metrics) costs nothing."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


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


def already_seen(message: Message, positions: Mapping[str, MessageId]) -> bool:
    """Whether a subscriber whose cursor stands at `positions` has `message` already: it was
    sent to it, or the client's cursor was ahead of this process (see `Hub.follows_bus`). A
    live message has no id of its own and is never seen before."""
    return not message.live and message.id <= positions.get(message.channel, ZERO_ID)


class Waiter(Protocol):
    """A one-shot subscriber (a held long-poll): woken by the first message on any of its
    channels, after which the hub has already removed it from that channel — unless `wake`
    returns False (a message it has already seen, see `already_seen`): it then stays."""

    def wake(self, message: Message) -> bool: ...

    def channel_closed(self, channel: str) -> None: ...


class StreamSubscriber(Protocol):
    """A subscriber that stays: receives every message until it leaves."""

    def deliver(self, message: Message) -> None: ...

    def channel_closed(self, channel: str) -> None: ...


class Channel:
    """One channel's buffer and subscribers. The ring and the stream set are created on
    first use: an idle channel with one long-poll waiter then costs ~0.5 KB, not ~1.5 KB.
    Every message in the ring counts towards `tally` (its hub's total)."""

    __slots__ = ("expires_at", "horizon", "last_id", "name", "ring", "streams", "tally", "waiters")

    def __init__(self, name: str, known_from: MessageId, tally: Tally) -> None:
        self.name = name
        self.ring: deque[Message] | None = None
        self.last_id = known_from  # the newest id issued on this channel
        # Every message with an id above the horizon is still in the ring.
        self.horizon = known_from
        self.tally = tally
        self.waiters: set[Waiter] = set()
        self.streams: set[StreamSubscriber] | None = None
        # When its oldest buffered message is due to expire, as the hub's sweep has it scheduled
        # (0: not scheduled; see `Hub.sweep`).
        self.expires_at = 0

    @property
    def subscribers(self) -> int:
        return len(self.waiters) + (len(self.streams) if self.streams else 0)

    @property
    def buffered(self) -> int:
        return len(self.ring) if self.ring else 0

    def _drop_oldest(self, ring: deque[Message]) -> None:
        message = ring.popleft()
        self.horizon = message.id
        message.tally = None
        self.tally.bytes -= message.cost

    def clear(self) -> None:
        """Drop every buffered message."""
        ring = self.ring
        if ring:
            for message in ring:
                message.tally = None
                self.tally.bytes -= message.cost
            ring.clear()

    def vouch_from(self, ident: MessageId) -> None:
        """Nothing up to `ident` can be vouched for: drop the buffer, so every older cursor is a gap."""
        self.clear()
        self.horizon = ident

    def expire(self, now_ms: int, ttl_ms: int) -> None:
        ring = self.ring
        if not ring:
            return
        cutoff = now_ms - ttl_ms
        while ring and ring[0].time < cutoff:
            self._drop_oldest(ring)

    def append(self, message: Message, size: int) -> None:
        ring = self.ring
        if ring is None:
            ring = self.ring = deque()
        ring.append(message)
        message.tally = self.tally
        self.tally.bytes += message.cost
        self.last_id = message.id
        self._trim(ring, size)

    def prepend(self, older: Sequence[Message], horizon: MessageId, size: int) -> None:
        """Put `older` (oldest first, all older than the ring) back in front of the ring: every
        message above `horizon` is then buffered, up to the newest `size`."""
        ring = self.ring
        if ring is None:
            ring = self.ring = deque()
        for message in older:
            message.tally = self.tally
            self.tally.bytes += message.cost
        ring.extendleft(reversed(older))
        self.horizon = horizon
        self._trim(ring, size)

    def _trim(self, ring: deque[Message], size: int) -> None:
        """Keep the newest `size` messages."""
        while len(ring) > size:
            self._drop_oldest(ring)

    def shed(self, limit: int) -> None:
        """Drop the oldest messages while the hub's buffers hold more than `limit` bytes."""
        ring = self.ring
        while ring and self.tally.bytes > limit:
            self._drop_oldest(ring)

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
    broker with history of its own can fill those in (see `backfill`).

    `starts` is the cursor from before the first message (the same dict as `positions` when
    there are none): streams rewind to it so that each message carries its own cursor."""

    messages: list[Message]
    positions: dict[str, MessageId]
    gaps: list[str]
    more: bool = False
    incomplete: list[str] = field(default_factory=list)
    starts: dict[str, MessageId] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Published:
    """A publish's answer: the message's id and how many subscribers it reached."""

    id: MessageId
    channel: str
    subscribers: int


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
    back across a restart, and reads continue from the hub's last id instead.

    Memory caps (0: none): at most `max_channels` channels, and buffered messages holding at
    most `max_buffered_bytes` (see `Message.cost`). A publish here that would go past either
    is refused (`make_message` raises `OverCapacity`); a message from the bus is not refused
    but kept only as far as it fits (see `ingest`). `buffers_are_cache`: the broker keeps
    every buffered message too (Redis), so over a cap the sweep drops buffers instead."""

    def __init__(
        self,
        *,
        now_ms: int,
        buffer_size: int = 100,
        buffer_ttl: float = 3600.0,
        follows_bus: bool = False,
        buffers_are_cache: bool = False,
        max_channels: int = 0,
        max_buffered_bytes: int = 0,
        presence_grace: float = 10.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if buffer_ttl <= 0:
            raise ValueError("buffer_ttl must be positive")
        if not presence_grace >= 0:  # (also NaN)
            raise ValueError("presence_grace must be 0 or more seconds")
        if max_channels < 0 or max_buffered_bytes < 0:
            raise ValueError("max_channels and max_buffered_bytes must be positive (or 0: no limit)")
        self.buffer_size = buffer_size
        self.ttl_ms = int(buffer_ttl * 1000)
        self.follows_bus = follows_bus
        self.buffers_are_cache = buffers_are_cache
        self.max_channels = max_channels
        self.max_buffered_bytes = max_buffered_bytes
        self.channels: dict[str, Channel] = {}
        self.tally = Tally()
        self.messages_ingested = 0  # for metrics: messages taken in, and deliveries made of them
        self.deliveries = 0
        # What this hub knows nothing before: its start. A cursor older than that on a
        # channel this hub never saw may have missed messages (e.g. across a restart).
        self.floor = MessageId(now_ms, 0)
        # Reclaimed channels that had messages: their last id, so that ids continue
        # above it and a cursor at it is known to have missed nothing.
        self.tombstones: dict[str, MessageId] = {}
        # What the sweep looks at, so that its work follows what expires, not what exists (a look
        # at every channel each second: 100,000 channels 16 ms, a million 16 % of a core): when
        # each buffered channel's oldest message expires (a heap; an entry whose time is not its
        # channel's `expires_at` any more is stale), and channels that may have become idle.
        self.expiries: list[tuple[int, str]] = []
        self.maybe_idle: dict[str, None] = {}
        # Who is subscribed (users, for presence): told by the transports, kept beside the channels.
        self.presence = Presence(int(presence_grace * 1000))

    @property
    def buffered_bytes(self) -> int:
        return self.tally.bytes

    # -- channels

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def channel(self, name: str) -> Channel:
        """The channel `name`, created if need be (`make_room` checks the cap first: `wait`,
        `join` and `make_message` call it)."""
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel(name, self.tombstones.pop(name, self.floor), self.tally)
            self.maybe_idle[name] = None
        return ch

    def make_room(self, names: Sequence[str]) -> None:
        """Raises TooManyChannels when holding every one of `names` would take this hub past
        `max_channels` (the channels it holds already keep working). When the buffers are a
        cache of the broker's history, cached channels nobody here subscribes to make way
        first (bus traffic would otherwise keep the cache full and refuse every newcomer)."""
        limit = self.max_channels
        if limit and len(self.channels) + len(names) > limit:  # (else there is room, whichever are new)
            new = sum(1 for name in names if name not in self.channels)
            if new and len(self.channels) + new > limit and self.buffers_are_cache:
                self._reclaim_unsubscribed(len(self.channels) + new - limit)
            if new and len(self.channels) + new > limit:
                raise TooManyChannels(f"this server holds at most {limit} channels")

    def _reclaim_unsubscribed(self, count: int) -> None:
        """Reclaim up to `count` channels that nobody here subscribes to, oldest first."""
        idle: list[Channel] = []
        for ch in self.channels.values():
            if len(idle) == count:
                break
            if not ch.subscribers:
                idle.append(ch)
        for ch in idle:
            self._reclaim(ch)

    def _remember(self, name: str, last_id: MessageId) -> None:
        """Keep a channel this hub does not hold any more (or did not take) as its last id."""
        if last_id <= self.floor:
            return
        self.tombstones.pop(name, None)
        self.tombstones[name] = last_id
        while len(self.tombstones) > TOMBSTONE_LIMIT:
            # Forget the oldest; raising the floor keeps cursors honest (a gap at worst).
            oldest = next(iter(self.tombstones))
            self.floor = max(self.floor, self.tombstones.pop(oldest))

    def _reclaim(self, ch: Channel) -> None:
        del self.channels[ch.name]
        ch.clear()
        self._remember(ch.name, ch.last_id)

    def info(self, name: str, now_ms: int) -> ChannelInfo:
        ch = self.channels.get(name)
        if ch is None:
            last = self.tombstones.get(name, self.floor)
            return ChannelInfo(name, 0, 0, last)
        ch.expire(now_ms, self.ttl_ms)
        return ChannelInfo(name, ch.subscribers, ch.buffered, ch.last_id)

    # -- publishing

    def last_id(self, name: str) -> MessageId:
        """The id of channel `name`'s last message here; for a channel this hub does not hold,
        the last id it had (or the floor): what the next message must come after."""
        ch = self.channels.get(name)
        return ch.last_id if ch is not None else self.tombstones.get(name, self.floor)

    def next_id(self, name: str, now_ms: int) -> MessageId:
        """The id the next message of channel `name` gets at `now_ms`."""
        return self.last_id(name).next(now_ms)

    def history(self, name: str, after: MessageId, now_ms: int) -> tuple[list[Message], MessageId]:
        """What a bus with history answers (the sequencer, from its hub): every message of
        channel `name` after `after` still buffered, oldest first, and the id above which that
        answer is complete (above `after` when messages were dropped; see `backfill`)."""
        ch = self.channels.get(name)
        if ch is None:
            return [], max(after, self.last_id(name))
        ch.expire(now_ms, self.ttl_ms)
        return ch.after(after), max(after, ch.horizon)

    def make_message(self, name: str, data_json: bytes, now_ms: int) -> Message:
        """A new message with the next id of channel `name`, published in this process (see
        `publish`; `data_json`: its data, encoded). It is not stored or delivered until `ingest`.
        Raises OverCapacity when storing it would take this hub past a cap."""
        ch = self.channels.get(name)
        if ch is None:
            self.make_room((name,))
        message = Message(self.next_id(name, now_ms), name, data_json, now_ms)
        limit = self.max_buffered_bytes
        if limit:
            growth = message.cost
            if ch is not None:
                ch.expire(now_ms, self.ttl_ms)
                ring = ch.ring
                if ring and len(ring) >= self.buffer_size:
                    growth -= ring[0].cost  # the oldest makes way for it
            if growth > 0 and self.tally.bytes + growth > limit and not self._fits_in_own_buffer(ch, message):
                raise BuffersFull(f"this server buffers at most {limit} bytes of messages")
        return message

    def publish(self, name: str, data: JSONValue, now_ms: int) -> Published:
        """Publish in this process: number the message here, store it and deliver it (the relay
        does this when the broker leaves numbering to each process). Raises OverCapacity."""
        message = self.make_message(name, encode_json(data), now_ms)
        return Published(message.id, name, self.ingest(message, now_ms))

    def _fits_in_own_buffer(self, ch: Channel | None, message: Message) -> bool:
        """Over the byte cap, a channel may give up its own older messages for a new one (`ingest`
        sheds them; cursors that needed them get a gap), never other channels': so a flood of new
        channels cannot silence the channels that were there, and a channel is never refused
        while its buffer alone could make the room. Scans the buffer only when at the cap."""
        own = sum(m.cost for m in ch.ring) if ch is not None and ch.ring else 0
        return self.tally.bytes - own + message.cost <= self.max_buffered_bytes

    def ingest(self, message: Message, now_ms: int) -> int:
        """Store `message` and hand it to every subscriber of its channel. Returns how many
        subscribers it reached. A message not newer than the channel's last id is dropped.

        A message from the bus is never refused (a publish here was checked by
        `make_message`): on a new channel beyond `max_channels` it is not kept (nobody here
        subscribes to it; its id is remembered, so older cursors are gaps, or are read from
        the broker's history), and where it would take the buffers past
        `max_buffered_bytes` its channel drops its oldest messages, this one last, instead."""
        name = message.channel
        ch = self.channels.get(name)
        if ch is None and (message.live or (self.max_channels and len(self.channels) >= self.max_channels)):
            if not message.live and message.id > self.tombstones.get(name, self.floor):
                self._remember(name, message.id)
            self.messages_ingested += 1
            return 0
        if ch is None:
            ch = self.channel(name)
        if message.live:
            message.id = ch.last_id
        elif message.id <= ch.last_id:
            return 0
        else:
            ch.expire(now_ms, self.ttl_ms)
            if message.after_loss:
                ch.vouch_from(message.id)  # the bus lost what came before it
            before = self.tally.bytes
            ch.append(message, self.buffer_size)
            if not ch.expires_at:
                self._schedule(ch)
            limit = self.max_buffered_bytes
            if limit and self.tally.bytes > limit and self.tally.bytes > before:
                ch.shed(max(limit, before))
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
        self.presence.forget(name)  # (its subscribers are told `closed`: nobody "leaves")
        ch.clear()
        self._remember(name, ch.last_id)
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
            # (Past `max_buffered_bytes` too: the read waiting for it is answered from the ring.)
            # (Not what the ring holds: after a loss, the horizon is the id of a buffered message.)
            oldest = ch.ring[0].id if ch.ring else None
            older = [m for m in history if complete_after < m.id <= ch.horizon and (oldest is None or m.id < oldest)]
            ch.prepend(older, complete_after, self.buffer_size)
            if ch.ring and (not ch.expires_at or ch.ring[0].time + self.ttl_ms + 1 < ch.expires_at):
                self._schedule(ch)  # (older messages expire sooner)
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
            if newer:
                # Before the first of them. For `oldest`, the start of the buffer: a position
                # of zero would read as a gap when sent back.
                positions[name] = ch.horizon if cursor.oldest else start
            else:
                # Continue from the channel's newest id — or from a cursor ahead of it when
                # following a bus (see the class's note).
                positions[name] = start if self.follows_bus and start > ch.last_id else ch.last_id
        more = False
        if len(names) > 1:
            pending.sort(key=_message_order)
        if limit is not None and len(pending) > limit:
            more = True
            del pending[limit:]
        starts = positions
        if pending:
            positions = dict(starts)
            for message in pending:
                positions[message.channel] = message.id
        # `oldest` asks for whatever is buffered: nothing counts as missed.
        gaps = [] if cursor.oldest else incomplete
        return Batch(pending, positions, gaps, more, incomplete, starts)

    def wait(self, names: Sequence[str], waiter: Waiter) -> None:
        """Hold `waiter` on `names` until a message (`Waiter.wake`). Raises TooManyChannels,
        with nothing changed, when holding them would take this hub past `max_channels`."""
        if self.max_channels:
            self.make_room(names)
        for name in names:
            self.channel(name).waiters.add(waiter)

    def unwait(self, names: Iterable[str], waiter: Waiter) -> None:
        for name in names:
            ch = self.channels.get(name)
            if ch is not None:
                ch.waiters.discard(waiter)
                if not ch.waiters and not ch.ring:
                    self.maybe_idle[name] = None

    def join(self, names: Sequence[str], stream: StreamSubscriber) -> None:
        """Deliver what comes on `names` to `stream` until it leaves. Raises TooManyChannels
        as `wait` does."""
        if self.max_channels:
            self.make_room(names)
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
                if not ch.streams and not ch.ring:
                    self.maybe_idle[name] = None

    # -- housekeeping

    def sweep(self, now_ms: int) -> int:
        """Expire old messages and reclaim channels left with no messages and no
        subscribers; a cache over a cap gives back what it holds (see `_shed_cache`).
        Returns how many channels were reclaimed. Looks only at the channels whose oldest
        message is due to expire and at those that may have become idle."""
        self.presence.expire(now_ms)
        expiries, channels, ttl_ms, maybe_idle = self.expiries, self.channels, self.ttl_ms, self.maybe_idle
        if len(expiries) > 2 * len(channels) + 1024:  # (stale entries of deleted channels: made anew)
            expiries[:] = [(ch.expires_at, ch.name) for ch in channels.values() if ch.expires_at]
            heapq.heapify(expiries)
        while expiries and expiries[0][0] <= now_ms:
            due, name = heapq.heappop(expiries)
            ch = channels.get(name)
            if ch is None or ch.expires_at != due:
                continue  # (stale: reclaimed, or scheduled again since)
            ch.expires_at = 0
            ch.expire(now_ms, ttl_ms)
            if ch.ring:
                self._schedule(ch)
            else:
                maybe_idle[name] = None
        reclaimed = 0
        if maybe_idle:
            self.maybe_idle = {}
            for name in maybe_idle:
                ch = channels.get(name)
                if ch is not None and not ch.ring and not ch.waiters and not ch.streams:
                    self._reclaim(ch)
                    reclaimed += 1
        if self.buffers_are_cache:
            return reclaimed + self._shed_cache()
        return reclaimed

    def _schedule(self, ch: Channel) -> None:
        """The sweep looks at `ch` again when its oldest message expires (`ch.ring` holds some)."""
        ring = ch.ring
        assert ring  # (callers schedule a channel that buffers something)
        ch.expires_at = ring[0].time + self.ttl_ms + 1  # (the first ms `Channel.expire` drops it)
        heapq.heappush(self.expiries, (ch.expires_at, ch.name))

    def _shed_cache(self) -> int:
        """At a cap, buffers that only cache the broker's history go, oldest channels first,
        until 90% of the caps are left: a channel nobody here subscribes to is reclaimed, the
        others drop their buffers while the bytes are over. Their readers read the broker's
        history instead. Returns how many channels were reclaimed."""
        max_channels, max_bytes = self.max_channels, self.max_buffered_bytes
        if not (max_channels and len(self.channels) >= max_channels) and not (
            max_bytes and self.tally.bytes > max_bytes
        ):
            return 0
        reclaimed = 0
        for ch in list(self.channels.values()):
            too_many = max_channels and len(self.channels) > max_channels * 9 // 10
            too_big = max_bytes and self.tally.bytes > max_bytes * 9 // 10
            if not (too_many or too_big):
                break
            if not ch.subscribers:
                self._reclaim(ch)
                reclaimed += 1
            elif too_big:
                ch.vouch_from(ch.last_id)
        return reclaimed


def _message_order(message: Message) -> MessageId:
    return message.id
