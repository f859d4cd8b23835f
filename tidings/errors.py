"""Every error the server raises on purpose, in one hierarchy.

Each carries `code` (what a client sees as `"error"`, e.g. ``invalid_cursor``) and `detail` (a
sentence). Nothing here knows about HTTP: the web layer gives each kind its status (invalid input
400, a memory cap 507, the bus away 503) and adds errors of its own that exist only there
(`tidings.web.http.HttpError`: a status, response headers, whether to close the connection).

    TidingsError
    ├── InvalidInput          a request names a bad channel or cursor (also a ValueError)
    │   ├── InvalidChannel
    │   └── InvalidCursor
    ├── OverCapacity          storing more would pass a memory cap of this process
    │   ├── TooManyChannels
    │   └── BuffersFull
    ├── BrokerUnavailable     the bus cannot take a publish right now
    ├── BrokerFailed          a broker call failed otherwise (a bug, a broken bus)
    └── HttpError             (tidings.web.http) an answer only HTTP has words for
"""

from __future__ import annotations

from typing import Final


class TidingsError(Exception):
    """`code` names the problem for programs, `detail` explains it to people."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(TidingsError, ValueError):
    """Bad input from a client. (A ValueError too: parsing code catches those alike.)"""

    code = "bad_request"


class InvalidChannel(InvalidInput):
    code = "invalid_channel"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"


class OverCapacity(TidingsError):
    """Storing more would take this process past one of its memory caps (`Hub.max_channels`,
    `Hub.max_buffered_bytes`); `code` names the cap."""

    code = "over_capacity"


# Named apart from its class: a refusal that crossed the bus is matched by its code alone.
TOO_MANY_CHANNELS: Final = "too_many_channels"


class TooManyChannels(OverCapacity):
    code = TOO_MANY_CHANNELS


class BuffersFull(OverCapacity):
    code = "buffers_full"


class BrokerUnavailable(TidingsError):
    """The bus cannot take a publish right now."""

    code = "broker_unavailable"


class BrokerFailed(TidingsError):
    """A broker call failed other than by refusing (a bug or a broken bus; logged where it happened)."""

    code = "internal_error"


__all__ = [
    "BrokerFailed",
    "BrokerUnavailable",
    "BuffersFull",
    "InvalidChannel",
    "InvalidCursor",
    "InvalidInput",
    "OverCapacity",
    "TidingsError",
    "TooManyChannels",
]
