"""--auth-url: the application's own backend (a real aiohttp app on a local port, checking a
session cookie) decides who may subscribe and publish, on every transport; decisions are
remembered for their ttl; a backend that is down or slow is a 503, never an open door."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from auth_app import BASIC, Backend
from conftest import ServerProcess, wait_until
from rawhttp import Connection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tidings.auth import mint

SECRET = "test-secret-of-some-length-0123456789"


@pytest.fixture
def backend() -> Iterator[Backend]:
    app = Backend()
    yield app
    app.close()


@pytest.fixture
def guarded(start_server: Callable[..., ServerProcess], backend: Backend) -> ServerProcess:
    return start_server("--auth-url", backend.url, "--auth-url-timeout", "0.5", "--public-channels", "news")


def cookie(session: str) -> dict[str, str]:
    return {"Cookie": f"session={session}"}


def test_the_app_allows_refuses_and_is_asked_once_per_ttl(
    guarded: ServerProcess, backend: Backend, channel: str
) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        for _ in range(20):  # a long-poll loop: the app is asked once
            assert client.get(f"/sub/{channel}?timeout=0", headers=cookie("ann")).status_code == 200
        [call] = backend.calls
        assert call["body"] == {"action": "subscribe", "channels": [channel], "transport": "longpoll"}
        assert call["headers"]["Cookie"] == "session=ann"
        assert client.post(f"/pub/{channel}", json="hi", headers=cookie("ann")).status_code == 202
        assert backend.calls[-1]["body"] == {"action": "publish", "channels": [channel], "transport": "http"}

        nobody = client.get(f"/sub/{channel}?timeout=0")
        assert nobody.status_code == 401 and nobody.json()["error"] == "unauthorized"
        eve = client.post(f"/pub/{channel}", json="hi", headers=cookie("eve"))
        assert eve.status_code == 403 and eve.json()["error"] == "forbidden"
        assert client.delete(f"/pub/{channel}", headers=cookie("eve")).status_code == 403
        # A grant of some of the channels asked for: the others are refused, by name.
        mixed = client.get(f"/sub/bob-{channel},{channel}?timeout=0", headers=cookie("bob"))
        assert mixed.status_code == 403 and channel in mixed.json()["detail"]
        assert client.get(f"/sub/bob-{channel}?timeout=0", headers=cookie("bob")).status_code == 200
        # Public channels are nobody's business.
        calls = len(backend.calls)
        assert client.get("/sub/news?timeout=0").status_code == 200
        assert len(backend.calls) == calls
        metrics = client.get("/metrics").text
        assert "tidings_auth_url_seconds_count" in metrics and "tidings_auth_failures_total 4.0" in metrics


def test_an_app_that_is_down_or_slow_is_a_503_not_an_open_door(
    guarded: ServerProcess, backend: Backend, channel: str
) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        backend.mode = "down"
        down = client.get(f"/sub/{channel}?timeout=0", headers=cookie("ann"))
        assert down.status_code == 503 and down.json()["error"] == "auth_unavailable"
        backend.mode = "slow"
        slow = client.post(f"/pub/{channel}", json=1, headers=cookie("ann"))
        assert slow.status_code == 503 and slow.json()["error"] == "auth_unavailable"
        backend.mode = "ok"  # (a failure is not remembered: the next request asks again)
        assert client.get(f"/sub/{channel}?timeout=0", headers=cookie("ann")).status_code == 200


def test_every_transport_asks_the_app(guarded: ServerProcess, backend: Backend, channel: str) -> None:
    async def scenario() -> None:
        for path, transport in ((f"/sse/{channel}-sse", "sse"), (f"/stream/{channel}-stream", "stream")):
            refused = await Connection.open(guarded.host, guarded.port)
            assert (await refused.start_stream(path, headers=cookie("eve"))).status == 403
            refused.close()
            allowed = await Connection.open(guarded.host, guarded.port)
            assert (await allowed.start_stream(path, headers=cookie("ann"))).status == 200
            allowed.close()
            assert backend.calls[-1]["body"]["transport"] == transport
        url = f"ws://{guarded.host}:{guarded.port}/ws/{channel}"
        with pytest.raises(InvalidStatus) as refused_handshake:
            async with connect(url, additional_headers=cookie("eve")):
                pass
        assert refused_handshake.value.response.status_code == 403
        async with connect(f"ws://{guarded.host}:{guarded.port}/ws", additional_headers=cookie("bob")) as ws:
            await ws.send(json.dumps({"subscribe": [f"bob-{channel}"]}))
            await ws.send(json.dumps({"publish": {"channel": f"bob-{channel}", "data": "hi"}}))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        subscribed = [c["body"] for c in backend.calls if c["body"]["transport"] == "websocket"]
        assert {"action": "subscribe", "channels": [f"bob-{channel}"], "transport": "websocket"} in subscribed

    asyncio.run(scenario())


def test_a_token_that_grants_needs_no_call_and_either_may_grant(
    start_server: Callable[..., ServerProcess], backend: Backend, channel: str
) -> None:
    server = start_server("--auth-secret", SECRET, "--auth-url", backend.url)
    token = mint(SECRET, [], [channel], 60)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get(f"/sub/{channel}?timeout=0", headers=bearer).status_code == 200
        assert backend.calls == []  # the token granted it
        assert client.get(f"/sub/{channel}-x?timeout=0", headers=cookie("ann")).status_code == 200  # the app did
        refused = client.get(f"/sub/{channel}-x?timeout=0", headers=bearer)  # the token does not; the app: 401
        assert refused.status_code == 401
        assert backend.calls[-1]["headers"]["Authorization"] == f"Bearer {token}"  # (forwarded as it came)


def test_what_the_app_is_asked_and_how_its_answers_are_remembered(
    guarded: ServerProcess, backend: Backend, channel: str
) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        for _ in range(3):  # a refusal is remembered too
            assert client.get(f"/sub/{channel}?timeout=0", headers=cookie("eve")).status_code == 403
        assert len(backend.calls) == 1
        # Asked again once the ttl has passed.
        assert client.get(f"/sub/{channel}?timeout=0", headers=cookie("tim")).status_code == 200
        assert client.get(f"/sub/{channel}?timeout=0", headers=cookie("tim")).status_code == 200
        assert len(backend.calls) == 2
        wait_until(lambda: client.get(f"/sub/{channel}?timeout=0", headers=cookie("tim")).status_code == 200
                   and len(backend.calls) == 3, 5, "the decision to expire")  # fmt: skip
        # The transport is part of the question, and of what is remembered.
        assert client.get(f"/sub/lp-{channel}?timeout=0", headers=cookie("lp")).status_code == 200
        assert client.get(f"/sse/lp-{channel}", headers=cookie("lp")).status_code == 403
        # Deleting is its own question: a publisher is not a deleter.
        assert client.post(f"/pub/{channel}", json=1, headers=cookie("poster")).status_code == 202
        assert client.delete(f"/pub/{channel}", headers=cookie("poster")).status_code == 403
        assert backend.calls[-1]["body"]["action"] == "delete"
        # A ttl that is not a number is nonsense (NaN would be remembered for ever).
        nan = client.get(f"/sub/{channel}?timeout=0", headers=cookie("nan"))
        assert nan.status_code == 503 and nan.json()["error"] == "auth_unavailable"


def test_questions_asked_at_once_share_one_call(guarded: ServerProcess, backend: Backend, channel: str) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.get(f"/sub/{channel}?timeout=0", headers=cookie("slow-ann")) for _ in range(10))
            )
        assert [a.status_code for a in answers] == [200] * 10

    asyncio.run(scenario())
    assert len(backend.calls) == 1


def test_a_page_on_another_origin_cannot_lend_the_browsers_credentials(
    start_server: Callable[..., ServerProcess], backend: Backend, channel: str
) -> None:
    """Under --cors-origin '*' any page may act, but not as the user: the cookie and an
    Authorization the browser adds by itself (Basic) are dropped before the app is asked."""
    server = start_server("--auth-url", backend.url, "--cors-origin", "*")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post(f"/pub/{channel}", json=1, headers={"Authorization": BASIC}).status_code == 202
        evil = {"Origin": "http://evil.example", "Authorization": BASIC, "Cookie": "session=ann"}
        assert client.post(f"/pub/{channel}", json=1, headers=evil).status_code == 401
        asked = backend.calls[-1]["headers"]
        assert "Authorization" not in asked and "Cookie" not in asked


def test_a_token_and_the_app_each_grant_their_channels(
    start_server: Callable[..., ServerProcess], backend: Backend, channel: str
) -> None:
    server = start_server("--auth-secret", SECRET, "--auth-url", backend.url)
    token = mint(SECRET, [], [channel], 60)
    headers = {"Authorization": f"Bearer {token}", **cookie("bob")}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get(f"/sub/{channel},bob-{channel}?timeout=0", headers=headers).status_code == 200
        assert backend.calls[-1]["body"]["channels"] == [f"bob-{channel}"]  # (the token granted the other)


def test_a_stream_whose_check_ends_after_shutdown_began_is_refused_not_begun(
    start_server: Callable[..., ServerProcess], backend: Backend, channel: str
) -> None:
    """SIGTERM while the app is being asked about an SSE stream: the answer comes during the
    drain, and the stream is refused (503) instead of begun where nothing would end it."""
    server = start_server("--auth-url", backend.url, "--auth-url-timeout", "5", "--shutdown-grace", "3")

    async def scenario() -> tuple[int, float]:
        sse = await Connection.open(server.host, server.port)
        started = asyncio.ensure_future(sse.start_stream(f"/sse/{channel}", headers=cookie("slow-ann")))
        await asyncio.to_thread(wait_until, lambda: len(backend.calls) == 1, 5, "the app to be asked")
        took = await asyncio.to_thread(server.terminate)
        status = (await started).status
        sse.close()
        return status, took

    status, took = asyncio.run(scenario())
    assert status == 503
    assert took < 2.5  # (not the whole grace: nothing was left to drain)
