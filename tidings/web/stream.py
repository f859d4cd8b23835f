"""GET /stream/{channels}: one long chunked response. NDJSON by default (one message per
line, with the cursor to resume after it as "last_id"; control lines carry an "event" key,
blank lines are keep-alives); with ?format=html or a browser's Accept: text/html, a growing
HTML page with one escaped <div> per message, its cursor in data-last-id."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from tidings.hub import Message
from tidings.web import params
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, HttpError, Request
from tidings.web.streaming import Stream, StreamFormat, event_json

if TYPE_CHECKING:
    from tidings.web.types import Services


class NDJSONFormat(StreamFormat):
    key = "ndjson"
    content_type = b"application/x-ndjson"
    heartbeat = b"\n"

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        # The message object with one key more: {"id", "channel", "data", "time", "last_id"}.
        return b'%s,"last_id":"%s"}\n' % (message.json[:-1], token.encode())

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        return event_json(name, payload) + b"\n"


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
    content_type = b"text/html; charset=utf-8"
    heartbeat = b"<!-- -->\n"

    def preamble(self) -> bytes:
        return _HTML_HEAD + _HTML_PADDING

    def message_with_cursor(self, message: Message, token: str) -> bytes:
        ident = b"" if message.live else str(message.id).encode()  # (a live message has no id)
        content = message.frame("html/content", _html_content)
        return b'<div class="m" data-id="%s" data-last-id="%s">%s' % (ident, token.encode(), content)

    def event(self, name: str, payload: dict[str, object]) -> bytes:
        text = html.escape(json.dumps(payload, ensure_ascii=False))
        return f'<div class="e" data-event="{name}">{name}: {text}</div>\n'.encode()


NDJSON = NDJSONFormat()
HTML = HTMLFormat()


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
    stream = Stream(app, conn, channels, fmt)
    app.relay.read(conn, channels, cursor, stream.begin, failing(conn), limit=None)
