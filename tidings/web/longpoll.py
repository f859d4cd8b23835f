"""GET /sub/{channels}: long-poll. Answers at once when messages newer than the cursor are
buffered; otherwise the connection waits as a `LongPoll` in the hub until a message, the
timeout, the channel's deletion or the client's departure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.errors import OverCapacity
from tidings.hub import Batch, Message, MessageId, already_seen, cursor_token
from tidings.web import params
from tidings.web.errors import failing, http_error
from tidings.web.h1 import error_body, shared_answer
from tidings.web.http import HttpConnection, Request

if TYPE_CHECKING:
    from tidings.web.types import Services


def poll_body(messages: list[Message], token: str, gap: bool = False) -> bytes:
    """Every long-poll answer: the messages, the cursor to send next, whether some were missed."""
    return b'{"messages":[%s],"last_id":"%s","gap":%s}' % (
        b",".join(m.json for m in messages),
        token.encode(),
        b"true" if gap else b"false",
    )


def _one_message_answer(message: Message) -> bytes:
    return shared_answer(poll_body([message], str(message.id), message.after_loss))


def answer(
    conn: HttpConnection,
    channels: tuple[str, ...],
    messages: list[Message],
    positions: dict[str, MessageId],
    gap: bool = False,
) -> None:
    if (
        len(messages) == 1
        and len(channels) == 1
        and gap == messages[0].after_loss
        and conn.keep_alive
        and not conn.response_headers  # per-request headers (CORS) cannot go into shared bytes
    ):
        # The common answer after a fan-out, built once and shared by every subscriber of the channel.
        conn.respond_shared(messages[0].frame("longpoll", _one_message_answer))
    else:
        conn.respond(200, poll_body(messages, cursor_token(channels, positions), gap))


class LongPoll:
    __slots__ = ("app", "channels", "conn", "positions", "timeout_key", "woken_by")

    transport = "longpoll"

    def __init__(
        self,
        app: Services,
        conn: HttpConnection,
        channels: tuple[str, ...],
        positions: dict[str, MessageId],
        timeout: float,
    ) -> None:
        self.app = app
        self.conn = conn
        self.channels = channels
        self.positions = positions
        self.timeout_key: int | None = app.timeouts.add(self, timeout)
        self.woken_by: Message | None = None

    def _leave(self) -> None:
        if self.timeout_key is not None:
            self.app.timeouts.remove(self, self.timeout_key)
            self.timeout_key = None
        self.app.hub.unwait(self.channels, self)

    def wake(self, message: Message) -> bool:
        if already_seen(message, self.positions):
            return False
        # Leave every channel now (one message per answer, nothing twice); write at the end
        # of the loop turn, after the publisher has had its answer.
        self._leave()
        self.woken_by = message
        self.app.batcher.schedule(self)
        return True

    def flush(self) -> None:
        message, self.woken_by = self.woken_by, None
        if message is not None:
            self.positions[message.channel] = message.id
            answer(self.conn, self.channels, [message], self.positions, message.after_loss)

    def channel_closed(self, channel: str) -> None:
        self._leave()
        self.conn.respond(410, error_body("channel_deleted", f"channel {channel} was deleted", channel=channel))

    def _answer_empty(self) -> None:
        self._leave()
        self.conn.respond(200, poll_body([], cursor_token(self.channels, self.positions)))

    def expire(self) -> None:
        self.timeout_key = None
        self._answer_empty()

    def shutdown(self) -> None:
        if self.woken_by is not None:
            self.flush()
        else:
            self._answer_empty()

    def release(self) -> None:
        self._leave()


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    query = params.query(request)
    cursor = params.cursor(query, "last_id")
    timeout = params.seconds(query, "timeout", app.settings.poll_timeout, app.settings.max_poll_timeout)

    def answer_or_wait(batch: Batch) -> None:
        if batch.gaps:
            app.stats.gaps_served += 1
        if batch.messages or batch.gaps or timeout == 0 or conn.stopping:
            answer(conn, channels, batch.messages, batch.positions, bool(batch.gaps))
            return
        waiter = LongPoll(app, conn, channels, batch.positions, timeout)
        try:
            app.hub.wait(channels, waiter)  # (a long-poll answered at once holds no channel)
        except OverCapacity as exc:
            waiter.release()
            conn.respond_error(http_error(exc))
            return
        conn.hold(waiter)

    app.relay.read(conn, channels, cursor, answer_or_wait, failing(conn))
