"""Query parameters shared by the subscribe transports."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from urllib.parse import unquote_plus

from tidings.hub import Cursor
from tidings.web.http import HttpError, Request

_NO_PARAMS: Mapping[str, str] = {}
_CACHED_QUERY_CHARS = 256


def query(request: Request) -> Mapping[str, str]:
    """The query parameters (the last of repeated ones); percent-decoding only where needed.
    Shared between requests with the same query string: read, never modify."""
    text = request.query_string
    if not text:
        return _NO_PARAMS
    if len(text) > _CACHED_QUERY_CHARS:
        return _parse_query(text)
    return _parse_query_cached(text)


def _parse_query(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in text.split("&"):
        key, _, value = part.partition("=")
        if "%" in part or "+" in part:
            try:
                key = unquote_plus(key, errors="strict")
                value = unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                raise HttpError(400, "bad_request", "the query string is not valid UTF-8") from None
        if key:
            params[key] = value
    return params


# Long-poll clients repeat the same few query strings (same cursor after each fan-out).
_parse_query_cached = functools.lru_cache(maxsize=1024)(_parse_query)


def cursor(params: Mapping[str, str], *names: str, header: bytes = b"", request: Request | None = None) -> Cursor:
    """The cursor from the first of the named parameters present (or the header)."""
    token: str | None = None
    if header and request is not None:
        token = request.header(header) or None
    for name in names:
        if name in params:
            token = params[name]
            break
    return Cursor.parse(token)


def seconds(params: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    """A duration parameter; asking for more than `maximum` gets `maximum` (a client cannot know
    the server's limit, and a proxy in front cuts holds longer than its own read timeout)."""
    text = params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise HttpError(400, "invalid_parameter", f"{name} must be a number of seconds") from None
    if not value >= 0:  # (also NaN)
        raise HttpError(400, "invalid_parameter", f"{name} must be a number of seconds, 0 or more")
    return min(value, maximum)


def flag(params: Mapping[str, str], name: str) -> bool:
    """A yes/no parameter: 1, true, yes or bare (`?presence`); 0, false, no or absent."""
    text = params.get(name)
    if text is None or text in ("0", "false", "no"):
        return False
    if text in ("1", "true", "yes", ""):
        return True
    raise HttpError(400, "invalid_parameter", f"{name} must be 1 or 0")


def count(params: Mapping[str, str], name: str, maximum: int) -> int:
    """A whole number from 0 to `maximum` (the default when absent)."""
    text = params.get(name)
    if text is None:
        return maximum
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) > maximum:
        raise HttpError(400, "invalid_parameter", f"{name} must be a whole number from 0 to {maximum}")
    return int(text)


_CLIENT_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def client_name(params: Mapping[str, str], name: str) -> str | None:
    """An opaque name a client gives itself (1-64 of A-Za-z0-9_-), or None when absent."""
    text = params.get(name)
    if text is None:
        return None
    if _CLIENT_NAME.fullmatch(text) is None:
        raise HttpError(400, "invalid_parameter", f"{name} is 1-64 characters of A-Za-z0-9_-")
    return text
