"""The Redis broker: several Tidings processes on one real redis-server behave as one."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from conftest import RedisProcess, ServerProcess, scrape, wait_until
from rawhttp import Connection, read_events, request
from websockets.asyncio.client import connect as ws_connect

Cluster = Callable[..., list[ServerProcess]]


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:8] + ":"


@pytest.fixture
def cluster(start_server: Callable[..., ServerProcess], redis_server: RedisProcess, prefix: str) -> Cluster:
    """`cluster(n, *flags, redis=...)`: n Tidings processes on one Redis, sharing a key prefix."""

    def start(count: int, *flags: str, redis: RedisProcess = redis_server) -> list[ServerProcess]:
        return [start_server("--broker", redis.url, "--redis-prefix", prefix, *flags) for _ in range(count)]

    return start


def publish(node: ServerProcess, channel: str, data: object) -> httpx.Response:
    return httpx.post(f"{node.url}/pub/{channel}", json=data, timeout=10)


def poll(node: ServerProcess, channel: str, cursor: str | None, timeout: float = 0) -> dict[str, object]:
    params = {"timeout": str(timeout), **({"last_id": cursor} if cursor else {})}
    answer = httpx.get(f"{node.url}/sub/{channel}", params=params, timeout=timeout + 10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict)
    return body


async def collect_longpoll(node: ServerProcess, channel: str, cursor: str, count: int) -> list[object]:
    """Long-poll from `cursor` until `count` messages arrived; their data, in order."""
    conn = await Connection.open(node.host, node.port)
    got: list[object] = []
    async with asyncio.timeout(20):
        while len(got) < count:
            answer = await conn.request("GET", f"/sub/{channel}?timeout=10&last_id={cursor}")
            body = answer.json()
            got += [m["data"] for m in body["messages"]]
            cursor = body["last_id"]
    conn.close()
    return got


def test_three_nodes_deliver_everything_in_order_on_every_transport(cluster: Cluster, channel: str) -> None:
    a, b, c = cluster(3)

    async def scenario() -> None:
        cursor = str(poll(b, channel, None)["last_id"])
        sse = await Connection.open(c.host, c.port)
        await sse.start_stream(f"/sse/{channel}")  # headers sent: subscribed
        ndjson = await Connection.open(c.host, c.port)
        await ndjson.start_stream(f"/stream/{channel}")
        longpoll = asyncio.create_task(collect_longpoll(b, channel, cursor, 20))
        for i in range(20):
            answer = await request(a.host, a.port, "POST", f"/pub/{channel}", json.dumps(i).encode(),
                                   headers={"Content-Type": "application/json"})  # fmt: skip
            assert answer.status in (201, 202), answer.body
        events = await read_events(sse, '"data":19')
        assert [json.loads(e["data"])["data"] for e in events] == list(range(20))
        raw = await ndjson.read_until(b'"data":19')
        lines = [line for line in raw.split(b"\n") if line.startswith(b'{"id"')]
        assert [json.loads(line)["data"] for line in lines] == list(range(20))
        assert await longpoll == list(range(20))
        sse.close()
        ndjson.close()

    asyncio.run(scenario())


def test_a_client_resumes_on_another_node_with_exactly_what_it_missed(cluster: Cluster, channel: str) -> None:
    a, b = cluster(2, "--buffer-size", "5")
    cursor = str(poll(a, channel, None)["last_id"])
    ids = [publish(a, channel, f"m{i}").json()["id"] for i in range(3)]
    # B has seen these live; ask it for a cursor from before B existed to force history reads too.
    resumed = poll(b, channel, cursor)
    assert [m["data"] for m in resumed["messages"]] == ["m0", "m1", "m2"]  # type: ignore[index]
    assert resumed["last_id"] == ids[-1] and resumed["gap"] is False
    # A third node that started after the messages were published reads them from Redis.
    (late,) = cluster(1, "--buffer-size", "5")
    from_late = poll(late, channel, cursor)
    assert [m["data"] for m in from_late["messages"]] == ["m0", "m1", "m2"]  # type: ignore[index]
    assert from_late["gap"] is False
    assert poll(late, channel, ids[0])["messages"] == resumed["messages"][1:]  # type: ignore[index]
    # Past the history (5 kept): a gap, and the 5 that are left.
    for i in range(3, 8):
        publish(a, channel, f"m{i}")
    (later,) = cluster(1, "--buffer-size", "5")
    past = poll(later, channel, cursor)
    assert past["gap"] is True
    assert [m["data"] for m in past["messages"]] == [f"m{i}" for i in range(3, 8)]  # type: ignore[index]
    assert poll(later, channel, "oldest")["gap"] is False


def test_redis_cli_publish_reaches_an_sse_subscriber(start_server: Callable[..., ServerProcess],
                                                      own_redis: RedisProcess) -> None:  # fmt: skip
    node = start_server("--broker", own_redis.url)  # the default prefix, tidings:
    channel = "chat"

    async def scenario() -> None:
        stored = publish(node, channel, "stored").json()["id"]
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream(f"/sse/{channel}", headers={"Last-Event-ID": stored})
        assert own_redis.cli("PUBLISH", "tidings:chat", "hello") == "1"
        [event] = await read_events(sse, '"hello"')
        message = json.loads(event["data"])
        assert message["data"] == "hello" and message["id"] is None and message["channel"] == channel
        assert event["id"] == stored  # a live message moves no cursor
        assert own_redis.cli("PUBLISH", "tidings:chat", '{"nick":"cli","text":"hi"}') == "1"
        [event] = await read_events(sse, '"nick"')
        assert json.loads(event["data"])["data"] == {"nick": "cli", "text": "hi"}
        # Not kept in history: a poll from the stored message's id finds nothing new.
        assert poll(node, channel, stored)["messages"] == []
        sse.close()

    asyncio.run(scenario())


def test_nodes_ride_out_a_redis_restart(cluster: Cluster, own_redis: RedisProcess, channel: str) -> None:
    a, b = cluster(2, redis=own_redis)

    async def scenario() -> None:
        before = publish(a, channel, "before").json()["id"]
        sse = await Connection.open(b.host, b.port)
        await sse.start_stream(f"/sse/{channel}", headers={"Last-Event-ID": before})
        own_redis.kill()
        failed = publish(a, channel, "during")
        assert failed.status_code == 503 and failed.json()["error"] == "broker_unavailable"
        for node in (a, b):
            wait_until(lambda n=node: httpx.get(f"{n.url}/healthz").status_code == 503, 10, "healthz to report 503")
        # Held connections are still served meanwhile.
        assert httpx.get(f"{b.url}/sub/{channel}?timeout=0&last_id={before}", timeout=10).status_code == 200
        own_redis.start()
        for node in (a, b):
            wait_until(lambda n=node: httpx.get(f"{n.url}/healthz").status_code == 200, 20, "the node to reconnect")
        after = [publish(a, channel, f"after{i}").json()["id"] for i in range(3)]
        events = await read_events(sse, '"after2"')
        assert [json.loads(e["data"])["data"] for e in events] == ["after0", "after1", "after2"]
        assert [e["id"] for e in events] == after
        resumed = poll(b, channel, before)
        assert [m["data"] for m in resumed["messages"]] == ["after0", "after1", "after2"]  # type: ignore[index]
        sse.close()

    asyncio.run(scenario())
    for node in (a, b):
        assert node.log().count("Redis unavailable") == 1, node.log()  # one line per state change


def test_a_killed_nodes_subscribers_drop_out_of_the_count(cluster: Cluster, channel: str) -> None:
    a, b = cluster(2)

    async def scenario() -> None:
        conns = [await Connection.open(a.host, a.port) for _ in range(3)]
        for conn in conns:
            conn.send("GET", f"/sub/{channel}?timeout=60")

        def count() -> int:
            value = httpx.get(f"{b.url}/channels/{channel}").json()["subscribers"]
            assert isinstance(value, int)
            return value

        await asyncio.to_thread(wait_until, lambda: count() == 3, 10, "B to count A's 3 subscribers")
        a.proc.kill()  # SIGKILL: no goodbye
        took = await asyncio.to_thread(wait_until, lambda: count() == 0, 15, "A's share to disappear")
        assert took <= 10  # documented: gone within 6 s of A's last report, which is at most 2 s old
        for conn in conns:
            conn.close()

    asyncio.run(scenario())


def test_cli_publishes_straight_into_redis(cluster: Cluster, redis_server: RedisProcess, prefix: str,
                                           channel: str) -> None:  # fmt: skip
    (node,) = cluster(1)
    cursor = str(poll(node, channel, None)["last_id"])
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "publish", "--redis", redis_server.url, "--redis-prefix", prefix,
         channel, "from the command line"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)
    answer = poll(node, channel, cursor, timeout=5)
    assert [m["data"] for m in answer["messages"]] == ["from the command line"]  # type: ignore[index]
    assert answer["last_id"] == published["id"]


def test_delete_on_one_node_ends_subscriptions_on_every_node(cluster: Cluster, channel: str) -> None:
    a, b = cluster(2)

    async def scenario() -> None:
        publish(a, channel, "kept")
        sse = await Connection.open(b.host, b.port)
        await sse.start_stream(f"/sse/{channel}")
        held = await Connection.open(a.host, a.port)
        held.send("GET", f"/sub/{channel}?timeout=30")
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(f"{a.url}/channels/{channel}").json()["subscribers"] == 2, 10,
            "both subscribers to be counted",
        )  # fmt: skip
        deleted = httpx.delete(f"{a.url}/pub/{channel}")
        assert deleted.status_code == 200 and deleted.json()["subscribers"] == 2
        assert b"event: closed" in await sse.read_until(b"event: closed")
        assert (await held.response()).status == 410
        assert poll(b, channel, "oldest")["messages"] == []  # the history went with it
        again = httpx.delete(f"{b.url}/pub/{channel}")  # idempotent: a channel holding nothing is still one
        assert again.status_code == 200 and again.json()["subscribers"] == 0
        never = httpx.get(f"{b.url}/channels/{channel}-never")
        assert never.status_code == 200 and never.json()["buffered"] == never.json()["subscribers"] == 0
        sse.close()
        held.close()

    asyncio.run(scenario())


def test_a_hung_redis_is_noticed_and_publishes_do_not_hang(cluster: Cluster, own_redis: RedisProcess,
                                                           channel: str) -> None:  # fmt: skip
    (node,) = cluster(1, redis=own_redis)
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing, closes nothing
    try:
        started = time.monotonic()
        answer = publish(node, channel, "into the void")
        assert answer.status_code == 503 and time.monotonic() - started < 8
        wait_until(lambda: httpx.get(f"{node.url}/healthz").status_code == 503, 15, "the node to notice")
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: httpx.get(f"{node.url}/healthz").status_code == 200, 15, "the node to recover")
    assert publish(node, channel, "back").status_code in (201, 202)


def test_a_cursor_from_a_process_ahead_of_this_one_gets_no_duplicates(
    cluster: Cluster, redis_server: RedisProcess, prefix: str, channel: str
) -> None:
    """A client saw a message on another process that has not reached this one yet: when it
    arrives here, neither its long-poll nor its stream gets it again."""
    (node,) = cluster(1)
    publish(node, channel, "m1")
    # m2 enters history but is not yet announced: this process lags behind the client.
    m2 = redis_server.cli("XADD", f"{prefix}history:{channel}", "*", "d", '"m2"')

    async def scenario() -> None:
        held = await Connection.open(node.host, node.port)
        held.send("GET", f"/sub/{channel}?timeout=30&last_id={m2}")
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream(f"/sse/{channel}", headers={"Last-Event-ID": m2})
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(f"{node.url}/channels/{channel}").json()["subscribers"] == 2, 10,
            "both subscribers to be counted",
        )  # fmt: skip
        # Now m2 arrives on the subscription, as a publish elsewhere would have announced it.
        announce = f'PUBLISH {prefix}{channel} "\\x00{m2}\\x00\\"m2\\""\n'
        subprocess.run(["redis-cli", "-p", str(redis_server.port)], input=announce, text=True, check=True,
                       capture_output=True, timeout=10)  # fmt: skip
        m3 = publish(node, channel, "m3").json()["id"]
        answer = (await held.response()).json()
        assert [m["data"] for m in answer["messages"]] == ["m3"] and answer["last_id"] == m3
        events = await read_events(sse, '"m3"')
        assert [json.loads(e["data"])["data"] for e in events] == ["m3"]
        held.close()
        sse.close()

    asyncio.run(scenario())


# A publisher written before Tidings existed: plain redis-py, one PUBLISH per line of input.
PLAIN_PUBLISHER = """
import sys
import redis

client = redis.Redis(port=int(sys.argv[1]))
for line in sys.stdin:
    client.publish(sys.argv[2], line.rstrip("\\n"))
"""


def plain_publish(redis: RedisProcess, channel: str, *lines: str) -> None:
    """Run the plain redis-py publisher: each of `lines` PUBLISHed on Redis channel `channel`."""
    subprocess.run([sys.executable, "-c", PLAIN_PUBLISHER, str(redis.port), channel], input="".join(
        line + "\n" for line in lines), text=True, check=True, capture_output=True, timeout=30)  # fmt: skip


def test_a_plain_redis_py_publisher_reaches_the_sse_subscribers_of_its_channels(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess
) -> None:
    node = start_server("--broker", own_redis.url, "--redis-subscribe", "messages,news.*", "--log-level", "debug")

    async def scenario() -> None:
        messages = await Connection.open(node.host, node.port)
        await messages.start_stream("/sse/messages,elsewhere")
        news = await Connection.open(node.host, node.port)
        await news.start_stream("/sse/news.sport")
        page = await Connection.open(node.host, node.port)
        await page.start_stream("/stream/messages?format=html")
        await asyncio.to_thread(plain_publish, own_redis, "messages", "hello", "quit", "still here")
        # In the HTML stream too, as messages without an id of their own.
        html = (await page.read_until(b"still here")).decode()
        assert html.count('<div class="m" data-id=""') == 3, html
        page.close()
        events = await read_events(messages, '"still here"')
        got = [json.loads(e["data"]) for e in events]
        assert [m["data"] for m in got] == ["hello", "quit", "still here"]  # quit is just a message
        assert all(m["id"] is None and m["channel"] == "messages" for m in got)
        # A glob pattern; a Redis channel it matches that is no Tidings channel name is ignored.
        await asyncio.to_thread(plain_publish, own_redis, "news.bad name", "x", "y")
        await asyncio.to_thread(plain_publish, own_redis, "news.sport", '{"score": [2, 1]}')
        [event] = await read_events(news, '"score"')
        assert json.loads(event["data"])["data"] == {"score": [2, 1]}
        # Outside the patterns: not taken in (the sentinel after it on a subscribed channel comes first).
        await asyncio.to_thread(plain_publish, own_redis, "elsewhere", "not for Tidings")
        await asyncio.to_thread(plain_publish, own_redis, "messages", "sentinel")
        events = await read_events(messages, '"sentinel"')
        assert [json.loads(e["data"])["data"] for e in events] == ["sentinel"]
        messages.close()
        news.close()

    asyncio.run(scenario())
    assert node.log().count("'news.bad name'") == 1, node.log()  # logged once, at debug
    # Tidings' own keys and channels keep the prefix.
    publish(node, "messages", "stored")
    keys = own_redis.cli("KEYS", "*").split()
    assert keys and all(key.startswith("tidings:") for key in keys), keys
    assert own_redis.cli("PUBSUB", "CHANNELS") == ""  # only patterns: tidings:*, messages, news.*


def test_overlapping_redis_subscriptions_deliver_each_message_once(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess
) -> None:
    """`*` also matches Tidings' own channels (tidings:<channel>): those stay Tidings' own, and
    a channel several patterns match is delivered once."""
    node = start_server("--broker", own_redis.url, "--redis-subscribe", "messages,mess*,*")

    async def scenario() -> None:
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream("/sse/messages,tidings:messages")
        await asyncio.to_thread(plain_publish, own_redis, "messages", "plain")
        stored = publish(node, "messages", "stored").json()["id"]
        await asyncio.to_thread(plain_publish, own_redis, "messages", "sentinel")
        events = await read_events(sse, '"sentinel"')
        got = [json.loads(e["data"]) for e in events]
        assert [(m["channel"], m["data"], m["id"]) for m in got] == [
            ("messages", "plain", None), ("messages", "stored", stored), ("messages", "sentinel", None),
        ]  # fmt: skip
        sse.close()

    asyncio.run(scenario())


def test_plain_redis_channels_are_subscribed_again_after_a_reconnect(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess
) -> None:
    node = start_server("--broker", own_redis.url, "--redis-subscribe", "messages")

    async def scenario() -> None:
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream("/sse/messages")
        own_redis.kill()
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(f"{node.url}/healthz").status_code == 503, 10, "healthz to report 503"
        )
        own_redis.start()
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(f"{node.url}/healthz").status_code == 200, 20, "the node to reconnect"
        )
        await asyncio.to_thread(plain_publish, own_redis, "messages", "after the restart")
        [event] = await read_events(sse, '"after the restart"')
        assert json.loads(event["data"])["channel"] == "messages"
        sse.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--broker", "REDIS", "--redis-prefix", ""], "--redis-prefix must not be empty"),
        (["--redis-subscribe", "messages"], "--redis-subscribe needs a Redis broker"),
        (["--broker", "REDIS", "--redis-subscribe", "messages,bad name"], "--redis-subscribe: 'bad name'"),
        (["--broker", "REDIS", "--redis-subscribe", "room[12]"], "--redis-subscribe: 'room[12]'"),
        (["--broker", "REDIS", "--redis-subscribe", "tidings:chat"], "--redis-subscribe: 'tidings:chat'"),
    ],
)
def test_redis_settings_that_make_no_sense_are_one_line_and_exit_1(
    redis_server: RedisProcess, flags: list[str], error: str
) -> None:
    flags = [redis_server.url if flag == "REDIS" else flag for flag in flags]
    done = subprocess.run([sys.executable, "-m", "tidings", "serve", "--port", "0", *flags],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith(f"tidings: {error}"), done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_cli_publish_refuses_an_empty_redis_prefix(redis_server: RedisProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "publish", "--redis", redis_server.url, "--redis-prefix", "", "c", "m"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("tidings: --redis-prefix must not be empty"), done.stderr
    assert done.stderr.strip().count("\n") == 0 and redis_server.cli("KEYS", "epoch") == ""


@pytest.mark.parametrize(
    ("url", "error"),
    [("redis://127.0.0.1:1/0", "redis: Error 111 connecting"), ("memory", "--redis takes a Redis URL")],
)
def test_cli_publish_without_a_redis_to_reach_says_so_in_one_line(url: str, error: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tidings", "publish", "--redis", url, "c", "m"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith(f"tidings: {error}"), done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_a_stream_read_through_redis_is_refused_past_max_channels(cluster: Cluster, channel: str) -> None:
    # Its history would bring the channel in from Redis: the cap is checked before, not skipped.
    (node,) = cluster(1, "--max-channels", "2")
    publish(node, f"{channel}-c", "history")

    async def scenario() -> None:
        held = []
        for name in (f"{channel}-a", f"{channel}-b"):
            sse = await Connection.open(node.host, node.port)
            head = await sse.start_stream(f"/sse/{name}")
            assert head.status == 200, head.body
            held.append(sse)
        third = await Connection.open(node.host, node.port)
        head = await third.start_stream(f"/sse/{channel}-c?last_event_id=oldest")
        assert head.status == 507, head.status
        assert b'"too_many_channels"' in await third.read_chunk()
        for sse in [*held, third]:
            sse.close()

    asyncio.run(scenario())


def test_a_node_at_its_memory_caps_caches_less_and_refuses_no_publish(cluster: Cluster, channel: str) -> None:
    # Redis keeps the history: the node's buffers are a cache, and at a cap it drops instead of refusing.
    (node,) = cluster(1, "--max-channels", "4", "--max-buffered-bytes", "4000")
    names = [f"{channel}-{i}" for i in range(10)]
    first: dict[str, str] = {}
    for i, name in enumerate(names):
        for j in range(3):
            answer = publish(node, name, f"{i}-{j}-" + "x" * 300)
            assert answer.status_code == 202, answer.text
            first.setdefault(name, answer.json()["id"])

    def metric(name: str) -> float:
        return scrape(node)[(name, ())]

    async def newcomer(name: str) -> None:
        sse = await Connection.open(node.host, node.port)
        head = await sse.start_stream(f"/sse/{name}")
        assert head.status == 200, head.body
        await asyncio.to_thread(publish, node, name, "hello")
        await read_events(sse, "hello")
        sse.close()

    wait_until(lambda: metric("tidings_messages_total") == 30, 10, "every message back from Redis")
    assert metric("tidings_channels") <= 4 and metric("tidings_buffered_bytes") <= 4000
    # The cache is full of channels from the bus: a newcomer takes the place of one nobody reads here.
    asyncio.run(newcomer(f"{channel}-early"))
    # Every channel's history is whole, from the cache or from Redis.
    for i, name in enumerate(names):
        body = poll(node, name, first[name])
        assert [str(m["data"])[:4] for m in body["messages"]] == [f"{i}-1-", f"{i}-2-"]  # type: ignore[index]
        assert body["gap"] is False
    # The sweep gives back what the reads cached past the caps; a new subscriber gets in.
    wait_until(
        lambda: metric("tidings_channels") <= 3 and metric("tidings_buffered_bytes") <= 4000,
        10,
        "the cache shed to 90% of the caps (the next sweeps)",
    )
    asyncio.run(newcomer(f"{channel}-new"))


def test_a_repeated_websocket_subscribe_reads_the_backlog_once(cluster: Cluster, channel: str) -> None:
    # On a process that does not have the history, a subscribe command's read waits on Redis: a
    # second command for the same channel arriving meanwhile must not send the backlog again.
    a, b = cluster(2)
    for i in range(3):
        assert publish(a, channel, f"m{i}").status_code == 202

    async def scenario() -> list[str]:
        async with ws_connect(f"ws://{b.host}:{b.port}/ws") as ws:
            command = json.dumps({"subscribe": [channel], "last_id": "oldest"})
            await ws.send(command)
            await ws.send(command)
            await asyncio.to_thread(publish, a, channel, "sentinel")
            got: list[str] = []
            async with asyncio.timeout(10):
                while "sentinel" not in got:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "message":
                        got.append(frame["message"]["data"])
            return got

    assert asyncio.run(scenario()) == ["m0", "m1", "m2", "sentinel"]
