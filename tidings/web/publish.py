"""POST /pub/{channel} publishes; DELETE /pub/{channel} deletes a channel and ends its
subscriptions. Both go through the broker, so they reach every process on the bus."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from tidings.brokers import BrokerUnavailable
from tidings.hub import JSONValue, encode_json, validate_channel
from tidings.web.http import HttpConnection, HttpError, Request, error_body

if TYPE_CHECKING:
    from tidings.web.app import App

log = logging.getLogger("tidings")


def message_data(request: Request) -> JSONValue:
    """A JSON body is parsed, a form body becomes an object of its fields, anything else is
    a UTF-8 string."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_body", "the message body is not valid UTF-8") from None
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if content_type == "application/x-www-form-urlencoded":
        fields: dict[str, JSONValue] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            previous = fields.get(key)
            if previous is None:
                fields[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                fields[key] = [previous, value]
        return fields
    return text


def publish(app: App, request: Request, conn: HttpConnection, channel: str) -> None:
    validate_channel(channel)
    app.spawn(_publish(app, conn, channel, message_data(request)))


async def _publish(app: App, conn: HttpConnection, channel: str, data: JSONValue) -> None:
    try:
        result = await app.broker.publish(channel, data)
    except BrokerUnavailable as exc:
        conn.respond(503, error_body("broker_unavailable", str(exc)))
        return
    except Exception:
        log.exception("publish to %s failed", channel)
        conn.respond(500, error_body("internal_error", "the publish failed"))
        return
    body = encode_json({"id": str(result.id), "channel": channel, "subscribers": result.subscribers})
    conn.respond(201 if result.subscribers else 202, body)


def delete(app: App, request: Request, conn: HttpConnection, channel: str) -> None:
    validate_channel(channel)
    app.spawn(_delete(app, conn, channel))


async def _delete(app: App, conn: HttpConnection, channel: str) -> None:
    try:
        told = await app.broker.delete(channel)
    except BrokerUnavailable as exc:
        conn.respond(503, error_body("broker_unavailable", str(exc)))
        return
    if told is None:
        conn.respond(404, error_body("not_found", f"no channel {channel!r}"))
        return
    conn.respond(200, encode_json({"channel": channel, "deleted": True, "subscribers": told}))
