"""The memory caps, --max-channels and --max-buffered-bytes, through real requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from conftest import ServerProcess, scrape, subscribers, wait_until
from rawhttp import Connection, read_events
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


def _refused(answer: httpx.Response, error: str) -> None:
    assert answer.status_code == 507, answer.text
    body = answer.json()
    assert body == {"error": error, "detail": body["detail"]} and isinstance(body["detail"], str), body


def test_channels_beyond_the_cap_are_refused_and_those_held_keep_working(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--max-channels", "3")
    held = f"{channel}-held"

    async def scenario() -> None:
        stream = await Connection.open(srv.host, srv.port)
        await stream.start_stream(f"/sse/{held}")
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            await asyncio.to_thread(wait_until, lambda: subscribers(client, held) == 1, 5, "the SSE subscriber")
            # Publishes to new channels until the cap: the subscriber's channel is one of the three.
            answers = [client.post(f"/pub/{channel}-{i}", json=i) for i in range(3)]
            assert [a.status_code for a in answers] == [202, 202, 507]
            _refused(answers[2], "too_many_channels")
            # What is held keeps working: publishing to it, and its subscriber receives.
            assert client.post(f"/pub/{held}", json="still here").status_code == 201
            assert client.post(f"/pub/{channel}-1", json="again").status_code == 202
            events = await read_events(stream, "still here")
            assert json.loads(events[-1]["data"])["data"] == "still here"
            # A subscribe that would create a channel is refused; one to a held channel is not, nor
            # a long-poll answered at once (it holds nothing).
            _refused(client.get(f"/sub/{channel}-new?timeout=5"), "too_many_channels")
            assert client.get(f"/sub/{channel}-new?timeout=0").json()["messages"] == []
            _refused(client.get(f"/sse/{channel}-new"), "too_many_channels")
            poll = client.get(f"/sub/{channel}-0?timeout=0&last_id=oldest")
            assert poll.status_code == 200 and [m["data"] for m in poll.json()["messages"]] == [0]
            with pytest.raises(InvalidStatus) as handshake:
                await connect(f"ws://{srv.host}:{srv.port}/ws/{channel}-new")
            assert handshake.value.response.status_code == 507
            # On a WebSocket: an error frame, and the socket goes on.
            async with connect(f"ws://{srv.host}:{srv.port}/ws/{channel}-0") as ws:
                await ws.send(json.dumps({"publish": {"channel": f"{channel}-new", "data": 1}}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert frame == {"type": "error", "error": "too_many_channels", "detail": frame["detail"]}, frame
                await ws.send(json.dumps({"subscribe": [f"{channel}-new"]}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert frame["type"] == "error" and frame["error"] == "too_many_channels", frame
                await ws.send(json.dumps({"publish": {"channel": f"{channel}-0", "data": 2}}))
                types = {json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] for _ in range(2)}
                assert types == {"message", "published"}
            metrics = scrape(srv)
            assert metrics[("tidings_channels", ())] == 3 and metrics[("tidings_channels_limit", ())] == 3
            assert metrics[("tidings_publish_errors_total", ())] == 2  # the POST and the WebSocket's
            # A deleted channel makes room.
            assert client.delete(f"/pub/{channel}-1").status_code == 200
            assert client.post(f"/pub/{channel}-new", json="room").status_code == 202
            _refused(client.post(f"/pub/{channel}-newer", json="none"), "too_many_channels")
        stream.close()

    asyncio.run(scenario())


def test_buffered_bytes_beyond_the_cap_are_refused_until_buffers_expire(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    limit = 20_000
    srv = start_server("--max-buffered-bytes", str(limit), "--buffer-size", "2", "--buffer-ttl", "4")
    held = f"{channel}-held"
    text = "x" * 1000  # about 1.5 KB buffered; 3.8 KB once framed for an SSE subscriber

    async def scenario() -> None:
        stream = await Connection.open(srv.host, srv.port)
        await stream.start_stream(f"/sse/{held}")
        with httpx.Client(base_url=srv.url, timeout=10, headers={"Content-Type": "text/plain"}) as client:
            await asyncio.to_thread(wait_until, lambda: subscribers(client, held) == 1, 5, "the SSE subscriber")
            for i in range(2):  # the held channel's buffer is full: newer messages take the oldest's place
                assert client.post(f"/pub/{held}", content=f"{i}{text}").status_code == 201
            for i in range(100):
                answer = client.post(f"/pub/{channel}-{i}", content=text)
                if answer.status_code != 202:
                    break
            _refused(answer, "buffers_full")
            assert 3 < i < 20, i
            metrics = scrape(srv)
            assert limit - 4000 < metrics[("tidings_buffered_bytes", ())] <= limit
            assert metrics[("tidings_buffered_bytes_limit", ())] == limit
            # A channel that exists gives up its own older messages for a new one (a flood of new
            # channels cannot silence it); a message bigger than all its buffer holds is refused.
            assert client.post(f"/pub/{channel}-0", content=text).status_code == 202
            _refused(client.post(f"/pub/{channel}-0", content=text * 3), "buffers_full")
            assert client.post(f"/pub/{held}", content=f"2{text}").status_code == 201
            events = await read_events(stream, f"2{text}")
            assert [json.loads(e["data"])["data"][0] for e in events] == ["0", "1", "2"]
            assert scrape(srv)[("tidings_buffered_bytes", ())] <= limit
            # Once the buffers expire, there is room again.
            later = f"/pub/{channel}-later"
            wait_until(lambda: client.post(later, content=text).status_code == 202, 15, "room", interval=0.1)
            assert scrape(srv)[("tidings_buffered_bytes", ())] < limit / 2
        stream.close()

    asyncio.run(scenario())
