"""GET /channels/{channel}, GET /channels/{channel}/presence and GET /healthz."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tidings.encoding import encode_json
from tidings.hub import ChannelInfo, JSONValue, validate_channel
from tidings.presence import MAX_LISTED, RemoteView
from tidings.web import params
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, Request

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


def presence(app: Services, request: Request, conn: HttpConnection, name: str) -> None:
    """Who is on channel `name`, over every process (others as they last reported), and who
    asks (`you`: their user, whether the server vouches for it, or null)."""
    limit = params.count(params.query(request), "limit", MAX_LISTED)
    you = request.identity

    def answer(remote: RemoteView) -> None:
        body = app.hub.presence.view(name, remote, limit)
        body["you"] = {"user": you.user, "info": you.info, "verified": you.verified} if you is not None else None
        conn.respond(200, encode_json(body))

    app.relay.presence(name, answer, failing(conn))


def health_figures(app: Services) -> dict[str, JSONValue]:
    """This process's health (a worker's snapshot holds it too, `web/siblings.py`)."""
    broker = app.relay.broker
    return {
        "status": "ok" if broker.healthy else "unavailable",
        "broker": broker.name,
        "pid": os.getpid(),
        "subscribers": sum(ch.subscribers for ch in app.hub.channels.values()),
        **broker.stats(),
    }


def health(app: Services, conn: HttpConnection) -> None:
    """This process's health (its status is the answer's: a load balancer asks the process it
    reaches); a worker of `--workers N` adds every worker's, as each last wrote it."""
    body = health_figures(app)
    siblings = app.siblings
    if siblings is not None:
        workers: list[JSONValue] = [{"worker": siblings.worker, **body}]
        workers += [{"worker": other["worker"], **other["health"]} for other in siblings.others()]
        body["workers"] = workers
    conn.respond(200 if body["status"] == "ok" else 503, encode_json(body))
