"""CORS and connection/subscriber limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import websockets
from conftest import ServerProcess, subscribers, wait_until
from rawhttp import Connection


def test_cors_headers_only_for_allowed_origins(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--cors-origin", "https://ok.example,https://also.example")
    allowed = {"Origin": "https://ok.example"}
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        answer = client.get("/healthz", headers=allowed)
        assert answer.headers["access-control-allow-origin"] == "https://ok.example"
        assert "origin" in answer.headers["vary"].lower()
        assert (
            "access-control-allow-origin"
            not in client.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        )
        assert "access-control-allow-origin" not in client.get("/healthz").headers
        preflight = client.options(
            f"/pub/{channel}", headers={**allowed, "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "content-type"},
        )  # fmt: skip
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

    async def scenario() -> None:
        # A long-poll woken by a fan-out, and a stream, carry the header too.
        held = await Connection.open(srv.host, srv.port)
        held.send("GET", f"/sub/{channel}?timeout=30", headers=allowed)
        stream = await Connection.open(srv.host, srv.port)
        head = await stream.start_stream(f"/sse/{channel}", headers=allowed)
        assert head.headers["access-control-allow-origin"] == "https://ok.example"
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            await asyncio.to_thread(wait_until, lambda: subscribers(client, channel) == 2, 5, "both subscribers")
            client.post(f"/pub/{channel}", json="hello")
        answer = await held.response()
        assert answer.status == 200 and answer.headers["access-control-allow-origin"] == "https://ok.example"
        held.close()
        stream.close()

    asyncio.run(scenario())


def test_connections_beyond_the_limit_get_503(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--max-connections", "3")

    async def scenario() -> None:
        held = [await Connection.open(srv.host, srv.port) for _ in range(3)]
        for conn in held:  # all three really are in use
            assert (await conn.request("GET", "/healthz")).status == 200
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        async with asyncio.timeout(5):
            refused = await reader.read()
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in refused
        writer.close()
        held[0].close()
        with httpx.Client(base_url=srv.url, timeout=10) as client:  # room again once one leaves
            await asyncio.to_thread(wait_until, lambda: _answers(client), 5, "a free connection slot")
        for conn in held[1:]:
            conn.close()

    asyncio.run(scenario())


def test_subscribers_per_channel_are_capped(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--max-subscribers-per-channel", "2")

    async def scenario() -> None:
        held = [await Connection.open(srv.host, srv.port) for _ in range(2)]
        for conn in held:
            conn.send("GET", f"/sub/{channel}?timeout=30")
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            await asyncio.to_thread(wait_until, lambda: subscribers(client, channel) == 2, 5, "two subscribers")
            third = client.get(f"/sse/{channel}")
            assert third.status_code == 403 and third.json()["error"] == "too_many_subscribers"
            assert client.get(f"/sub/{channel}-other?timeout=0").status_code == 200  # other channels are fine
        # A WebSocket asking by command gets an error frame and keeps its socket.
        async with websockets.connect(f"ws://{srv.host}:{srv.port}/ws/{channel}-other") as ws:
            await ws.send(json.dumps({"subscribe": [channel]}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame == {"type": "error", "error": "too_many_subscribers", "detail": frame["detail"]}, frame
            await ws.send(json.dumps({"subscribe": [f"{channel}-third"]}))
            await ws.send(json.dumps({"publish": {"channel": f"{channel}-third", "data": 1}}))
            types = [json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] for _ in range(2)]
            assert sorted(types) == ["message", "published"], types
        for conn in held:
            conn.close()

    asyncio.run(scenario())


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
