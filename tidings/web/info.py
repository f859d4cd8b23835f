"""GET /channels/{channel} and GET /healthz."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.hub import ChannelInfo, encode_json, validate_channel, wall_clock_ms
from tidings.web.http import HttpConnection

if TYPE_CHECKING:
    from tidings.web.app import App


def channel(app: App, conn: HttpConnection, name: str) -> None:
    validate_channel(name)
    app.call_broker(conn, lambda: app.broker.info(name, wall_clock_ms()), lambda info: _answer_info(conn, info))


def _answer_info(conn: HttpConnection, info: ChannelInfo) -> None:
    body = {
        "channel": info.channel,
        "subscribers": info.subscribers,
        "buffered": info.buffered,
        "last_id": str(info.last_id),
    }
    conn.respond(200, encode_json(body))


def health(app: App, conn: HttpConnection) -> None:
    healthy = app.broker.healthy
    body = {"status": "ok" if healthy else "unavailable", "broker": app.broker.name, **app.broker.stats()}
    conn.respond(200 if healthy else 503, encode_json(body))
