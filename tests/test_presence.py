"""Presence: who is on a channel (`GET /channels/{ch}/presence`) and `join`/`leave` events, on
every transport, with long-polls present between polls for a grace period; who a subscriber is
comes from a token's `sub`, the application's answer, or (on an open server) `?user=`; across
processes on Redis and across the workers of `--workers`.

The pure bookkeeping is tested directly (time driven by hand); the rest through real servers,
with httpx and the websockets client as the subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
from auth_app import Backend
from conftest import RedisProcess, ServerProcess, subscribers, wait_until
from rawhttp import Connection
from websockets.asyncio.client import connect

from tidings.auth import mint
from tidings.presence import Identity, Lingering, Presence, RemoteView, encode_report, merge_reports

SECRET = "test-secret-of-some-length-0123456789"
ANN, BOB = Identity("ann", {"name": "Ann"}), Identity("bob")


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def presence_event(self, event: str, channel: str, user: str, info: dict[str, Any] | None) -> None:
        self.events.append((event, channel, user))


# -- the bookkeeping


def test_a_user_joins_with_the_first_client_and_leaves_with_the_last() -> None:
    presence, heard = Presence(grace_ms=10_000), Heard()
    presence.listen(["c"], heard)
    presence.arrive(["c"], ANN, "sse", 1000)
    presence.arrive(["c"], ANN, "websocket", 1001)
    presence.arrive(["c"], None, "sse", 1002)
    view = presence.view("c")
    assert view["users"] == [
        {"user": "ann", "info": {"name": "Ann"}, "clients": 2, "transports": ["sse", "websocket"], "since": 1000}
    ]
    assert (view["anonymous"], view["total_users"]) == (1, 1)
    presence.depart(["c"], ANN, "sse", 2000)
    presence.depart(["c"], ANN, "sse", 2000)  # (told twice: counted once)
    assert heard.events == [("join", "c", "ann")]
    presence.depart(["c"], ANN, "websocket", 2001)
    assert heard.events == [("join", "c", "ann"), ("leave", "c", "ann")]
    presence.depart(["c"], None, "sse", 2002)
    presence.unlisten(["c"], heard)
    assert presence.channels == {}  # nothing left behind


def test_a_long_poll_lingers_for_the_grace_and_the_next_poll_takes_its_place() -> None:
    presence, heard = Presence(grace_ms=10_000), Heard()
    presence.listen(["c"], heard)
    for now in range(0, 50_000, 5_000):  # a poll every 5 s, each answered at once
        presence.polled(["c"], ANN, now)
        presence.polled(["c"], None, now)
        presence.expire(now)
        assert presence.view("c")["users"][0]["clients"] == 1
        assert presence.view("c")["anonymous"] == 1
    presence.arrive(["c"], BOB, "longpoll", 45_000)  # held...
    presence.depart(["c"], BOB, "longpoll", 46_000)  # ...and answered
    presence.expire(54_999)
    assert [u["user"] for u in presence.view("c")["users"]] == ["ann", "bob"]
    presence.expire(55_000)  # ann's last poll (45 s) + 10 s
    assert [u["user"] for u in presence.view("c")["users"]] == ["bob"]
    presence.expire(56_000)  # bob's (46 s) + 10 s
    assert presence.view("c")["users"] == [] and presence.view("c")["anonymous"] == 0
    assert heard.events == [("join", "c", "ann"), ("join", "c", "bob"), ("leave", "c", "ann"), ("leave", "c", "bob")]


def test_many_lingering_long_polls_end_in_order_and_are_taken_first_to_end_first() -> None:
    lingering = Lingering()
    for ends in range(1000):
        lingering.add(ends)
    for _ in range(300):
        lingering.take()
    assert len(lingering) == 700
    lingering.expire(349)  # 300..349 end
    assert len(lingering) == 650 and lingering.ends[lingering.first] == 350
    lingering.expire(10_000)
    assert len(lingering) == 0 and lingering.ends == []


def test_other_processes_count_alongside_and_change_who_is_present() -> None:
    presence, heard = Presence(grace_ms=1000), Heard()
    presence.listen(["c"], heard)
    presence.set_remote("c", RemoteView({}, 0))  # (the first view after a listener came is taken silently)
    presence.arrive(["c"], ANN, "sse", 5)
    elsewhere = merge_reports(
        [
            {"users": {"ann": [1, ["longpoll"], 1, {"name": "Ann"}]}, "anonymous": 2},
            {"users": {"bob": [2, ["websocket"], 3, None], "ann": [1, ["sse"], 9, None]}, "anonymous": 1},
        ]
    )
    presence.set_remote("c", elsewhere)
    view = presence.view("c")
    assert [(u["user"], u["clients"], u["transports"], u["since"]) for u in view["users"]] == [
        ("ann", 3, ["longpoll", "sse"], 1),
        ("bob", 2, ["websocket"], 3),
    ]
    assert view["anonymous"] == 3
    assert heard.events == [("join", "c", "ann"), ("join", "c", "bob")]  # ann was here already
    presence.depart(["c"], ANN, "sse", 10)  # still present elsewhere: no leave
    presence.set_remote("c", RemoteView({}, 0))
    assert heard.events[2:] == [("leave", "c", "ann"), ("leave", "c", "bob")]


def test_nothing_is_left_behind_and_other_processes_count_only_while_someone_listens() -> None:
    presence, heard = Presence(grace_ms=1000), Heard()
    presence.arrive(["a", "b"], None, "sse", 1)
    presence.depart(["a", "b"], None, "sse", 2)
    presence.set_remote("c", RemoteView({"bob": [1, ["sse"], 1, None]}, 0))  # nobody listens to c
    assert presence.channels == {}
    presence.listen(["c"], heard)
    presence.set_remote("c", RemoteView({"bob": [1, ["sse"], 1, None]}, 0))  # the first: read silently
    presence.set_remote("c", RemoteView({}, 0))
    assert heard.events == [("leave", "c", "bob")]
    presence.unlisten(["c"], heard)
    assert presence.channels == {}


def test_a_long_poll_client_between_polls_has_its_events_kept_until_its_next_poll() -> None:
    presence = Presence(grace_ms=1000)
    presence.keep("k1", ("c",), 0)
    presence.arrive(["c"], ANN, "sse", 1)
    presence.arrive(["d"], BOB, "sse", 1)  # (not one of its channels)
    assert presence.collect("k1", ("c",)) == [("join", "c", "ann", {"name": "Ann"})]
    assert presence.collect("k1", ("c",)) == []  # (taken)
    presence.release("k1")
    presence.keep("k2", ("c",), 10)
    presence.expire(1010)  # it did not come back within the grace
    assert "k2" not in presence.mailboxes
    presence.depart(["c"], ANN, "sse", 1011)
    presence.depart(["d"], BOB, "sse", 1011)
    assert presence.channels == {}


def test_a_polling_listener_keeps_the_other_processes_view_from_poll_to_poll() -> None:
    presence, poll = Presence(grace_ms=1000), Heard()
    presence.listen(["c"], poll)  # a held poll
    presence.set_remote("c", RemoteView({"ann": [1, ["sse"], 1, None]}, 0))  # (its first view: silent)
    for _ in range(3):  # answered (by a message), and its next poll held: the mailbox in between
        presence.keep("k", ("c",), 0)
        presence.unlisten(["c"], poll)
        assert presence.listened() == []  # (a mailbox alone is not read for)
        presence.listen(["c"], poll)
        presence.release("k")
    presence.keep("k", ("c",), 0)
    presence.unlisten(["c"], poll)
    presence.set_remote("c", RemoteView({"ann": [1, ["sse"], 1, None], "bob": [1, ["sse"], 2, None]}, 0))
    presence.arrive(["c"], Identity("ann"), "sse", 3)  # (ann is elsewhere already: no join)
    assert presence.collect("k", ("c",)) == [("join", "c", "bob", None)]


def test_other_processes_are_told_only_what_changed() -> None:
    presence = Presence(grace_ms=1000)
    presence.arrive(["x"], None, "sse", 0)
    presence.depart(["x"], None, "sse", 0)
    assert presence.dirty is None  # (nobody asks for reports: nothing is kept for them)
    presence.arrive(["a"], None, "sse", 1)
    presence.arrive(["b"], ANN, "websocket", 1)
    whole = presence.report(full=True)
    assert whole == {
        "a": b'{"users":{},"anonymous":1}',
        "b": b'{"users":{"ann":[1,["websocket"],1,{"name":"Ann"}]},"anonymous":0}',
    }
    assert presence.report() == {}  # nothing changed
    presence.arrive(["a"], None, "longpoll", 2)  # a long-poll client arrives (a change)...
    presence.report()
    for now in (3, 4, 5):  # ...and polls: the same one present all along
        presence.depart(["a"], None, "longpoll", now)
        presence.arrive(["a"], None, "longpoll", now)
    presence.expire(900)
    assert presence.dirty == set()  # (nothing to look at, even)
    presence.arrive(["b"], ANN, "sse", 5)
    presence.depart(["b"], ANN, "sse", 6)
    assert presence.report() == {}
    presence.depart(["a"], None, "sse", 7)
    presence.depart(["a"], None, "longpoll", 7)
    presence.depart(["b"], ANN, "websocket", 7)
    presence.expire(10_000)
    assert presence.report() == {"a": None, "b": None}
    assert encode_report({"a": None, "b": b"{}"}) == b'{"a":null,"b":{}}'


def test_the_list_is_capped_longest_present_first_with_the_total() -> None:
    presence = Presence(grace_ms=1000)
    for n in range(30):
        presence.arrive(["c"], Identity(f"u{n:02}"), "sse", 100 - n)
    view = presence.view("c", limit=5)
    assert [u["user"] for u in view["users"]] == ["u29", "u28", "u27", "u26", "u25"]
    assert view["total_users"] == 30


# -- through real servers


async def listen(srv: ServerProcess, transport: str, channel: str, user: str) -> AsyncIterator[dict[str, Any]]:
    """Presence events heard by `user` subscribed to `channel` with presence=1 over `transport`:
    each as {"event", "channel", "user", "info"}."""
    query = f"user={user}&presence=1"
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        if transport == "longpoll":
            last = ""
            while True:
                answer = (await client.get(f"/sub/{channel}?{query}&timeout=20&last_id={last}")).json()
                last = answer["last_id"]
                for event in answer.get("events", []):
                    yield event
        elif transport in ("sse", "stream"):
            async with client.stream("GET", f"/{transport}/{channel}?{query}") as response:
                name = ""
                async for line in response.aiter_lines():
                    if transport == "stream" and line.strip():
                        event = json.loads(line)
                        if event.get("event") in ("join", "leave"):
                            yield event
                    elif line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name in ("join", "leave"):
                        yield {"event": name, **json.loads(line[6:])}
        else:
            ws_url = f"ws://{srv.host}:{srv.port}"
            if transport == "ws":
                socket = connect(f"{ws_url}/ws/{channel}?{query}")
            else:  # the subscribe command's field
                socket = connect(f"{ws_url}/ws?user={user}")
            async with socket as ws:
                if transport != "ws":
                    await ws.send(json.dumps({"subscribe": [channel], "presence": True}))
                async for frame in ws:
                    event = json.loads(frame)
                    if event["type"] in ("join", "leave"):
                        yield {"event": event.pop("type"), **event}


@contextlib.asynccontextmanager
async def member(srv: ServerProcess, transport: str, channel: str, user: str) -> AsyncIterator[None]:
    """`user` subscribed to `channel` over `transport` while inside."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        if transport == "longpoll":
            held = asyncio.ensure_future(client.get(f"/sub/{channel}?user={user}&timeout=30"))
            try:
                yield
            finally:
                held.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await held
        elif transport in ("sse", "stream"):
            async with client.stream("GET", f"/{transport}/{channel}?user={user}"):
                yield
        else:
            async with connect(f"ws://{srv.host}:{srv.port}/ws/{channel}?user={user}"):
                yield


async def present(srv: ServerProcess, channel: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        answer = (await client.get(f"/channels/{channel}/presence")).json()
        assert isinstance(answer, dict)
        return answer


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Ask `check` until it says yes; fail naming `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def users_on(srv: ServerProcess, channel: str) -> dict[str, list[str]]:
    return {u["user"]: u["transports"] for u in (await present(srv, channel))["users"]}


TRANSPORTS = ["longpoll", "sse", "stream", "ws"]


@pytest.mark.parametrize("transport", [*TRANSPORTS, "ws-command"])
def test_a_listener_hears_join_and_leave_on_every_transport(
    start_server: Callable[..., ServerProcess], transport: str, channel: str
) -> None:
    srv = start_server("--presence-grace", "0.3")

    async def scenario() -> None:
        events = listen(srv, transport, channel, "lis")
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            async for event in events:
                await heard.put(event)

        task = asyncio.ensure_future(pump())
        try:

            async def held() -> bool:  # (the listener is subscribed now: a long-poll is held)
                async with httpx.AsyncClient(base_url=srv.url) as client:
                    return bool((await client.get(f"/channels/{channel}")).json()["subscribers"] >= 1)

            await wait_for(held, 10, "the listener to be subscribed")
            async with member(srv, "sse", channel, "ann"):
                async with asyncio.timeout(10):
                    joined = await heard.get()
                assert joined == {"event": "join", "channel": channel, "user": "ann", "info": None}

                async def held_again() -> bool:  # (a long-poll listener hears between polls only when held)
                    async with httpx.AsyncClient(base_url=srv.url) as client:
                        return bool((await client.get(f"/channels/{channel}")).json()["subscribers"] >= 2)

                await wait_for(held_again, 10, "the listener to be held again")
            async with asyncio.timeout(10):
                left = await heard.get()
            assert left == {"event": "leave", "channel": channel, "user": "ann", "info": None}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_user_on_every_transport_is_listed_while_present(
    start_server: Callable[..., ServerProcess], transport: str, channel: str
) -> None:
    srv = start_server("--presence-grace", "0.5")
    name = {"ws": "websocket"}.get(transport, transport)

    async def scenario() -> None:
        async with member(srv, transport, channel, "ann"), member(srv, "sse", channel, "bob"):

            async def both() -> bool:
                return await users_on(srv, channel) == {"ann": [name], "bob": ["sse"]}

            await wait_for(both, 10, "ann and bob to be listed")

        # Gone: at once, or for a long-poll after the grace (and the sweep, each second).
        async def gone() -> bool:
            return await users_on(srv, channel) == {}

        await wait_for(gone, 10, "both to be gone")

    asyncio.run(scenario())


def test_a_long_poll_loop_stays_present_between_polls(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--presence-grace", "1")
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        cursor = ""
        for n in range(6):  # short polls answered at once or after a message, with gaps between
            if n % 2:
                client.post(f"/pub/{channel}", content=f"m{n}")
            answer = client.get(f"/sub/{channel}?user=ann&timeout=0.2&last_id={cursor}").json()
            cursor = answer["last_id"]
            users = client.get(f"/channels/{channel}/presence").json()["users"]
            assert [(u["user"], u["clients"]) for u in users] == [("ann", 1)]
        wait_until(
            lambda: client.get(f"/channels/{channel}/presence").json()["users"] == [],
            10,
            "ann to leave after the grace",
        )


def test_who_a_subscriber_is_comes_from_the_token_or_the_application(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    backend = Backend()
    try:
        srv = start_server("--auth-secret", SECRET, "--auth-url", backend.url)
        token = mint(SECRET, [], [channel], 600)
        named = jwt.encode(
            {"exp": 2_000_000_000, "sub": "tok", "info": {"role": "x"}, "tidings": {"subscribe": [channel]}}, SECRET
        )

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
                streams = [
                    client.stream("GET", f"/sse/{channel}?token={named}"),
                    client.stream("GET", f"/sse/{channel}", headers={"Cookie": "session=ann"}),
                    client.stream("GET", f"/sse/{channel}?token={token}&user=spoof"),  # (no sub: anonymous)
                ]
                async with streams[0], streams[1], streams[2]:

                    async def listed() -> bool:
                        answer = (await client.get(f"/channels/{channel}/presence?token={named}")).json()
                        return bool(answer["total_users"] == 2 and answer["anonymous"] == 1)

                    await wait_for(listed, 10, "two users and one anonymous")
                    answer = (await client.get(f"/channels/{channel}/presence?token={named}")).json()
                    assert {u["user"]: u["info"] for u in answer["users"]} == {
                        "tok": {"role": "x"},
                        "ann": {"name": "Ann"},
                    }
                    assert answer["you"] == {"user": "tok", "info": {"role": "x"}, "verified": True}
                    refused = await client.get(f"/channels/{channel}/presence", headers={"Cookie": "session=eve"})
                    assert refused.status_code == 403  # authorised like a subscribe

        asyncio.run(scenario())
    finally:
        backend.close()


def test_presence_spans_two_processes_on_redis(
    start_server: Callable[..., ServerProcess], redis_server: RedisProcess, channel: str
) -> None:
    flags = ("--broker", redis_server.url, "--redis-prefix", f"p{channel}:", "--presence-grace", "0.3")
    first, second = start_server(*flags), start_server(*flags)

    async def scenario() -> None:
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            async for event in listen(second, "sse", channel, "lis"):
                await heard.put(event)

        task = asyncio.ensure_future(pump())
        try:
            async with member(first, "ws", channel, "ann"):
                async with asyncio.timeout(15):
                    assert (await heard.get())["user"] == "ann"  # a join on the first, heard on the second

                async def both() -> bool:
                    return await users_on(second, channel) == {"ann": ["websocket"], "lis": ["sse"]}

                await wait_for(both, 15, "the second process to list both")
                assert await users_on(first, channel) == {"ann": ["websocket"], "lis": ["sse"]}
            async with asyncio.timeout(15):
                assert await heard.get() == {"event": "leave", "channel": channel, "user": "ann", "info": None}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


@pytest.fixture
def workers(start_server: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    yield start_server("--workers", "2", "--presence-grace", "0.3")


def test_presence_spans_the_workers(workers: ServerProcess, channel: str) -> None:
    async def scenario() -> None:
        # Several members on connections of their own: the workers take some each.
        names = [f"u{n}" for n in range(6)]
        async with contextlib.AsyncExitStack() as stack:
            for name in names:
                await stack.enter_async_context(member(workers, "sse", channel, name))

            async def everyone() -> bool:
                return set(await users_on(workers, channel)) == set(names)

            await wait_for(everyone, 15, "every worker's members to be listed")

        async def nobody() -> bool:
            return await users_on(workers, channel) == {}

        await wait_for(nobody, 15, "everyone to be gone")

    asyncio.run(scenario())


def test_a_malformed_user_or_limit_is_a_400(http: httpx.Client, channel: str) -> None:
    for query in ("user=" + "x" * 129, "user=a%0Ab", "limit=1001", "limit=-1", "presence=maybe"):
        answer = http.get(f"/sub/{channel}?timeout=0&{query}") if "limit" not in query else None
        answer = answer or http.get(f"/channels/{channel}/presence?{query}")
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_parameter", query


def test_a_long_poll_told_of_a_join_and_answered_otherwise_in_that_turn_answers_once(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()  # (its log is checked for tracebacks at the end)

    async def scenario() -> None:
        async with connect(f"ws://{srv.host}:{srv.port}/ws/{channel},{channel}-other?presence=1&user=dave") as dave:
            alice = await Connection.open(srv.host, srv.port)
            alice.send("GET", f"/sub/{channel}?timeout=20&presence=1&user=alice")
            with httpx.Client(base_url=srv.url) as client:
                wait_until(lambda: subscribers(client, channel) == 2, 10, "alice's poll to be held")
            # One connection, two requests in one write: bob arrives (alice is told: join) and the
            # channel is deleted (alice answered 410), in the same loop turn.
            bob = await Connection.open(srv.host, srv.port)
            bob.writer.write(
                f"GET /sub/{channel}?timeout=0&user=bob HTTP/1.1\r\nHost: t\r\n\r\n"
                f"DELETE /pub/{channel} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            )
            assert (await alice.response()).status == 410
            info = await alice.request("GET", f"/channels/{channel}-other")  # the next answer is this one's
            assert info.status == 200 and info.json()["channel"] == f"{channel}-other"
            async with httpx.AsyncClient(base_url=srv.url) as client:
                await client.post(f"/pub/{channel}-other", json="still here")
            async with asyncio.timeout(10):
                while (frame := json.loads(await dave.recv()))["type"] != "message":
                    pass
            assert frame["message"]["data"] == "still here"  # the others' writes went on
            alice.close()
            bob.close()

    asyncio.run(scenario())


def test_after_auth_url_a_websocket_command_names_its_user_and_an_unlistable_name_is_anonymous(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    backend = Backend()
    try:
        srv = start_server("--auth-url", backend.url)

        async def scenario() -> None:
            url = f"ws://{srv.host}:{srv.port}/ws"
            async with connect(url, additional_headers={"Cookie": "session=ann"}) as ann:
                await ann.send(json.dumps({"subscribe": [channel], "presence": True}))
                async with connect(f"{url}/{channel}", additional_headers={"Cookie": "session=nameless"}):

                    async def listed() -> bool:
                        async with httpx.AsyncClient(base_url=srv.url, headers={"Cookie": "session=ann"}) as c:
                            answer = (await c.get(f"/channels/{channel}/presence")).json()
                        return bool(answer["total_users"] == 1 and answer["anonymous"] == 1)

                    await wait_for(listed, 10, "ann listed and one anonymous")
                    assert await users_on_as(srv, channel, "ann") == {"ann": ["websocket"]}
                await ann.send(json.dumps({"unsubscribe": [channel]}))
                await ann.send(json.dumps({"publish": {"channel": channel, "data": "after"}}))
                async with asyncio.timeout(10):  # its own leave is not news to it
                    while (frame := json.loads(await ann.recv()))["type"] != "published":
                        assert frame["type"] != "leave", frame

        asyncio.run(scenario())
    finally:
        backend.close()


async def users_on_as(srv: ServerProcess, channel: str, session: str) -> dict[str, list[str]]:
    async with httpx.AsyncClient(base_url=srv.url, headers={"Cookie": f"session={session}"}) as client:
        return {u["user"]: u["transports"] for u in (await client.get(f"/channels/{channel}/presence")).json()["users"]}


def test_a_page_on_another_site_does_not_lend_the_users_cookie_to_a_read(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    backend = Backend()
    try:
        srv = start_server("--auth-url", backend.url)
        with httpx.Client(base_url=srv.url, headers={"Cookie": "session=ann"}) as client:
            path = f"/sub/{channel}?timeout=0"
            assert client.get(path).status_code == 200
            assert client.get(path, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
            # e.g. fetch(url, {mode: "no-cors", credentials: "include"}) from another site: the
            # user would be counted present there, under their name
            assert client.get(path, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 401
            assert client.get(path, headers={"Origin": "https://elsewhere.example"}).status_code == 401
            assert (
                client.get(f"/channels/{channel}/presence", headers={"Sec-Fetch-Site": "same-site"}).status_code == 401
            )
    finally:
        backend.close()


def test_a_named_long_poll_listener_hears_what_came_between_two_polls(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            poll = f"/sub/{channel}?presence=1&client=page-1&timeout=0&user=lis"
            assert (await client.get(poll)).json().get("events") is None
            async with member(srv, "sse", channel, "ann"):  # ann comes while lis is between polls

                async def listed() -> bool:
                    return "ann" in await users_on(srv, channel)

                await wait_for(listed, 10, "ann to be listed")
                events = (await client.get(poll)).json()["events"]
                assert events == [{"event": "join", "channel": channel, "user": "ann", "info": None}]

            # ...and goes while it is between polls again; a poll that waits answers at once
            async def gone() -> bool:
                return "ann" not in await users_on(srv, channel)

            await wait_for(gone, 10, "ann to be gone")
            answer = (await client.get(poll.replace("timeout=0", "timeout=20"))).json()
            assert answer["events"] == [{"event": "leave", "channel": channel, "user": "ann", "info": None}]

    asyncio.run(scenario())


def test_a_deleted_channels_subscribers_are_told_closed_not_each_others_leaving(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()

    async def scenario() -> None:
        base = f"ws://{srv.host}:{srv.port}/ws/{channel}?presence=1&user="
        async with connect(base + "w1") as w1, connect(base + "w2") as w2, connect(base + "w3") as w3:

            async def three() -> bool:
                return len(await users_on(srv, channel)) == 3

            await wait_for(three, 10, "three users")
            async with httpx.AsyncClient(base_url=srv.url) as client:
                assert (await client.delete(f"/pub/{channel}")).status_code == 200
            for ws in (w1, w2, w3):
                heard = []
                async with asyncio.timeout(10):
                    while (frame := json.loads(await ws.recv()))["type"] != "closed":
                        heard.append(frame)
                assert [f for f in heard if f["type"] == "leave"] == []

    asyncio.run(scenario())


def test_presence_a_redis_lost_is_told_whole_again(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess, channel: str
) -> None:
    flags = ("--broker", own_redis.url, "--redis-prefix", f"p{channel}:")
    first, second = start_server(*flags), start_server(*flags)

    async def scenario() -> None:
        async with member(first, "sse", f"{channel}-a", "ann"), member(first, "sse", f"{channel}-b", "bob"):

            async def both_seen() -> bool:
                return await users_on(second, f"{channel}-b") == {"bob": ["sse"]}

            await wait_for(both_seen, 15, "bob to be seen on the second process")
            client = redis.Redis.from_url(own_redis.url)
            try:
                client.flushall()  # (as a Redis restarted empty)
            finally:
                client.close()
            async with member(first, "sse", f"{channel}-a", "cy"):  # a change on another channel

                async def whole_again() -> bool:
                    return await users_on(second, f"{channel}-b") == {"bob": ["sse"]}

                await wait_for(lambda: _seen(second, f"{channel}-a", {"ann", "cy"}), 15, "cy on the second")
                await wait_for(whole_again, 15, "bob on the second again")

    asyncio.run(scenario())


async def _seen(srv: ServerProcess, channel: str, users: set[str]) -> bool:
    return set(await users_on(srv, channel)) == users
