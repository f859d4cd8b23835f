"""POST /pub/{channel} publishes; DELETE /pub/{channel} deletes a channel and ends its
subscriptions. Both go through the relay to the broker, so they reach every process on the bus."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from tidings.brokers import Published
from tidings.hub import JSONValue, encode_json, validate_channel
from tidings.web.errors import failing
from tidings.web.http import HttpConnection, HttpError, Request

if TYPE_CHECKING:
    from tidings.web.types import Services


def message_data(request: Request) -> JSONValue:
    """A JSON body is parsed, a form body becomes an object of its fields, anything else is
    a UTF-8 string."""
    content_type = request.header(b"content-type").partition(";")[0].strip().lower()
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


def publish(app: Services, request: Request, conn: HttpConnection, channel: str) -> None:
    validate_channel(channel)
    data = message_data(request)
    app.relay.publish(channel, data, lambda result: _answer_publish(conn, result), failing(conn))


def delete(app: Services, request: Request, conn: HttpConnection, channel: str) -> None:
    validate_channel(channel)
    app.relay.delete(channel, lambda told: _answer_delete(conn, channel, told), failing(conn))


def _answer_publish(conn: HttpConnection, result: Published) -> None:
    # Channel names and ids need no JSON escaping (validated characters, digits).
    body = b'{"id":"%s","channel":"%s","subscribers":%d}' % (
        str(result.id).encode(),
        result.channel.encode(),
        result.subscribers,
    )
    conn.respond(201 if result.subscribers else 202, body)


def _answer_delete(conn: HttpConnection, channel: str, told: int | None) -> None:
    # Every valid name is a channel, empty until used (as GET /channels/{channel} answers), so
    # deleting one that holds nothing succeeds too: whether a broker still kept it is a matter
    # of when it was last reclaimed or expired, not something for a status code to depend on.
    conn.respond(200, encode_json({"channel": channel, "deleted": True, "subscribers": told or 0}))
