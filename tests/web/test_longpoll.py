"""GET /sub: long-poll delivery, batching, cursors, gaps, through a real server."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import httpx
from conftest import ServerProcess, subscribers, wait_until
from rawhttp import Connection, request


def poll_in_background(url: str, path: str) -> concurrent.futures.Future[httpx.Response]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(lambda: httpx.get(url + path, timeout=15))
    pool.shutdown(wait=False)
    return future


def test_publish_reaches_a_waiting_long_poll(server: ServerProcess, http: httpx.Client, channel: str) -> None:
    held = poll_in_background(server.url, f"/sub/{channel}")
    wait_until(lambda: subscribers(http, channel) == 1, 5, "the long-poll to be held")
    answer = http.post(f"/pub/{channel}", json={"text": "hi"})
    assert answer.status_code == 201, answer.text
    published = answer.json()
    assert published["channel"] == channel and published["subscribers"] == 1
    body = held.result(10).json()
    assert body["gap"] is False
    [message] = body["messages"]
    assert message["id"] == published["id"] == body["last_id"]
    assert message["channel"] == channel and message["data"] == {"text": "hi"}
    assert isinstance(message["time"], int)
    assert subscribers(http, channel) == 0


def test_publish_with_nobody_waiting_is_202_and_buffered(http: httpx.Client, channel: str) -> None:
    answer = http.post(f"/pub/{channel}", content=b"plain text")
    assert answer.status_code == 202 and answer.json()["subscribers"] == 0
    body = http.get(f"/sub/{channel}", params={"last_id": "oldest"}).json()
    assert [m["data"] for m in body["messages"]] == ["plain text"]
    info = http.get(f"/channels/{channel}").json()
    assert info == {"channel": channel, "subscribers": 0, "buffered": 1, "last_id": body["last_id"]}


def test_body_kinds_json_form_and_text(http: httpx.Client, channel: str) -> None:
    http.post(f"/pub/{channel}", json=[1, {"a": None}])
    http.post(f"/pub/{channel}", data={"nick": "ann", "message": "hi <b>"})
    http.post(f"/pub/{channel}", content="zürich".encode(), headers={"Content-Type": "text/plain"})
    body = http.get(f"/sub/{channel}", params={"last_id": "oldest"}).json()
    assert [m["data"] for m in body["messages"]] == [[1, {"a": None}], {"nick": "ann", "message": "hi <b>"}, "zürich"]


def test_batches_of_at_most_100_continue_from_the_cursor(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--buffer-size", "500")
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for i in range(250):
            client.post(f"/pub/{channel}", json=i)
        sizes, seen, cursor = [], [], "oldest"
        while True:
            body = client.get(f"/sub/{channel}", params={"last_id": cursor, "timeout": 0}).json()
            if not body["messages"]:
                break
            sizes.append(len(body["messages"]))
            seen += [m["data"] for m in body["messages"]]
            cursor = body["last_id"]
    assert sizes == [100, 100, 50]
    assert seen == list(range(250))


def test_timeout_answers_empty_with_a_cursor_that_skips_nothing(http: httpx.Client, channel: str) -> None:
    body = http.get(f"/sub/{channel}", params={"timeout": "0.2"}).json()
    assert body["messages"] == [] and body["last_id"]
    http.post(f"/pub/{channel}", json="after")
    again = http.get(f"/sub/{channel}", params={"last_id": body["last_id"], "timeout": 0}).json()
    assert [m["data"] for m in again["messages"]] == ["after"]


def test_no_loss_while_50_clients_poll_in_a_loop_during_1000_publishes(server: ServerProcess, channel: str) -> None:
    total, clients = 1000, 50

    async def poller(first_cursor: str) -> list[str]:
        conn = await Connection.open(server.host, server.port)
        ids: list[str] = []
        cursor = first_cursor
        while len(ids) < total:
            body = (await conn.request("GET", f"/sub/{channel}?timeout=10&last_id={cursor}")).json()
            assert not body["gap"]
            ids += [m["id"] for m in body["messages"]]
            cursor = body["last_id"]
        conn.close()
        return ids

    async def publisher() -> list[str]:
        conn = await Connection.open(server.host, server.port)
        published = []
        for i in range(total):
            answer = await conn.request("POST", f"/pub/{channel}", str(i).encode())
            published.append(answer.json()["id"])
        conn.close()
        return published

    async def scenario() -> tuple[list[list[str]], list[str]]:
        start = (await request(server.host, server.port, "GET", f"/channels/{channel}")).json()["last_id"]
        polls = asyncio.gather(*(poller(start) for _ in range(clients)))
        published = await asyncio.wait_for(publisher(), 60)
        return await asyncio.wait_for(polls, 60), published

    results, published = asyncio.run(scenario())
    assert len(published) == total
    for ids in results:
        assert ids == published  # every id once, in order


def test_a_cursor_older_than_the_buffer_is_flagged_as_a_gap(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server("--buffer-size", "5")
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        ids = [client.post(f"/pub/{channel}", json=i).json()["id"] for i in range(8)]
        body = client.get(f"/sub/{channel}", params={"last_id": ids[0]}).json()
        assert body["gap"] is True
        assert [m["data"] for m in body["messages"]] == [3, 4, 5, 6, 7]
        body = client.get(f"/sub/{channel}", params={"last_id": ids[2]}).json()
        assert body["gap"] is False and len(body["messages"]) == 5


def test_several_channels_share_one_cursor(http: httpx.Client, server: ServerProcess, channel: str) -> None:
    a, b = channel + "a", channel + "b"
    first = http.get(f"/sub/{a},{b}", params={"timeout": 0}).json()
    http.post(f"/pub/{a}", json="a1")
    http.post(f"/pub/{b}", json="b1")
    body = http.get(f"/sub/{a},{b}", params={"last_id": first["last_id"]}).json()
    assert [(m["channel"], m["data"]) for m in body["messages"]] == [(a, "a1"), (b, "b1")]
    # A held multi-channel poll is woken by either channel and keeps the other's position.
    held = poll_in_background(server.url, f"/sub/{a},{b}?last_id={body['last_id']}")
    wait_until(lambda: subscribers(http, b) == 1, 5, "the poll to be held")
    http.post(f"/pub/{b}", json="b2")
    woken = held.result(10).json()
    assert [m["data"] for m in woken["messages"]] == ["b2"]
    assert subscribers(http, a) == 0
    http.post(f"/pub/{a}", json="a2")
    rest = http.get(f"/sub/{a},{b}", params={"last_id": woken["last_id"]}).json()
    assert [m["data"] for m in rest["messages"]] == ["a2"]


def _error(response: httpx.Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


def test_bad_input_is_a_400_with_a_json_error(http: httpx.Client, channel: str) -> None:
    assert http.get(f"/sub/{channel}", params={"last_id": "nonsense"}).status_code == 400
    assert _error(http.get(f"/sub/{channel}", params={"last_id": "nonsense"})) == "invalid_cursor"
    assert _error(http.get("/sub/a%2Fb")) == "invalid_channel"
    assert _error(http.get("/sub/" + "x" * 129)) == "invalid_channel"
    too_many = ",".join(f"c{i}" for i in range(33))
    r = http.get(f"/sub/{too_many}")
    assert r.status_code == 400 and _error(r) == "invalid_channel"
    r = http.get(f"/sub/{channel}", params={"timeout": "-1"})
    assert r.status_code == 400 and _error(r) == "invalid_parameter"
    r = http.post("/pub/a%20b", json=1)
    assert r.status_code == 400 and _error(r) == "invalid_channel"
    r = http.post(f"/pub/{channel}", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and _error(r) == "invalid_json"
    for constant in (b"NaN", b'{"x": -Infinity}', b"[1e999]"):  # Python's reader takes them; JSON.parse would not
        r = http.post(f"/pub/{channel}", content=constant, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and _error(r) == "invalid_json" and "Infinity" in r.json()["detail"]
    r = http.post(f"/pub/{channel}", content=b"\xff\xfe", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and _error(r) == "invalid_body"
    r = http.put(f"/pub/{channel}", json=1)
    assert r.status_code == 405 and _error(r) == "method_not_allowed"
    assert r.headers["allow"] == "POST, DELETE"  # RFC 9110: a 405 names the methods that work
    r = http.post("/static/tidings.js")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = http.get("/nowhere")
    assert r.status_code == 404 and _error(r) == "not_found"


def test_a_body_over_the_limit_is_413(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--max-message-bytes", "1000")
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        assert client.post(f"/pub/{channel}", content=b"x" * 1000).status_code == 202
        r = client.post(f"/pub/{channel}", content=b"x" * 1001)
        assert r.status_code == 413 and _error(r) == "body_too_large"
        assert client.get("/healthz").json() == {"status": "ok", "broker": "memory", "pid": srv.pid, "subscribers": 0}


def test_a_deleted_channel_answers_a_held_poll_410_naming_it(
    server: ServerProcess, http: httpx.Client, channel: str
) -> None:
    held = poll_in_background(server.url, f"/sub/{channel}x,{channel}")
    wait_until(lambda: subscribers(http, channel) == 1, 5, "the long-poll to be held")
    assert http.delete(f"/pub/{channel}").json()["subscribers"] == 1
    answer = held.result(10)
    assert answer.status_code == 410
    # `detail` is a sentence like every error's; the channel is a field of its own.
    assert answer.json() == {"error": "channel_deleted", "detail": f"channel {channel} was deleted", "channel": channel}


def test_a_channel_never_used_is_an_empty_one_to_read_and_to_delete(http: httpx.Client, channel: str) -> None:
    info = http.get(f"/channels/{channel}")
    assert info.status_code == 200 and info.json()["subscribers"] == info.json()["buffered"] == 0
    for _ in range(2):  # deleting is idempotent
        deleted = http.delete(f"/pub/{channel}")
        assert deleted.status_code == 200
        assert deleted.json() == {"channel": channel, "deleted": True, "subscribers": 0}
    assert http.get(f"/channels/{channel}").status_code == 200
