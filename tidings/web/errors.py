"""The domain's errors as HTTP answers: the one place that gives each its status."""

from __future__ import annotations

from collections.abc import Callable

from tidings.errors import BrokerUnavailable, InvalidInput, OverCapacity, TidingsError
from tidings.web.http import HttpConnection, HttpError

# A memory cap of this process reached (`OverCapacity`): not 503, the server is available (what
# exists keeps working) and no honest Retry-After can be given; storage for this request is what
# is missing.
INSUFFICIENT_STORAGE = 507


def http_error(error: Exception) -> HttpError:
    """The answer for `error`: its own status for an HttpError, the status of its kind for the
    rest of the hierarchy (tidings.errors), 500 for anything else (a bug)."""
    if isinstance(error, HttpError):
        return error
    if isinstance(error, InvalidInput):
        return HttpError(400, error.code, error.detail)
    if isinstance(error, OverCapacity):
        return HttpError(INSUFFICIENT_STORAGE, error.code, error.detail)
    if isinstance(error, BrokerUnavailable):
        return HttpError(503, error.code, error.detail)
    if isinstance(error, TidingsError):
        return HttpError(500, error.code, error.detail)
    return HttpError(500, "internal_error", "the server failed to handle the request")


def failing(conn: HttpConnection) -> Callable[[Exception], None]:
    """A relay's `fail` for the request on `conn`: answer it with the error's status."""
    return lambda error: conn.respond_error(http_error(error))
