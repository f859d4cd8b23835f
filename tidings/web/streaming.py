"""The one stream engine of SSE, /stream and WebSocket: a subscriber that stays, whose
messages are merged into one write per loop turn, with a cap on unsent bytes and a periodic
heartbeat; it keeps the backlog, gap, live and cursor bookkeeping for a set of channels that
can change (a WebSocket subscribes and unsubscribes; the HTTP streams keep theirs).

Each transport picks a `StreamFormat`: how a message, a gap, a closed channel and a heartbeat
look on the wire. The four are at the end of this module (`SSE`, `NDJSON`, `HTML`, `WEBSOCKET`),
so that one message's way to any stream can be read here. Every message frame carries the
cursor to resume after it: on a single-channel stream that is the message's id, so the frame is
built once and shared by every stream of that format; on several channels it differs per stream.

Where transports differ, at a stream's end, the engine asks its `StreamEnds`: an HTTP stream
ends its response, also when one of its channels is deleted (`HTTP_ENDS`); a WebSocket
closes the socket with its own code, and outlives a deleted channel."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from websockets.frames import Frame, Opcode

from tidings.encoding import encode_json
from tidings.hub import ZERO_ID, Batch, Message, MessageId, already_seen, cursor_token, wall_clock_ms
from tidings.presence import Identity, event_fields
from tidings.web.h1 import chunk

if TYPE_CHECKING:
    from tidings.web.http import HttpConnection
    from tidings.web.types import Services

SLOW_CLOSE_GRACE = 5.0  # seconds a dropped slow stream gets to take its last bytes
# No channel names, shared: sets a stream seldom fills start as this (an empty set is 216 bytes,
# on every idle connection; frozenset() makes a new one each time).
NO_CHANNELS: frozenset[str] = frozenset()


class StreamFormat:
    """How a stream looks on the wire. Subclasses set the attributes, `message_with_cursor`
    and `event`."""

    key = ""  # names this format's cached framing on a Message
    transport = ""  # what /metrics counts its connections as
    name = ""  # the transport, as presence (and --auth-url) names it
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
        "listening",
        "others",
        "pending",
        "positions",
        "present",
        "registry",
        "seen_to",
        "who",
    )

    def __init__(
        self,
        app: Services,
        conn: HttpConnection,
        channels: tuple[str, ...],
        fmt: StreamFormat,
        ends: StreamEnds = HTTP_ENDS,
        who: Identity | None = None,
    ) -> None:
        self.registry = app.streams
        self.who = who  # the client's user, for presence
        # Channels taken on under another identity (a WebSocket command answered by --auth-url
        # after a handshake that named nobody): departed as whom they arrived as.
        self.others: dict[str, Identity | None] | None = None
        self.present = False  # counted in presence on `channels`
        self.listening = NO_CHANNELS  # channels it hears join/leave on
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

    def begin(self, batch: Batch, listen: bool = False) -> None:
        """Send the headers, any gap and the backlog after the client's cursor, and join the hub
        (and presence; with `listen`, its join/leave events follow)."""
        self.app.hub.join(self.channels, self)  # first: past --max-channels it raises, nothing sent
        self.present = True
        self._arrive(self.channels, listen, self.who)
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

    def add_channels(
        self, channels: tuple[str, ...], batch: Batch, listen: bool = False, who: Identity | None = None
    ) -> None:
        """Take on `channels` while streaming (as `who`, or as the stream's client): `batch`
        (read after the client's cursor on them) goes out as `catch_up` frames it, then what
        comes live."""
        self.app.hub.join(channels, self)  # first: past --max-channels it raises, nothing changed
        who = who or self.who
        if who != self.who:
            if self.others is None:
                self.others = {}
            self.others.update(dict.fromkeys(channels, who))
        self._arrive(channels, listen, who)
        self._set_channels(tuple(dict.fromkeys(self.channels + channels)))
        for frame in self.catch_up(channels, batch):
            self._queue(frame)

    def remove_channels(self, channels: Iterable[str]) -> None:
        gone = [name for name in channels if name in self.channels]
        self.app.hub.leave(gone, self)
        if self.present:
            self._depart(gone)
        self._set_channels(tuple(name for name in self.channels if name not in gone))
        for name in gone:
            self.positions.pop(name, None)

    def _arrive(self, channels: tuple[str, ...], listen: bool, who: Identity | None) -> None:
        presence = self.app.hub.presence
        presence.arrive(channels, who, self.fmt.name, wall_clock_ms())
        self.listen_to(channels, listen)

    def listen_to(self, channels: tuple[str, ...], listen: bool) -> None:
        """Hear join/leave on `channels` (which the stream holds) from now on, if `listen`."""
        new = [name for name in channels if name not in self.listening] if listen else ()
        if new:
            self.app.hub.presence.listen(new, self)
            self.listening |= frozenset(new)

    def _depart(self, channels: list[str] | tuple[str, ...]) -> None:
        presence = self.app.hub.presence
        if self.listening:  # (first: its own leave is not news to it)
            presence.unlisten(channels, self)
            self.listening -= frozenset(channels)
        now = wall_clock_ms()
        others = self.others
        if others:
            own = []
            for name in channels:
                if name in others:
                    presence.depart((name,), others.pop(name), self.fmt.name, now)
                else:
                    own.append(name)
            channels = own
        presence.depart(channels, self.who, self.fmt.name, now)

    def presence_event(self, event: str, channel: str, user: str, info: dict[str, Any] | None) -> None:
        self.push(self.fmt.event(event, event_fields(channel, user, info)))

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

    @property
    def transport(self) -> str:
        return self.fmt.transport

    def release(self) -> None:
        self._leave()

    def _leave(self) -> None:
        self.app.hub.leave(self.channels, self)
        if self.present:
            self.present = False
            self._depart(self.channels)
        self.registry.remove(self)
        self.pending.clear()


# -- the formats


class SSEFormat(StreamFormat):
    key = "sse"
    transport = "sse"
    name = "sse"
    content_type = b"text/event-stream; charset=utf-8"
    heartbeat = b": heartbeat\n\n"

    def preamble(self) -> bytes:
        return b": tidings\n\n"

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        return b"id: %s\ndata: %s\n\n" % (token.encode(), message.json)

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (name.encode(), encode_json(payload))


class NDJSONFormat(StreamFormat):
    key = "ndjson"
    transport = "stream"
    name = "stream"
    content_type = b"application/x-ndjson"
    heartbeat = b"\n"

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        # The message object with one key more: {"id", "channel", "data", "time", "last_id"}.
        return b'%s,"last_id":"%s"}\n' % (message.json[:-1], token.encode())

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        return encode_json({"event": name, **payload}) + b"\n"


# Browsers start rendering a streamed page only after the first kilobyte or so.
_HTML_PADDING = b"<!--" + b" " * 1024 + b"-->\n"
_HTML_HEAD = (
    b'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Tidings stream</title>'
    b"<style>body{font:14px/1.4 system-ui,sans-serif;margin:1em}.m{margin:.2em 0}"
    b".c,.t{color:#777}.e{color:#a33}</style></head><body>\n"
)


def _html_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _html_content(message: Message) -> bytes:
    """A message's <div> after its attributes: built once per message (it decodes the data), the
    same for every stream; only the cursor in the attributes differs between streams."""
    data = message.data
    if isinstance(data, dict) and "message" in data:
        nick = html.escape(_html_text(data.get("nick", "anonymous")))
        body = f"<b>{nick}</b>: {html.escape(_html_text(data['message']))}"
    else:
        body = html.escape(_html_text(data))
    return f'<span class="c">[{message.channel}]</span> {body}</div>\n'.encode()


class HTMLFormat(StreamFormat):
    key = "html"
    transport = "stream"
    name = "stream"
    content_type = b"text/html; charset=utf-8"
    heartbeat = b"<!-- -->\n"

    def preamble(self) -> bytes:
        return _HTML_HEAD + _HTML_PADDING

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        ident = b"" if message.live else str(message.id).encode()  # (a live message has no id)
        content = message.frame("html/content", _html_content)
        return b'<div class="m" data-id="%s" data-last-id="%s">%s' % (ident, token.encode(), content)

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        text = html.escape(encode_json(payload).decode())
        return f'<div class="e" data-event="{name}">{name}: {text}</div>\n'.encode()


def text_frame(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class WebSocketFormat(StreamFormat):
    key = "ws"
    transport = "ws"
    name = "websocket"
    heartbeat = Frame(Opcode.PING, b"").serialize(mask=False)

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        return text_frame(b'{"type":"message","last_id":"%s","message":%s}' % (token.encode(), message.json))

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        return text_frame(encode_json({"type": name, **payload}))


SSE = SSEFormat()
NDJSON = NDJSONFormat()
HTML = HTMLFormat()
WEBSOCKET = WebSocketFormat()
