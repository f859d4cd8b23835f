"""GET /channels/{channel} and GET /healthz."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.hub import encode_json, validate_channel, wall_clock_ms
from tidings.web.http import HttpConnection

if TYPE_CHECKING:
    from tidings.web.app import App


def channel(app: App, conn: HttpConnection, name: str) -> None:
    info = app.hub.info(validate_channel(name), wall_clock_ms())
    body = {
        "channel": info.channel,
        "subscribers": info.subscribers,
        "buffered": info.buffered,
        "last_id": str(info.last_id),
    }
    conn.respond(200, encode_json(body))


def health(app: App, conn: HttpConnection) -> None:
    healthy = app.broker.healthy
    body = {"status": "ok" if healthy else "unavailable", "broker": app.broker.name}
    conn.respond(200 if healthy else 503, encode_json(body))
