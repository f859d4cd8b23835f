"""HTTP/1.1 serialisation (tidings.web.h1): exact bytes, with the Date line pinned (the clocks
where the module reads them), parsed back where a reader would."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime

import httptools
import pytest

from tidings.web import h1

DATE = b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n"


def pinned(response: bytes) -> bytes:
    """`response` with its Date line replaced by DATE. (Rewritten after the fact, not patched in
    `h1`: a compiled h1 calls its own functions directly.)"""
    pinned, count = re.subn(rb"Date: [^\r]*\r\n", DATE, response, count=1)
    assert count == 1, response
    return pinned


def test_status_lines_name_their_reason_and_unknown_statuses_still_serialise() -> None:
    assert h1.status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert h1.status_line(431) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert h1.status_line(299) == b"HTTP/1.1 299 Unknown\r\n"
    assert h1.status_line(404) is h1.status_line(404)  # built once


def test_the_date_line_is_formatted_once_per_wall_clock_second(monkeypatch: pytest.MonkeyPatch) -> None:
    wall, steady = [1_796_083_199.75], [500.0]  # 2026-11-30 23:59:59.75 UTC
    monkeypatch.setattr(h1, "time", lambda: wall[0])
    monkeypatch.setattr(h1, "monotonic", lambda: steady[0])
    monkeypatch.setattr(h1, "_date_stale_at", 0.0)
    first = h1.date_header()
    assert first == b"Date: Mon, 30 Nov 2026 23:59:59 GMT\r\n"
    assert parsedate_to_datetime(first[6:-2].decode()).timestamp() == 1_796_083_199
    wall[0] += 0.2
    steady[0] += 0.2
    assert h1.date_header() is first  # the same second: the same bytes
    wall[0] += 0.1
    steady[0] += 0.1
    assert h1.date_header() == b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n"


def test_a_response_has_length_type_no_store_and_closes_only_when_told() -> None:
    assert pinned(h1.response_bytes(201, b'{"a":1}')) == (
        b"HTTP/1.1 201 Created\r\n" + DATE + b"Content-Type: application/json\r\nContent-Length: 7\r\n"
        b'Cache-Control: no-store\r\n\r\n{"a":1}'
    )
    closing = h1.response_bytes(503, b"x", b"text/plain", keep_alive=False, extra_headers=b"Retry-After: 1\r\n")
    assert closing.endswith(
        b"Content-Type: text/plain\r\nContent-Length: 1\r\nCache-Control: no-store\r\n"
        b"Retry-After: 1\r\nConnection: close\r\n\r\nx"
    )


def test_the_answer_to_head_keeps_the_headers_and_leaves_out_the_body() -> None:
    full = pinned(h1.response_bytes(200, b"hello"))
    head = pinned(h1.response_bytes(200, b"hello", head_only=True))
    assert full == head + b"hello" and b"Content-Length: 5\r\n" in head


def test_a_shared_answer_completed_for_sending_is_a_whole_response() -> None:
    answer = h1.shared_answer(b'{"messages":[]}')
    assert pinned(h1.shared_response(answer)) == pinned(h1.response_bytes(200, b'{"messages":[]}'))


def test_error_bodies_are_json_with_a_code_a_detail_and_any_fields() -> None:
    body = h1.error_body("channel_deleted", "channel a was deleted", channel="a")
    assert json.loads(body) == {"error": "channel_deleted", "detail": "channel a was deleted", "channel": "a"}


def test_a_chunked_stream_parses_back_to_its_data() -> None:
    data = (
        h1.stream_head(b"text/event-stream", b"X-Extra: 1\r\n", chunked=True)
        + h1.chunk(b"hello")
        + h1.chunk(b"x" * 300)
        + h1.stream_end(b"bye", chunked=True)
    )
    received: list[bytes] = []
    headers: dict[bytes, bytes] = {}
    done: list[bool] = []

    class Reader:
        def on_header(self, name: bytes, value: bytes) -> None:
            headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            received.append(body)

        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(Reader())
    parser.feed_data(data)
    assert parser.get_status_code() == 200 and done == [True]
    assert b"".join(received) == b"hello" + b"x" * 300 + b"bye"
    assert headers[b"transfer-encoding"] == b"chunked" and headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-extra"] == b"1" and headers[b"cache-control"] == b"no-store"


def test_an_unchunked_stream_ends_with_its_last_bytes_alone() -> None:
    head = h1.stream_head(b"application/x-ndjson", b"", chunked=False)
    assert head.endswith(b"Connection: close\r\n\r\n") and b"Transfer-Encoding" not in head
    assert h1.stream_end(b"bye", chunked=False) == b"bye"
    assert h1.stream_end(b"", chunked=False) == b""
    assert h1.stream_end(b"", chunked=True) == h1.LAST_CHUNK == b"0\r\n\r\n"
    assert h1.chunk(b"0123456789abcdef!") == b"11\r\n0123456789abcdef!\r\n"
