"""Process-level behaviour: graceful shutdown on SIGTERM, settings from the environment."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from conftest import RedisProcess, ServerProcess, wait_until
from rawhttp import Connection, request

import tidings


def test_sigterm_answers_held_polls_ends_streams_and_exits_quickly(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()

    async def scenario() -> None:
        poll = await Connection.open(srv.host, srv.port)
        poll.send("GET", f"/sub/{channel}?timeout=60")
        stream = await Connection.open(srv.host, srv.port)
        await stream.start_stream(f"/sse/{channel}")
        idle = await Connection.open(srv.host, srv.port)
        assert (await idle.request("GET", "/healthz")).status == 200
        async with asyncio.timeout(5):
            while (await request(srv.host, srv.port, "GET", f"/channels/{channel}")).json()["subscribers"] != 2:
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        exited = loop.run_in_executor(None, srv.terminate)
        answer = await poll.response(timeout=5)
        assert answer.status == 200
        body = answer.json()
        assert body["messages"] == [] and body["last_id"]
        assert answer.headers.get("connection") == "close"
        async with asyncio.timeout(5):
            while await stream.read_chunk(5):
                pass
            assert await idle.reader.read() == b""
        took = await exited
        assert took < 5, f"shutdown took {took:.1f} s"

    asyncio.run(scenario())
    assert srv.proc.returncode == 0
    assert "stopped" in srv.log()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_sigterm_stops_cleanly_on_every_broker(
    start_server: Callable[..., ServerProcess], request: pytest.FixtureRequest, broker: str
) -> None:
    # (Compiled, a CancelledError suppressed while the Redis broker closed came out of serve.)
    redis: RedisProcess | None = request.getfixturevalue("redis_server") if broker == "redis" else None
    srv = start_server("--broker", redis.url if redis is not None else "memory")
    httpx.post(f"{srv.url}/pub/sigterm", json="kept until the end", timeout=5).raise_for_status()
    srv.terminate()
    log = srv.whole_log()
    assert srv.proc.returncode == 0, log
    assert "stopped" in log and "Traceback" not in log, log


def test_settings_come_from_tidings_environment_variables(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server(env={"TIDINGS_BUFFER_SIZE": "2"})
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for i in range(3):
            client.post(f"/pub/{channel}", json=i)
        body = client.get(f"/sub/{channel}", params={"last_id": "oldest"}).json()
    assert [m["data"] for m in body["messages"]] == [1, 2]


def test_the_start_up_line_says_whether_the_server_runs_compiled(
    start_server: Callable[..., ServerProcess],
) -> None:
    """scripts/test sets TIDINGS_EXPECT_COMPILED for the build it installed: the line must not lie,
    and the suite must really have run on that build."""
    srv = start_server()
    (line,) = [line for line in srv.lines if "listening on" in line]
    build = "compiled" if "(broker: memory, compiled)" in line else "plain Python"
    assert build == "compiled" or "(broker: memory, plain Python)" in line, line
    expected = os.environ.get("TIDINGS_EXPECT_COMPILED")
    if expected is not None:
        assert build == ("compiled" if expected == "1" else "plain Python"), line
        assert tidings.compiled() == (expected == "1"), tidings.__file__


def test_json_logs_and_the_access_log(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--log-format", "json", "--access-log")
    httpx.post(f"{srv.url}/pub/{channel}", json="x", timeout=10)
    httpx.get(f"{srv.url}/nowhere", timeout=10)
    wait_until(lambda: srv.log().count('"tidings.access"') >= 2, 5, "two access log lines")
    entries = [json.loads(line) for line in srv.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    access = [e["message"] for e in entries if e["logger"] == "tidings.access"]
    assert any(f"POST /pub/{channel} 202" in line for line in access)
    assert any("GET /nowhere 404" in line for line in access)


def test_a_bad_setting_is_one_line_and_exit_1() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-format", "xml"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip() == "tidings: --log-format is text or json, not 'xml'"


def test_a_process_out_of_descriptors_stops_accepting_until_connections_close(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    """With 300 descriptors the server holds 150 connections (a small limit is shared half and
    half with what is not a connection): the 151st waits in the kernel's queue instead of the
    server failing to accept it over and over, and is answered once some held ones have closed."""
    srv = start_server(max_fds=300)
    held = []
    try:
        for _ in range(150):
            conn = socket.create_connection((srv.host, srv.port), timeout=10)
            conn.sendall(f"GET /sub/{channel}?timeout=50 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            held.append(conn)
        wait_until(lambda: "not accepting more" in srv.log(), 10, "the server to stop accepting")
        waiting = socket.create_connection((srv.host, srv.port), timeout=10)  # (the kernel completes it)
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        waiting.settimeout(0.3)
        with pytest.raises(TimeoutError):
            waiting.recv(100)  # not accepted, so not answered
        for conn in held[:10]:
            conn.close()
        waiting.settimeout(10)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
        waiting.close()
    finally:
        for conn in held:
            conn.close()
