"""GET /sub/{channels}: long-poll. Answers at once when messages newer than the cursor are
buffered; otherwise the connection waits as a `LongPoll` in the hub until a message, the
timeout, the channel's deletion or the client's departure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.encoding import encode_json
from tidings.errors import OverCapacity
from tidings.hub import Batch, Message, MessageId, already_seen, cursor_token, wall_clock_ms
from tidings.presence import LONGPOLL, Identity, PresenceEvent, event_fields
from tidings.web import params
from tidings.web.errors import failing, http_error
from tidings.web.h1 import error_body, shared_answer
from tidings.web.http import HttpConnection, Request

if TYPE_CHECKING:
    from tidings.web.types import Services


def poll_body(messages: list[Message], token: str, gap: bool = False, events: list[bytes] | None = None) -> bytes:
    """Every long-poll answer: the messages, the cursor to send next, whether some were missed,
    and presence events (`join`/`leave`) for a poll that asked for them."""
    body = b'{"messages":[%s],"last_id":"%s","gap":%s' % (
        b",".join(m.json for m in messages),
        token.encode(),
        b"true" if gap else b"false",
    )
    if events:
        return body + b',"events":[%s]}' % b",".join(events)
    return body + b"}"


def _one_message_answer(message: Message) -> bytes:
    return shared_answer(poll_body([message], str(message.id), message.after_loss))


def answer(
    conn: HttpConnection,
    channels: tuple[str, ...],
    messages: list[Message],
    positions: dict[str, MessageId],
    gap: bool = False,
    events: list[bytes] | None = None,
) -> None:
    if (
        len(messages) == 1
        and len(channels) == 1
        and gap == messages[0].after_loss
        and not events
        and conn.keep_alive
        and not conn.response_headers  # per-request headers (CORS) cannot go into shared bytes
    ):
        # The common answer after a fan-out, built once and shared by every subscriber of the channel.
        conn.respond_shared(messages[0].frame("longpoll", _one_message_answer))
    else:
        conn.respond(200, poll_body(messages, cursor_token(channels, positions), gap, events))


def _event_json(event: PresenceEvent) -> bytes:
    name, channel, user, info = event
    return encode_json({"event": name, **event_fields(channel, user, info)})


class LongPoll:
    """A held long-poll: a waiter in the hub, present on its channels (see `tidings.presence`:
    it lingers after its answer), and, if it asked, a presence listener answered by a join or
    leave as by a message."""

    __slots__ = (
        "app",
        "channels",
        "client",
        "conn",
        "events",
        "listening",
        "positions",
        "present",
        "timeout_key",
        "who",
        "woken_by",
    )

    transport = "longpoll"

    def __init__(
        self,
        app: Services,
        conn: HttpConnection,
        channels: tuple[str, ...],
        positions: dict[str, MessageId],
        timeout: float,
        who: Identity | None,
        client: str | None = None,
    ) -> None:
        self.app = app
        self.conn = conn
        self.channels = channels
        self.positions = positions
        self.timeout_key: int | None = app.timeouts.add(self, timeout)
        self.woken_by: Message | None = None
        self.who = who
        self.present = False  # counted in presence
        self.listening = False  # hears join/leave
        self.events: list[bytes] | None = None  # presence events to answer with
        self.client = client  # a listener's `?client=`: its events are kept until its next poll

    def arrive(self, listen: bool) -> None:
        presence = self.app.hub.presence
        presence.arrive(self.channels, self.who, LONGPOLL, wall_clock_ms())
        if listen:
            presence.listen(self.channels, self)
            self.listening = True
        self.present = True

    def _leave(self) -> None:
        if self.timeout_key is not None:
            self.app.timeouts.remove(self, self.timeout_key)
            self.timeout_key = None
        hub = self.app.hub
        hub.unwait(self.channels, self)
        if self.present:
            self.present = False
            hub.presence.depart(self.channels, self.who, LONGPOLL, wall_clock_ms())
            if self.listening:
                self.listening = False
                if self.client is not None:  # (first: the channel keeps a listener throughout)
                    hub.presence.keep(self.client, self.channels, wall_clock_ms())
                hub.presence.unlisten(self.channels, self)

    def wake(self, message: Message) -> bool:
        if already_seen(message, self.positions):
            return False
        # Leave every channel now (one message per answer, nothing twice); write at the end
        # of the loop turn, after the publisher has had its answer.
        self._leave()
        if self.events is None:
            self.app.batcher.schedule(self)
        self.woken_by = message
        return True

    def presence_event(self, event: str, channel: str, user: str, info: dict[str, Any] | None) -> None:
        # Answered at the end of the loop turn, with whatever else happens in it.
        if self.events is None:
            self.events = []
            if self.woken_by is None:
                self.app.batcher.schedule(self)
        self.events.append(_event_json((event, channel, user, info)))

    def flush(self) -> None:
        message, self.woken_by = self.woken_by, None
        events, self.events = self.events, None
        if message is None:
            self._leave()  # (a message's `wake` has left already)
        if message is not None:
            self.positions[message.channel] = message.id
            answer(self.conn, self.channels, [message], self.positions, message.after_loss, events)
        elif events is not None:
            answer(self.conn, self.channels, [], self.positions, False, events)

    def channel_closed(self, channel: str) -> None:
        self.events = None  # (answered here: a flush due this turn has nothing left to say)
        self._leave()
        self.conn.respond(410, error_body("channel_deleted", f"channel {channel} was deleted", channel=channel))

    def _answer_empty(self) -> None:
        self._leave()
        self.conn.respond(200, poll_body([], cursor_token(self.channels, self.positions)))

    def expire(self) -> None:
        self.timeout_key = None
        if self.events is None:  # (else the flush due this turn answers, with them)
            self._answer_empty()

    def shutdown(self) -> None:
        if self.woken_by is not None or self.events is not None:
            self.flush()
        else:
            self._answer_empty()

    def release(self) -> None:
        self.events = None  # (the client has gone)
        self._leave()


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    query = params.query(request)
    cursor = params.cursor(query, "last_id")
    timeout = params.seconds(query, "timeout", app.settings.poll_timeout, app.settings.max_poll_timeout)
    listen = params.flag(query, "presence")
    # A listener that names itself is told, at its next poll, what it would have heard between
    # the two (without a name, only what comes while a poll is held).
    client = params.client_name(query, "client")  # (checked even where it is not used)
    if not listen:
        client = None
    who = request.identity
    presence = app.hub.presence

    def answer_or_wait(batch: Batch) -> None:
        if batch.gaps:
            app.stats.gaps_served += 1
        missed = [_event_json(event) for event in presence.collect(client, channels)] if client else []
        if batch.messages or batch.gaps or missed or timeout == 0 or conn.stopping:
            now = wall_clock_ms()
            presence.polled(channels, who, now)
            if client is not None:
                presence.keep(client, channels, now)
            answer(conn, channels, batch.messages, batch.positions, bool(batch.gaps), missed)
            return
        waiter = LongPoll(app, conn, channels, batch.positions, timeout, who, client)
        try:
            app.hub.wait(channels, waiter)  # (a long-poll answered at once holds no channel)
        except OverCapacity as exc:
            waiter.release()
            conn.respond_error(http_error(exc))
            return
        waiter.arrive(listen)
        if client is not None:
            presence.release(client)  # (after: the channel keeps a listener throughout)
        conn.hold(waiter)

    app.relay.read(conn, channels, cursor, answer_or_wait, failing(conn))
