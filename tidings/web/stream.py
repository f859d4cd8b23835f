"""GET /stream/{channels}: one long chunked response. NDJSON by default (one message per
line, with the cursor to resume after it as "last_id"; control lines carry an "event" key,
blank lines are keep-alives); with ?format=html or a browser's Accept: text/html, a growing
HTML page with one escaped <div> per message, its cursor in data-last-id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.web import params
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, HttpError, Request
from tidings.web.streaming import HTML, NDJSON, Stream, StreamFormat

if TYPE_CHECKING:
    from tidings.web.types import Services


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    query = params.query(request)
    fmt: StreamFormat
    wanted = query.get("format")
    if wanted == "html" or (wanted is None and "text/html" in request.header(b"accept")):
        fmt = HTML
    elif wanted in (None, "ndjson", "json"):
        fmt = NDJSON
    else:
        raise HttpError(400, "invalid_parameter", "format must be ndjson or html")
    cursor = params.cursor(query, "last_id")
    listen = params.flag(query, "presence")
    stream = Stream(app, conn, channels, fmt, who=request.identity)
    app.relay.read(conn, channels, cursor, lambda batch: stream.begin(batch, listen), failing(conn), limit=None)
