"""`tidings serve --workers N`: real processes (a parent, its workers, the embedded sequencer)
and clients whose every request comes on a new connection, so the kernel may hand it to any
worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import RedisProcess, ServerProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

CLOSE = {"Connection": "close"}
Workers = tuple[ServerProcess, httpx.Client]


@pytest.fixture
def workers(start_server: Callable[..., ServerProcess]) -> Iterator[Workers]:
    """`--workers 2`, and a client that opens a new connection for every request."""
    srv = start_server("--workers", "2")
    with fresh(srv) as client:
        yield srv, client


def fresh(srv: ServerProcess) -> httpx.Client:
    """A client that opens a new connection for every request."""
    return httpx.Client(base_url=srv.url, timeout=10, headers=CLOSE, limits=httpx.Limits(max_keepalive_connections=0))


def worker_pids(srv: ServerProcess, client: httpx.Client, count: int) -> set[int]:
    """The workers that answer, asked until `count` different ones have (bounded: a worker may
    still be starting, e.g. connecting to Redis, when the first one answers)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 15
    while len(seen) < count and time.monotonic() < deadline:
        seen.add(client.get("/healthz").json()["pid"])
    assert srv.pid not in seen
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cursor_now(client: httpx.Client, channel: str) -> str:
    """The cursor that reads `channel` from now on (an empty long-poll's)."""
    cursor: str = client.get(f"/sub/{channel}", params={"timeout": 0}).json()["last_id"]
    return cursor


def poll_all(client: httpx.Client, channel: str, cursor: str, count: int) -> tuple[list[object], str]:
    """Long-poll one message at a time, each poll on a new connection, until `count` arrived."""
    got: list[object] = []
    while len(got) < count:
        answer = client.get(f"/sub/{channel}", params={"last_id": cursor, "timeout": 5}).json()
        assert answer["gap"] is False, answer
        got.extend(m["data"] for m in answer["messages"])
        cursor = answer["last_id"]
    return got, cursor


def test_long_polls_landing_on_any_worker_get_every_message_once_in_order(workers: Workers, channel: str) -> None:
    srv, client = workers
    assert len(worker_pids(srv, client, 2)) == 2  # both workers take connections
    cursor = cursor_now(client, channel)
    sent = []
    for i in range(30):
        answer = client.post(f"/pub/{channel}", json=i)  # published by whichever worker
        assert answer.status_code in (201, 202), answer.text
        sent.append(i)
    got, _ = poll_all(client, channel, cursor, 30)
    assert got == sent


def test_workers_on_redis_need_no_sequencer(
    start_server: Callable[..., ServerProcess], redis_server: RedisProcess, channel: str
) -> None:
    srv = start_server("--workers", "2", "--broker", redis_server.url, "--redis-prefix", f"w{channel}:")
    with fresh(srv) as client:
        assert client.get("/healthz").json()["broker"] == "redis"
        assert len(worker_pids(srv, client, 2)) == 2
        cursor = cursor_now(client, channel)
        for i in range(10):
            client.post(f"/pub/{channel}", json=i)
        got, _ = poll_all(client, channel, cursor, 10)
        assert got == list(range(10))
    assert "zmq-proxy" not in os.popen(f"pgrep -P {srv.pid} -a").read()


def test_a_killed_worker_is_replaced_and_its_clients_resume_exactly(workers: Workers, channel: str) -> None:
    srv, client = workers
    cursor = cursor_now(client, channel)
    for i in range(5):
        client.post(f"/pub/{channel}", json=i)
    before = worker_pids(srv, client, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(srv, client, 2) - before) == 1, 15, "a new worker in place of the killed one")
    for i in range(5, 10):
        client.post(f"/pub/{channel}", json=i)
    got, _ = poll_all(client, channel, cursor, 10)
    assert got == list(range(10))
    assert "starting it again" in srv.log()


def test_sigterm_stops_every_process_and_sighup_replaces_the_workers(workers: Workers, channel: str) -> None:
    srv, client = workers
    cursor = cursor_now(client, channel)
    client.post(f"/pub/{channel}", json="before")
    first = worker_pids(srv, client, 2)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: not any(alive(pid) for pid in first), 20, "the old workers to stop")
    second = worker_pids(srv, client, 2)
    assert not first & second
    client.post(f"/pub/{channel}", json="after")
    got, _ = poll_all(client, channel, cursor, 2)
    assert got == ["before", "after"]  # the sequencer (and so the history) stayed
    took = srv.terminate(15)
    assert took < 10 and not any(alive(pid) for pid in second)
    assert srv.log().count("stopped") >= 3  # both workers and the parent


def test_a_restarted_sequencer_is_a_gap_never_silent_loss(workers: Workers, channel: str) -> None:
    srv, client = workers
    cursor = cursor_now(client, channel)
    client.post(f"/pub/{channel}", json="before")
    (sequencer,) = [int(pid) for pid in os.popen(f"pgrep -P {srv.pid} -f zmq-proxy").read().split()]
    os.kill(sequencer, signal.SIGKILL)
    wait_until(lambda: client.post(f"/pub/{channel}", json="after").status_code in (201, 202), 20, "a new sequencer")
    # What the old sequencer held is gone: the client is told so (a worker may first hand it
    # what its cache still had, if it has not heard of the new sequencer yet), and then gets
    # what came after, once.
    got: list[object] = []
    gaps: list[bool] = []
    while "after" not in got:
        answer = client.get(f"/sub/{channel}", params={"last_id": cursor, "timeout": 5}).json()
        got.extend(m["data"] for m in answer["messages"])
        gaps.append(answer["gap"])
        cursor = answer["last_id"]
    assert got in (["after"], ["before", "after"]) and True in gaps, (got, gaps)


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_worker_count_is_a_one_line_error(value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tidings", "serve", "--port", "0", "--workers", value],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("tidings: --workers is a positive number or auto")


def metric_by_worker(text: str, name: str) -> dict[str, float]:
    """`name`'s value per `worker` label in a /metrics answer."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels["worker"]] = sample.value
    return values


def test_healthz_and_metrics_answer_for_every_worker(workers: Workers, channel: str) -> None:
    srv, client = workers
    pids = worker_pids(srv, client, 2)
    published = 12
    for i in range(published):
        client.post(f"/pub/{channel}", json=i)

    def whole_server() -> bool:  # (each worker's snapshot is at most a second old)
        health = client.get("/healthz").json()
        counts = metric_by_worker(client.get("/metrics").text, "tidings_publishes_total")
        return (
            {w["pid"] for w in health["workers"]} == pids
            and all(w["status"] == "ok" for w in health["workers"])
            and counts.keys() == {"1", "2"}
            and sum(counts.values()) == published
        )

    wait_until(whole_server, 10, "/healthz and /metrics counting both workers")
    health = client.get("/healthz").json()
    assert health["pid"] == health["workers"][0]["pid"]  # the answering worker first
    assert [w["broker"] for w in health["workers"]] == ["zmq", "zmq"]
    # Every family appears once, with a series per worker (a valid exposition).
    text = client.get("/metrics").text
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) and "# TYPE tidings_publish_seconds histogram" in types
    assert set(metric_by_worker(text, "tidings_connections").keys()) == {"1", "2"}
