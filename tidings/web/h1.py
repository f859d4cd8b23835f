"""HTTP/1.1 answers as bytes: status lines, the Date header, whole responses, the shared
long-poll answer, stream heads and chunked framing. Pure functions (the Date line reads the
clock): no connection, no socket; `tidings.web.http` writes what they return.

Every answer carries `Cache-Control: no-store` (what a subscriber reads is live) and a Date
(RFC 9110 6.6.1); a response says `Connection: close` when the connection ends after it.
"""

from __future__ import annotations

import json
from email.utils import formatdate
from http import HTTPStatus
from time import monotonic, time

JSON_TYPE = b"application/json"

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>` and its CRLF, built once per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode()
    return line


_OK = status_line(200)
_date_line = b""
_date_stale_at = 0.0  # monotonic time of the next wall-clock second: no clock step can freeze the line


def date_header() -> bytes:
    """The `Date` header line every answer carries (RFC 9110 6.6.1), formatted at most once a second."""
    if monotonic() < _date_stale_at:
        return _date_line
    return _next_date_header()


def _next_date_header() -> bytes:
    global _date_line, _date_stale_at
    wall = time()
    _date_stale_at = monotonic() + 1.0 - wall % 1.0
    _date_line = b"Date: %s\r\n" % formatdate(int(wall), usegmt=True).encode()
    return _date_line


def response_bytes(
    status: int,
    body: bytes,
    content_type: bytes = JSON_TYPE,
    keep_alive: bool = True,
    extra_headers: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A whole answer; `extra_headers` are header lines, each ending in CRLF. `head_only` (the
    answer to HEAD) keeps the headers, Content-Length included, and leaves out the body."""
    return b"%s%sContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n%s%s\r\n%s" % (
        status_line(status),
        date_header(),
        content_type,
        len(body),
        extra_headers,
        b"" if keep_alive else b"Connection: close\r\n",
        b"" if head_only else body,
    )


def shared_answer(body: bytes) -> bytes:
    """A keep-alive 200 JSON answer without its status line and Date: bytes built once and sent
    to many connections, maybe much later (`shared_response` adds both when one is sent)."""
    return b"Content-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n\r\n%s" % (
        JSON_TYPE,
        len(body),
        body,
    )


def shared_response(answer: bytes) -> bytes:
    """The answer from `shared_answer`, completed for sending now."""
    return _OK + date_header() + answer


def error_body(error: str, detail: str, **fields: str) -> bytes:
    """Every error answer: a code, a sentence for people, and any fields a client acts on."""
    return json.dumps({"error": error, "detail": detail, **fields}).encode()


# -- streams: an answer with no length, chunked on HTTP/1.1 and ended by closing on HTTP/1.0


def stream_head(content_type: bytes, extra_headers: bytes, chunked: bool) -> bytes:
    """The head of a 200 stream. `X-Accel-Buffering: no` asks nginx in front not to buffer it."""
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
    return b"%s%sContent-Type: %s\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\n%s%s\r\n" % (
        _OK,
        date_header(),
        content_type,
        extra_headers,
        framing,
    )


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP chunk (RFC 9112 7.1); `data` must not be empty (that is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def stream_end(final: bytes, chunked: bool) -> bytes:
    """A stream's last bytes: `final`, then for a chunked stream the last chunk."""
    if not chunked:
        return final
    return chunk(final) + LAST_CHUNK if final else LAST_CHUNK
