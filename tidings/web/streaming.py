"""The one stream engine of SSE, /stream and WebSocket: a subscriber that stays, whose
messages are merged into one write per loop turn, with a cap on unsent bytes and a periodic
heartbeat; it keeps the backlog, gap, live and cursor bookkeeping for a set of channels that
can change (a WebSocket subscribes and unsubscribes; the HTTP streams keep theirs).

Each transport supplies a `StreamFormat` (how a message, a gap, a closed channel and a
heartbeat look on the wire). Every message frame carries the cursor to resume after it: on a
single-channel stream that is the message's id, so the frame is built once and shared by every
stream of that format; on several channels it differs per stream.

Where transports differ, at a stream's end, the engine asks its `StreamEnds`: an HTTP stream
ends its response, also when one of its channels is deleted (`HTTP_ENDS`); a WebSocket
closes the socket with its own code, and outlives a deleted channel."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from tidings.hub import ZERO_ID, Batch, Message, MessageId, already_seen, cursor_token
from tidings.web.h1 import chunk

if TYPE_CHECKING:
    from tidings.web.http import HttpConnection
    from tidings.web.types import Services

SLOW_CLOSE_GRACE = 5.0  # seconds a dropped slow stream gets to take its last bytes


class StreamFormat:
    """How a stream looks on the wire. Subclasses set the attributes, `message_with_cursor`
    and `event`."""

    key = ""  # names this format's cached framing on a Message
    content_type = b""
    heartbeat = b""

    def __init__(self) -> None:
        self.chunk_key = self.key + "/chunk"  # names the cached framing as an HTTP chunk

    def preamble(self) -> bytes:
        return b""

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        """A message's frame, carrying `token`: the cursor to resume after it."""
        raise NotImplementedError

    def message(self, message: Message) -> bytes:
        """The frame on a single-channel stream, whose cursor is the message's id."""
        return self.message_with_cursor(message, str(message.id))

    def message_chunk(self, message: Message) -> bytes:
        return chunk(self.message(message))

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        raise NotImplementedError


def event_json(name: str, payload: dict[str, object]) -> bytes:
    return json.dumps({"event": name, **payload}, separators=(",", ":")).encode()


class StreamEnds(Protocol):
    """What a transport does at its stream's end."""

    @property
    def outlives_channels(self) -> bool:
        """Whether the stream goes on, for its other channels, when one is deleted."""

    def end(self, conn: HttpConnection, final: bytes, slow: bool) -> None:
        """End the stream on `conn` after `final` (at shutdown, after a deleted channel's
        `closed` event, or, `slow`, after telling a client that did not keep up)."""


class HttpStreamEnds:
    """SSE and /stream: the response ends (the chunked ending or the close is the goodbye)."""

    outlives_channels = False

    def end(self, conn: HttpConnection, final: bytes, slow: bool) -> None:
        conn.end_stream(final)


HTTP_ENDS = HttpStreamEnds()


class Stream:
    """A stream subscriber held on one connection."""

    __slots__ = (
        "app",
        "build",
        "channels",
        "chunked",
        "conn",
        "ends",
        "fmt",
        "pending",
        "positions",
        "registry",
        "seen_to",
    )

    def __init__(
        self,
        app: Services,
        conn: HttpConnection,
        channels: tuple[str, ...],
        fmt: StreamFormat,
        ends: StreamEnds = HTTP_ENDS,
    ) -> None:
        self.registry = app.streams
        self.ends = ends
        self.app = app
        self.conn = conn
        self.fmt = fmt
        self.positions: dict[str, MessageId] = {}  # per channel: the last message queued (several channels)
        self.seen_to: dict[str, MessageId] = {}  # per channel: what the stream began after
        self.pending: list[bytes] = []  # bytes framed for the connection, to send this turn
        self.chunked = False
        self.channels: tuple[str, ...] = ()
        self.build: Callable[[Message], bytes] = self._shared_frame
        self._set_channels(channels)

    def _set_channels(self, channels: tuple[str, ...]) -> None:
        # One channel: the frame (cursor = the message id) is shared by every stream on it, and
        # positions are not kept per message; on the way to several, catch them up: every
        # message up to the channel's last id has been queued to this stream.
        if len(self.channels) == 1 and len(channels) > 1:
            (name,) = self.channels
            ch = self.app.hub.get(name)
            if ch is not None and ch.last_id > self.positions.get(name, ZERO_ID):
                self.positions[name] = ch.last_id
        self.channels = channels
        # Multi-channel cursors differ per stream; a single channel's frames are shared.
        self.build = self._frame_with_cursor if len(channels) > 1 else self._shared_frame

    def _shared_frame(self, message: Message) -> bytes:
        # Framed once per message for every stream alike: as an HTTP chunk, or bare for HTTP/1.0.
        if self.chunked:
            return message.frame(self.fmt.chunk_key, self.fmt.message_chunk)
        return message.frame(self.fmt.key, self.fmt.message)

    def _frame_with_cursor(self, message: Message) -> bytes:
        self.positions[message.channel] = message.id
        return self._framed(self.fmt.message_with_cursor(message, cursor_token(self.channels, self.positions)))

    def begin(self, batch: Batch) -> None:
        """Send the headers, any gap and the backlog after the client's cursor, and join the hub."""
        self.app.hub.join(self.channels, self)  # first: past --max-channels it raises, nothing sent
        self.chunked = False  # the backlog goes out unframed, as the stream's preamble
        backlog = self.catch_up(self.channels, batch)
        self.conn.start_stream(self.fmt.content_type, preamble=self.fmt.preamble() + b"".join(backlog))
        self.chunked = self.conn.chunked
        self.conn.hold(self)
        self.registry.add(self)

    def catch_up(self, channels: tuple[str, ...], batch: Batch) -> list[bytes]:
        """The frames (for the connection as it is framed now) of `batch`, read after the
        client's cursor on `channels` (which this stream has taken on and joined in the hub, so
        that what follows comes live): a gap event if messages are missing, then the backlog,
        each message with the cursor to resume after it."""
        frames = []
        if batch.gaps:
            self.app.stats.gaps_served += 1
            frames.append(self._framed(self.fmt.event("gap", {"channels": batch.gaps})))
        self.positions.update(batch.starts)  # rewound: the first frame continues from the cursor
        frames.extend(self.build(m) for m in batch.messages)
        self.positions.update(batch.positions)
        self.seen_to = {**self.seen_to, **batch.positions}
        return frames

    def add_channels(self, channels: tuple[str, ...], batch: Batch) -> None:
        """Take on `channels` while streaming: `batch` (read after the client's cursor on
        them) goes out as `catch_up` frames it, then what comes live."""
        self.app.hub.join(channels, self)  # first: past --max-channels it raises, nothing changed
        self._set_channels(tuple(dict.fromkeys(self.channels + channels)))
        for frame in self.catch_up(channels, batch):
            self._queue(frame)

    def remove_channels(self, channels: Iterable[str]) -> None:
        gone = [name for name in channels if name in self.channels]
        self.app.hub.leave(gone, self)
        self._set_channels(tuple(name for name in self.channels if name not in gone))
        for name in gone:
            self.positions.pop(name, None)

    def _framed(self, data: bytes) -> bytes:
        return chunk(data) if self.chunked else data

    def push(self, data: bytes) -> None:
        """Send `data` (not yet framed) at the end of this loop turn."""
        self._queue(self._framed(data))

    def _queue(self, framed: bytes) -> None:
        if not self.pending:
            self.app.batcher.schedule(self)
        self.pending.append(framed)

    def deliver(self, message: Message) -> None:
        if already_seen(message, self.seen_to):
            return
        if message.after_loss:
            self.app.stats.gaps_served += 1
            self.push(self.fmt.event("gap", {"channels": [message.channel]}))
        self._queue(self.build(message))

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if self.conn.write_buffer_size() + len(data) > self.registry.max_unsent:
            self._drop_slow()
            return
        self.conn.write_stream(data)

    def _drop_slow(self) -> None:
        """The client does not read fast enough: end its stream instead of buffering without
        bound; it resumes from its cursor."""
        self._leave()
        self.app.stats.slow_disconnects += 1
        conn = self.conn
        slow = self.fmt.event("slow", {"detail": "the client did not keep up; resume from your cursor"})
        self.ends.end(conn, slow, True)
        self.app.loop.call_later(SLOW_CLOSE_GRACE, conn.abort)

    def channel_closed(self, channel: str) -> None:
        closed = self.fmt.event("closed", {"channel": channel})
        if self.ends.outlives_channels:
            self.remove_channels([channel])
            self.push(closed)
            return
        self.flush()
        self._leave()
        self.ends.end(self.conn, closed, False)

    def shutdown(self) -> None:
        self.flush()
        self._leave()
        self.ends.end(self.conn, b"", False)

    def release(self) -> None:
        self._leave()

    def _leave(self) -> None:
        self.app.hub.leave(self.channels, self)
        self.registry.remove(self)
        self.pending.clear()
