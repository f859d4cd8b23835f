"""The Origin check: a page on an origin that is neither this server's nor in --cors-origin cannot
open a WebSocket, publish or delete — with or without the user's cookie. Clients: httpx and the
`websockets` client, sending the Origin a browser would (the browser itself: tests/static/test_origin_browser.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from conftest import ServerProcess
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tidings.auth import mint

SECRET = "origin-test-secret-0123456789-abcdef"


def handshake_status(srv: ServerProcess, path: str, origin: str | None, headers: dict[str, str] | None = None) -> int:
    """101 when the WebSocket opens, else the refusal's status (whose body must be a JSON error)."""

    async def attempt() -> int:
        try:
            async with connect(f"ws://{srv.host}:{srv.port}{path}", origin=origin, additional_headers=headers):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as exc:
            error = json.loads(exc.response.body)["error"]
            assert error == "origin_not_allowed" if exc.response.status_code == 403 else error, error
            return exc.response.status_code

    return asyncio.run(attempt())


def buffered(client: httpx.Client, channel: str, headers: dict[str, str] | None = None) -> int:
    count = client.get(f"/channels/{channel}", headers=headers).json()["buffered"]
    assert isinstance(count, int)
    return count


def test_without_cors_origin_only_this_servers_own_pages_may_act(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()
    own = f"http://{srv.host}:{srv.port}"
    foreign = f"http://{srv.host}:{srv.port + 1}"  # same host, another port: the same site, another origin
    assert handshake_status(srv, f"/ws/{channel}", origin=foreign) == 403
    assert handshake_status(srv, f"/ws/{channel}", origin="null") == 403  # sandboxed frames, file:// pages
    assert handshake_status(srv, f"/ws/{channel}", origin=own) == 101
    assert handshake_status(srv, f"/ws/{channel}", origin=None) == 101  # not a browser: unaffected
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        refused = client.post(f"/pub/{channel}", data={"message": "forged"}, headers={"Origin": foreign})
        assert refused.status_code == 403 and refused.json()["error"] == "origin_not_allowed"
        assert client.delete(f"/pub/{channel}", headers={"Origin": foreign}).status_code == 403
        assert buffered(client, channel) == 0
        assert client.post(f"/pub/{channel}", data={"message": "mine"}, headers={"Origin": own}).status_code == 202
        assert client.post(f"/pub/{channel}", content=b"curl").status_code == 202
        assert buffered(client, channel) == 2
        # Reading stays as it was: the browser, not the server, keeps other origins from reading.
        assert client.get(f"/sub/{channel}?timeout=0&last_id=oldest", headers={"Origin": foreign}).status_code == 200


def test_the_users_cookie_acts_only_for_listed_origins(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--auth-secret", SECRET, "--cors-origin", "http://allowed.example")
    cookie = {"Cookie": "tidings_token=" + mint(SECRET, [channel], [channel], 60)}
    evil = f"http://{srv.host}:{srv.port + 1}"
    assert handshake_status(srv, f"/ws/{channel}", origin=evil, headers=cookie) == 403
    assert handshake_status(srv, f"/ws/{channel}", origin="http://allowed.example", headers=cookie) == 101
    assert handshake_status(srv, f"/ws/{channel}", origin="HTTP://Allowed.Example:80", headers=cookie) == 101
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        refused = client.post(f"/pub/{channel}", data={"m": "x"}, headers={"Origin": evil, **cookie})
        assert refused.status_code == 403 and refused.json()["error"] == "origin_not_allowed"
        allowed = client.post(
            f"/pub/{channel}", data={"m": "x"}, headers={"Origin": "http://allowed.example", **cookie}
        )
        assert allowed.status_code == 202
        # It may act with the cookie, so it may read with it too.
        assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert buffered(client, channel, cookie) == 1


def test_any_origin_may_act_but_never_with_the_cookie(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--auth-secret", SECRET, "--cors-origin", "*")
    token = mint(SECRET, [channel], [channel], 60)
    page = "http://elsewhere.example"
    assert handshake_status(srv, f"/ws/{channel}", origin=page, headers={"Cookie": f"tidings_token={token}"}) == 401
    assert handshake_status(srv, f"/ws/{channel}?token={token}", origin=page) == 101
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        by_cookie = client.post(
            f"/pub/{channel}", content=b"x", headers={"Origin": page, "Cookie": f"tidings_token={token}"}
        )
        assert by_cookie.status_code == 401
        by_header = client.post(
            f"/pub/{channel}", content=b"x", headers={"Origin": page, "Authorization": f"Bearer {token}"}
        )
        assert by_header.status_code == 202
        assert by_header.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in by_header.headers
        own = f"http://{srv.host}:{srv.port}"
        same_origin = client.post(
            f"/pub/{channel}", content=b"x", headers={"Origin": own, "Cookie": f"tidings_token={token}"}
        )
        assert same_origin.status_code == 202


@pytest.mark.parametrize(
    ("flag", "spec"),
    [
        ("--forwarded-allow-ips", "10.0.0.0/33"),
        ("--forwarded-allow-ips", "nonsense"),
        ("--cors-origin", "127.0.0.1:8081"),  # no scheme: would never match what a browser sends
        ("--cors-origin", "https://app.example/path"),
        ("--cors-origin", "null"),
    ],
)
def test_a_setting_that_names_no_address_or_origin_is_one_line(flag: str, spec: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", flag, spec],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and flag in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
