"""GET /channels/{channel} and GET /healthz."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tidings.hub import ChannelInfo, encode_json, validate_channel
from tidings.web.errors import failing
from tidings.web.http import HttpConnection

if TYPE_CHECKING:
    from tidings.web.types import Services


def channel(app: Services, conn: HttpConnection, name: str) -> None:
    validate_channel(name)
    app.relay.info(name, lambda info: _answer_info(conn, info), failing(conn))


def _answer_info(conn: HttpConnection, info: ChannelInfo) -> None:
    body = {
        "channel": info.channel,
        "subscribers": info.subscribers,
        "buffered": info.buffered,
        "last_id": str(info.last_id),
    }
    conn.respond(200, encode_json(body))


def health(app: Services, conn: HttpConnection) -> None:
    broker = app.relay.broker
    healthy = broker.healthy
    body = {"status": "ok" if healthy else "unavailable", "broker": broker.name, "pid": os.getpid(), **broker.stats()}
    conn.respond(200 if healthy else 503, encode_json(body))
