"""Redis: many Tidings processes, on one host or many, behave as one server.

Each published message goes through one Lua script that appends it to the channel's
history (a Redis Stream: Redis assigns the `<ms>-<seq>` id, the same form the hub uses)
and PUBLISHes it on `<prefix><channel>`, atomically, so every process receives messages
in id order. Every process holds one subscription connection (the pattern `<prefix>*`, and
those of `--redis-subscribe`) and a pool of command connections — never a connection per
subscriber — and keeps the recent history in its own hub as a cache; a read whose cursor is
older than that cache is filled in from the stream (a client may resume on any process).

Anything else PUBLISHed on `<prefix><channel>` (redis-cli, another program) is delivered
live to current subscribers: it has no id, is not kept in history and moves no cursor. So is
everything PUBLISHed on the plain Redis channels `--redis-subscribe` names (publishers that
know nothing of Tidings), to the Tidings channel of the same name.

Subscriber counts: each process writes its per-channel counts to a hash that expires
(`REPORT_INTERVAL`, `REPORT_TTL`); publish and channel info add them up over processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tidings.brokers.base import NumberingBus, cancel_all, foreign_data
from tidings.encoding import encode_json
from tidings.errors import BrokerUnavailable, InvalidChannel
from tidings.hub import (
    ZERO_ID,
    ChannelInfo,
    Cursor,
    Hub,
    JSONValue,
    Message,
    MessageId,
    Published,
    validate_channel,
    wall_clock_ms,
)
from tidings.presence import RemoteView, merge_reports

log = logging.getLogger("tidings.redis")

DEFAULT_PREFIX = "tidings:"
REPORT_INTERVAL = 2.0  # seconds between a process's subscriber-count reports
REPORT_TTL_MS = 6000  # a process that stops reporting (crashed) drops out after this
STORED = b"\x00"  # payload of a message with history: \x00<id>\x00<data as JSON>
DELETED = b"\x01"  # payload announcing a channel's deletion
RESYNC_BATCH = 100  # channels caught up at once after a reconnect
MAX_SEQ = 2**64 - 1  # the largest sequence number in a Redis stream id
LIVENESS_INTERVAL = 5.0  # a quiet subscription is PINGed after this, and dropped if still quiet
IGNORED_LIMIT = 1000  # Redis channels remembered as logged for not being channel names

# Sum of the subscriber counts other processes reported for a channel, plus the caller's own
# (exact) count. Processes are listed in a set; their count hashes expire.
_SUM_SUBSCRIBERS = """
local function subscribers(nodes, node_prefix, channel, own, own_count)
  local total = tonumber(own_count)
  for _, node in ipairs(redis.call('SMEMBERS', nodes)) do
    if node ~= own then
      total = total + (tonumber(redis.call('HGET', node_prefix .. node, channel)) or 0)
    end
  end
  return total
end
"""

# KEYS: history, nodes. ARGV: data, maxlen, ttl_ms, topic, node_prefix, channel, own node, own count.
_PUBLISH = (
    _SUM_SUBSCRIBERS
    + """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'd', ARGV[1])
local ms = tonumber(string.match(id, '^(%d+)'))
local ttl = tonumber(ARGV[3])
if ms > ttl then redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', ms - ttl)) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[4], '\\0' .. id .. '\\0' .. ARGV[1])
return {id, subscribers(KEYS[2], ARGV[5], ARGV[6], ARGV[7], ARGV[8])}
"""
)

# KEYS: history, epoch. ARGV: after id, count.
# Returns {entries after `after`, epoch, Redis time in ms, exists, length, entries ever added,
# first id kept, last id}. Trimming (MAXLEN, MINID) does not move XINFO's max-deleted-entry-id,
# so what was trimmed is told by entries-added > length, below the first id kept. The epoch
# is when this Redis's history began (gone with the data if Redis restarts empty, so cursors
# from before are then told they missed messages).
_HISTORY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = string.format('%d-0', now)
  redis.call('SET', KEYS[2], epoch)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {{}, epoch, string.format('%d', now), 0, 0, 0, '0-0', '0-0'}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {entries, epoch, string.format('%d', now), 1, fields['length'], fields['entries-added'],
        fields['recorded-first-entry-id'], fields['last-generated-id']}
"""

# Other processes' presence reports (`Presence.report`, one JSON per channel in a hash per
# process, which expires with its counts) on some channels: a flat list of channel, report pairs.
# KEYS: nodes. ARGV: presence key prefix, own node, channels...
_PRESENCE = """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] then
    local values = redis.call('HMGET', ARGV[1] .. node, unpack(ARGV, 3))
    for i, value in ipairs(values) do
      if value then
        out[#out + 1] = ARGV[i + 2]
        out[#out + 1] = value
      end
    end
  end
end
return out
"""

# KEYS: history, nodes. ARGV: node_prefix, channel, own node, own count.
_INFO = (
    _SUM_SUBSCRIBERS
    + """
local length, last = 0, '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'length' then length = info[i + 1] end
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {length, last, subscribers(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])}
"""
)

# KEYS: history, nodes. ARGV: topic, node_prefix, channel, own node, own count.
_DELETE = (
    _SUM_SUBSCRIBERS
    + """
local existed = redis.call('DEL', KEYS[1])
local told = subscribers(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
-- Every subscriber is about to be told: no process counts any for this channel now.
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('HDEL', ARGV[2] .. node, ARGV[3]) end
redis.call('PUBLISH', ARGV[1], '\\1')
return {existed, told}
"""
)


def _id(raw: bytes | str) -> MessageId:
    return MessageId.parse(raw.decode() if isinstance(raw, bytes) else raw)


def _just_below(ident: MessageId) -> MessageId:
    return MessageId(ident.ms, ident.seq - 1) if ident.seq else MessageId(ident.ms - 1, MAX_SEQ)


class PlainChannels:
    """The plain Redis channels `--redis-subscribe` takes in: names and glob patterns (`*`, `?`)
    made of channel-name characters, so that Redis and `fnmatch` agree on what they match."""

    def __init__(self, spec: str, prefix: str) -> None:
        patterns: list[str] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item or item in patterns:
                continue
            try:
                validate_channel(item.replace("*", "_").replace("?", "_"))  # a name with wildcards in it
            except InvalidChannel:
                raise ValueError(
                    f"--redis-subscribe: {item!r} is not a channel name or a pattern of them "
                    "(1-128 characters of A-Za-z0-9_.:- and the wildcards * and ?)"
                ) from None
            if item.startswith(prefix):
                raise ValueError(
                    f"--redis-subscribe: {item!r} is inside --redis-prefix {prefix!r} (Tidings' own channels)"
                )
            patterns.append(item)
        # All are PSUBSCRIBEd (a name is a pattern matching itself), in one command with the prefix's.
        self.patterns = tuple(patterns)

    def owner(self, name: str) -> str | None:
        """The pattern a message on Redis channel `name` is taken through: Redis sends one copy
        per matching pattern, and only one is delivered."""
        return next((p for p in self.patterns if fnmatch.fnmatchcase(name, p)), None)


def check_prefix(prefix: str) -> None:
    if not prefix:
        raise ValueError(
            "--redis-prefix must not be empty: Tidings would subscribe to all of Redis and write bare keys "
            "(plain Redis channels are taken in with --redis-subscribe)"
        )


class RedisStore:
    """The command side: history, ids, counts. Needs no subscription (so `tidings publish
    --redis` can publish through a broker it never starts)."""

    def __init__(self, url: str, prefix: str, buffer_size: int, buffer_ttl: float) -> None:
        check_prefix(prefix)
        self.url = url
        self.prefix = prefix
        self.buffer_size = buffer_size
        self.ttl_ms = int(buffer_ttl * 1000)
        # No retries inside redis-py: a failed call answers 503 now; reconnecting is ours.
        self.client = aioredis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0, socket_timeout=5.0
        )
        self.nodes_key = prefix + "nodes"
        self.node_prefix = prefix + "node:"
        self.presence_prefix = prefix + "presence:"
        self.epoch_key = prefix + "epoch"
        self._publish = self.client.register_script(_PUBLISH)
        self._history = self.client.register_script(_HISTORY)
        self._info = self.client.register_script(_INFO)
        self._delete = self.client.register_script(_DELETE)
        self._presence = self.client.register_script(_PRESENCE)

    def topic(self, channel: str) -> str:
        return self.prefix + channel

    def history_key(self, channel: str) -> str:
        return self.prefix + "history:" + channel

    async def publish(self, channel: str, data: bytes, node: str, own_count: int) -> tuple[MessageId, int]:
        """Append to history and fan out; returns the id and the subscribers over all processes."""
        raw_id, subscribers = await self._call(
            self._publish,
            [self.history_key(channel), self.nodes_key],
            [data, self.buffer_size, self.ttl_ms, self.topic(channel), self.node_prefix, channel, node, own_count],
        )
        return _id(raw_id), int(subscribers)

    async def history(self, channel: str, after: MessageId) -> tuple[list[Message], MessageId]:
        """The messages after `after` still in history, and the id above which that answer
        is complete (above `after` when messages were trimmed or Redis lost its data)."""
        entries, epoch, now, exists, length, added, first, last = await self._call(
            self._history, [self.history_key(channel), self.epoch_key], [str(after), self.buffer_size]
        )
        messages = []
        for raw_id, fields in entries:
            ident = _id(raw_id)
            data = json.loads(dict(zip(fields[::2], fields[1::2], strict=True))[b"d"])
            messages.append(Message.from_data(ident, channel, data, ident.ms))
        complete_after = max(after, _id(epoch))
        if added > length:  # some were trimmed: everything below the first one kept
            first_kept = _id(first)
            trimmed_to = _id(last) if not length else _just_below(first_kept)
            complete_after = max(complete_after, trimmed_to)
        if not exists:
            # No stream: never published, or every message outlived the TTL (the key expires with it).
            complete_after = max(complete_after, MessageId(int(now) - self.ttl_ms, 0))
        return messages, complete_after

    async def info(self, channel: str, node: str, own_count: int) -> tuple[int, MessageId, int]:
        length, last, subscribers = await self._call(
            self._info, [self.history_key(channel), self.nodes_key], [self.node_prefix, channel, node, own_count]
        )
        return int(length), _id(last), int(subscribers)

    async def delete(self, channel: str, node: str, own_count: int) -> tuple[bool, int]:
        existed, told = await self._call(
            self._delete,
            [self.history_key(channel), self.nodes_key],
            [self.topic(channel), self.node_prefix, channel, node, own_count],
        )
        return bool(existed), int(told)

    async def report(
        self,
        node: str,
        counts: dict[str, int],
        changes: dict[str, bytes | None],
        full: bool,
        held_before: bool,
        holding: bool,
    ) -> bool:
        """This process's subscriber counts (replacing its previous report) and the changes to its
        presence (`Presence.report`; `full`: all of it, replacing; `held_before`, `holding`:
        whether its presence reported before, and now, holds anyone). Returns False when Redis
        had lost the presence reported before (it expired, or Redis restarted empty): the
        changes went onto nothing, and the next report must be whole."""
        key = self.node_prefix + node
        presence_key = self.presence_prefix + node
        gone = [name for name, entry in changes.items() if entry is None]
        entries = {name: entry for name, entry in changes.items() if entry is not None}
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.exists(presence_key)  # (first: before the changes recreate it)
                pipe.delete(key)
                if full:
                    pipe.delete(presence_key)
                elif gone:
                    pipe.hdel(presence_key, *gone)
                if entries:
                    pipe.hset(presence_key, mapping=entries)  # type: ignore[arg-type]
                pipe.pexpire(presence_key, REPORT_TTL_MS)
                if counts:
                    pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
                    pipe.pexpire(key, REPORT_TTL_MS)
                if counts or holding:
                    pipe.sadd(self.nodes_key, node)
                results = await pipe.execute()
                kept = full or bool(results[0]) or not held_before
                # Forget processes whose counts expired (crashed or idle).
                for member in await self.client.smembers(self.nodes_key):
                    name = member.decode() if isinstance(member, bytes) else member
                    if not await self.client.exists(self.node_prefix + name, self.presence_prefix + name):
                        await self.client.srem(self.nodes_key, member)
                return kept
        except RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    async def presence(self, node: str, channels: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The other processes' presence reports on `channels`, per channel."""
        pairs = await self._call(self._presence, [self.nodes_key], [self.presence_prefix, node, *channels])
        reports: dict[str, list[dict[str, Any]]] = {}
        for index in range(0, len(pairs), 2):
            name = pairs[index].decode() if isinstance(pairs[index], bytes) else pairs[index]
            reports.setdefault(name, []).append(json.loads(pairs[index + 1]))
        return reports

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[object]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    async def close(self) -> None:
        await self.client.aclose()


class RedisBroker(NumberingBus):
    name = "redis"
    keeps_history = True  # every buffered message is in Redis too

    def __init__(self, hub: Hub, url: str, prefix: str = DEFAULT_PREFIX, plain: str = "") -> None:
        super().__init__(hub)
        self.store = RedisStore(url, prefix, hub.buffer_size, hub.ttl_ms / 1000)
        self.plain = PlainChannels(plain, prefix)
        self._own_topics = prefix.encode()
        self._own_pattern = self._own_topics + b"*"
        self._ignored: set[bytes] = set()  # Redis channels already logged as no channel names
        self.node = uuid.uuid4().hex[:16]
        self.subscribed = False
        self._subscribed_once = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def healthy(self) -> bool:
        return self.subscribed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._report())]
        try:
            await asyncio.wait_for(self._subscribed_once.wait(), 5.0)
        except TimeoutError:
            log.warning("Redis not reachable at %s yet; serving, and retrying in the background", self.store.url)

    async def close(self) -> None:
        if self._tasks:  # started, so registered as a node (`_report`); `tidings publish --redis` is not
            await cancel_all(self._tasks)
            with contextlib.suppress(RedisError):
                await self.store.client.srem(self.store.nodes_key, self.node)
                await self.store.client.delete(
                    self.store.node_prefix + self.node, self.store.presence_prefix + self.node
                )
        await self.store.close()

    # -- publishing

    def _local_count(self, channel: str) -> int:
        ch = self.hub.get(channel)
        return ch.subscribers if ch is not None else 0

    def publish(self, channel: str, data: JSONValue) -> asyncio.Future[Published]:
        return asyncio.ensure_future(self._publish(channel, data))

    def delete(self, channel: str) -> asyncio.Future[int | None]:
        return asyncio.ensure_future(self._delete(channel))

    def info(self, channel: str, now_ms: int) -> asyncio.Future[ChannelInfo]:
        return asyncio.ensure_future(self._info(channel, now_ms))

    def presence_elsewhere(self, channels: list[str]) -> asyncio.Future[dict[str, RemoteView]]:
        return asyncio.ensure_future(self._presence_elsewhere(channels))

    async def _presence_elsewhere(self, channels: list[str]) -> dict[str, RemoteView]:
        reports = await self.store.presence(self.node, channels)
        return {name: merge_reports(held) for name, held in reports.items()}

    async def _publish(self, channel: str, data: JSONValue) -> Published:
        # This process delivers its own message when it comes back on the subscription, in
        # order with everyone else's.
        ident, subscribers = await self.store.publish(channel, encode_json(data), self.node, self._local_count(channel))
        return Published(ident, channel, subscribers)

    async def _delete(self, channel: str) -> int | None:
        existed, told = await self.store.delete(channel, self.node, self._local_count(channel))
        return told if existed or told else None

    async def _info(self, channel: str, now_ms: int) -> ChannelInfo:
        length, last, subscribers = await self.store.info(channel, self.node, self._local_count(channel))
        return ChannelInfo(channel, subscribers, length, max(last, self.hub.info(channel, now_ms).last_id))

    # -- history

    async def fill(self, channels: list[str], cursor: Cursor) -> None:
        await asyncio.gather(*(self._fill(name, cursor.position(name) or ZERO_ID) for name in channels))

    async def _fill(self, channel: str, after: MessageId) -> None:
        messages, complete_after = await self.store.history(channel, after)
        self.hub.backfill(channel, messages, complete_after, wall_clock_ms())

    async def _resync(self) -> None:
        """After a reconnect: catch every channel this process knows up with what it missed."""
        known = [(name, ch.last_id) for name, ch in self.hub.channels.items()]
        for start in range(0, len(known), RESYNC_BATCH):
            await asyncio.gather(*(self._fill(name, last) for name, last in known[start : start + RESYNC_BATCH]))

    # -- the subscription

    async def _listen(self) -> None:
        backoff = 0.1
        state = "starting"
        while True:
            pubsub = self.store.client.pubsub()
            interrupted: BaseException | None = None
            try:
                await pubsub.psubscribe(self._own_pattern, *self.plain.patterns)
                for _ in range(1 + len(self.plain.patterns)):
                    while (await pubsub.get_message(timeout=5.0)) is None:
                        pass  # one confirmation per pattern, before anything else
                seconds, micros = await self.store.client.time()
                # Every message with a higher id was published while subscribed: channels this
                # process has not seen start there, and older cursors are filled from history.
                floor = MessageId(seconds * 1000 + micros // 1000, 0)
                self.hub.rebase(floor)
                # History in this Redis begins no later than now (kept if already set).
                await self.store.client.set(self.store.epoch_key, str(floor), nx=True)
                if self._subscribed_once.is_set():
                    await self._resync()
                self.subscribed = True
                self._subscribed_once.set()
                log.info(
                    "Redis %s: subscribed to %s*%s",
                    self.store.url,
                    self.store.prefix,
                    "".join(f", {p}" for p in self.plain.patterns),
                )
                state, backoff = "up", 0.1
                pinged = False
                while True:
                    message = await pubsub.get_message(timeout=LIVENESS_INTERVAL)
                    if message is None:
                        # Quiet: a Redis that hangs (no FIN, no RST) must not go unnoticed.
                        if pinged:
                            raise RedisConnectionError(f"no answer to PING within {LIVENESS_INTERVAL:g} s")
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    if message["type"] != "pmessage":
                        continue
                    if message["pattern"] == self._own_pattern:
                        self._receive(message["channel"], message["data"])
                    else:
                        self._receive_plain(message["pattern"], message["channel"], message["data"])
            except (RedisError, BrokerUnavailable, OSError) as exc:
                self.subscribed = False
                if state != "down":
                    log.warning("Redis unavailable (%s); retrying with back-off", exc)
                    state = "down"
            except Exception:
                self.subscribed = False
                log.exception("the subscription failed; starting it again")
                state = "down"
            except BaseException as exc:  # cancelled: close the subscription, then stop
                interrupted = exc
            # (Not in a `finally`: mypyc mishandles awaits there, see `server.serve`.)
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if interrupted is not None:
                raise interrupted
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _channel(self, topic: bytes, start: int) -> str | None:
        """The Tidings channel named by Redis channel `topic` from byte `start` on; None when
        that is not a valid channel name (logged once per Redis channel)."""
        try:
            return validate_channel(topic[start:].decode("utf-8"))
        except (UnicodeDecodeError, InvalidChannel):
            if topic not in self._ignored:
                if len(self._ignored) >= IGNORED_LIMIT:
                    self._ignored.clear()
                self._ignored.add(topic)
                log.debug("ignoring messages on Redis channel %r (not a valid channel name)", topic)
            return None

    def _receive(self, topic: bytes, payload: bytes) -> None:
        channel = self._channel(topic, len(self._own_topics))
        if channel is None:
            return
        now = wall_clock_ms()
        if payload[:1] == STORED:
            raw_id, _, data = payload[1:].partition(b"\x00")
            try:
                ident = _id(raw_id)
                message = Message.from_data(ident, channel, json.loads(data), ident.ms)
            except ValueError:
                log.warning("ignoring a malformed message on %r", topic)
                return
            self.hub.ingest(message, now)
        elif payload == DELETED:
            self.hub.delete(channel)
        else:
            self._ingest_live(channel, payload, now)

    def _receive_plain(self, pattern: bytes, topic: bytes, payload: bytes) -> None:
        """A PUBLISH on a channel `--redis-subscribe` names: live, to the channel of the same name.
        Its payload has no framing (a \\x01 there deletes nothing)."""
        if topic.startswith(self._own_topics):
            return  # Tidings' own channel (a pattern like * matches it too): taken in as such
        channel = self._channel(topic, 0)
        if channel is not None and self.plain.owner(channel) == pattern.decode():
            self._ingest_live(channel, payload, wall_clock_ms())

    def _ingest_live(self, channel: str, payload: bytes, now: int) -> None:
        self.hub.ingest(Message.from_data(ZERO_ID, channel, foreign_data(payload), now, live=True), now)

    async def _report(self) -> None:
        presence = self.hub.presence
        full = True  # (the first report, and after Redis lost ours)
        while True:
            await asyncio.sleep(REPORT_INTERVAL if self.subscribed else 0.5)
            counts = {name: ch.subscribers for name, ch in self.hub.channels.items() if ch.subscribers}
            held_before = bool(presence.reported)
            changes = presence.report(full)
            try:
                kept = await self.store.report(self.node, counts, changes, full, held_before, bool(presence.reported))
                full = not kept
            except BrokerUnavailable as exc:
                full = True  # (what was not told is told whole next time)
                log.debug("subscriber counts not reported: %s", exc)
