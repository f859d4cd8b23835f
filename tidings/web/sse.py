"""GET /sse/{channels} (and GET /sub/... with Accept: text/event-stream): Server-Sent Events.

Each message is one event whose `id:` is the cursor to resume from (the message id for one
channel, the combined cursor for several), resumed with Last-Event-ID or ?last_event_id=."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.web import params
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, Request
from tidings.web.streaming import SSE, Stream

if TYPE_CHECKING:
    from tidings.web.types import Services


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    query = params.query(request)
    cursor = params.cursor(query, "last_event_id", "last_id", header=b"last-event-id", request=request)
    listen = params.flag(query, "presence")
    stream = Stream(app, conn, channels, SSE, who=request.identity)
    app.relay.read(conn, channels, cursor, lambda batch: stream.begin(batch, listen), failing(conn), limit=None)
