"""GET /sse/{channels} (and GET /sub/... with Accept: text/event-stream): Server-Sent Events.

Each message is one event whose `id:` is the cursor to resume from (the message id for one
channel, the combined cursor for several), resumed with Last-Event-ID or ?last_event_id=."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tidings.hub import Message
from tidings.web import params
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, Request
from tidings.web.streaming import Stream, StreamFormat

if TYPE_CHECKING:
    from tidings.web.types import Services


class SSEFormat(StreamFormat):
    key = "sse"
    content_type = b"text/event-stream; charset=utf-8"
    heartbeat = b": heartbeat\n\n"

    def preamble(self) -> bytes:
        return b": tidings\n\n"

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        return b"id: %s\ndata: %s\n\n" % (token.encode(), message.json)

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(payload, separators=(",", ":")).encode())


FORMAT = SSEFormat()


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    query = params.query(request)
    cursor = params.cursor(query, "last_event_id", "last_id", header=b"last-event-id", request=request)
    stream = Stream(app, conn, channels, FORMAT)
    app.relay.read(conn, channels, cursor, stream.begin, failing(conn), limit=None)
