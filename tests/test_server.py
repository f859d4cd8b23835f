"""Process-level behaviour: graceful shutdown on SIGTERM, settings from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from conftest import ServerProcess
from rawhttp import Connection, request


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


def test_settings_come_from_tidings_environment_variables(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server(env={"TIDINGS_BUFFER_SIZE": "2"})
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for i in range(3):
            client.post(f"/pub/{channel}", json=i)
        body = client.get(f"/sub/{channel}", params={"last_id": "oldest"}).json()
    assert [m["data"] for m in body["messages"]] == [1, 2]
