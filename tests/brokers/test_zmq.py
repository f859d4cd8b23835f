"""The ZeroMQ bus: a real `tidings zmq-proxy` sequencer and Tidings processes, over ZeroMQ's tcp://
and ipc://, and over the sequencer's Unix socket (`--local`, `--broker zmq+unix:`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import httpx
import pytest
import zmq
from conftest import ServerProcess, free_ports, wait_until
from rawhttp import Connection, read_events

from tidings.sequencer import RecordReader


class Forwarder:
    """`tidings zmq-proxy` (the sequencer) in a subprocess."""

    def __init__(self, frontend: str, backend: str, requests: str, local: str | None = None) -> None:
        self.frontend, self.backend, self.requests, self.local = frontend, backend, requests, local
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        # A node reconnecting to a port in the ephemeral range can briefly hold it itself (a TCP
        # self-connect, which ZeroMQ drops at once): retry the bind for a moment.
        deadline = time.monotonic() + 10
        while True:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidings", "zmq-proxy", "--frontend", self.frontend, "--backend", self.backend,
                 "--requests", self.requests, *(["--local", self.local] if self.local else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert self.proc.stderr is not None
            line = self.proc.stderr.readline()  # printed once both sockets are bound
            if "zmq-proxy" in line:
                return
            self.proc.wait(10)
            if "Address already in use" not in line or time.monotonic() > deadline:
                raise AssertionError(f"the forwarder did not start: {line}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_forwarder(carrier: str) -> Forwarder:
    """A sequencer its Tidings processes reach over `carrier`: tcp, ipc or unix."""
    if carrier == "tcp":
        front, back, requests = free_ports(3)
        return Forwarder(f"tcp://127.0.0.1:{front}", f"tcp://127.0.0.1:{back}", f"tcp://127.0.0.1:{requests}")
    folder = tempfile.mkdtemp(prefix="tidings-zmq-")
    local = f"{folder}/local" if carrier == "unix" else None
    return Forwarder(f"ipc://{folder}/front", f"ipc://{folder}/back", f"ipc://{folder}/requests", local)


@pytest.fixture(params=["tcp", "ipc", "unix"])
def forwarder(request: pytest.FixtureRequest) -> Iterator[Forwarder]:
    proc = start_forwarder(request.param)
    yield proc
    proc.kill()


@pytest.fixture
def tcp_forwarder() -> Iterator[Forwarder]:
    proc = start_forwarder("tcp")
    yield proc
    proc.kill()


@pytest.fixture(params=["tcp", "unix"])
def tcp_or_unix_forwarder(request: pytest.FixtureRequest) -> Iterator[Forwarder]:
    proc = start_forwarder(request.param)
    yield proc
    proc.kill()


def nodes(start_server: Callable[..., ServerProcess], forwarder: Forwarder, count: int) -> list[ServerProcess]:
    if forwarder.local:
        url = f"zmq+unix:{forwarder.local}"
    else:
        url = f"zmq:{forwarder.frontend},{forwarder.backend},{forwarder.requests}"
    return [start_server("--broker", url) for _ in range(count)]


def publish(node: ServerProcess, channel: str, data: object) -> httpx.Response:
    answer = httpx.post(f"{node.url}/pub/{channel}", json=data, timeout=10)
    assert answer.status_code in (201, 202), answer.text
    return answer


def local_subscribers(node: ServerProcess, channel: str) -> int:
    count = httpx.get(f"{node.url}/channels/{channel}").json()["subscribers"]
    assert isinstance(count, int)
    return count


def bus(node: ServerProcess) -> dict[str, int]:
    health = httpx.get(f"{node.url}/healthz").json()
    return {key: health[key] for key in ("received", "lost")}


async def subscribed_streams(pairs: list[tuple[ServerProcess, str]]) -> list[Connection]:
    """An SSE stream per (node, channel), returned once each node counts its subscriber."""
    streams = []
    for node, channel in pairs:
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream(f"/sse/{channel}")
        streams.append(sse)
    for node, channel in pairs:
        await asyncio.to_thread(
            wait_until, lambda n=node, c=channel: local_subscribers(n, c) >= 1, 10, f"a subscriber on {channel}"
        )
    return streams


class ExternalPublisher:
    """A program publishing into the forwarder. It uses an XPUB socket — a PUB that also hears
    the subscriptions arriving — so the test can wait for them instead of sleeping."""

    def __init__(self, frontend: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(frontend)

    def wait_subscribed(self, channel: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100) and self.sock.recv() == b"\x01" + channel.encode():
                return
        raise AssertionError(f"no subscription for {channel} reached the publisher within {timeout} s")

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def close(self) -> None:
        self.sock.close(0)
        self.context.term()


def test_publishes_reach_every_node_and_external_publishers_reach_browsers(
    start_server: Callable[..., ServerProcess], forwarder: Forwarder, channel: str
) -> None:
    a, b = nodes(start_server, forwarder, 2)

    async def scenario() -> None:
        sse_a, sse_b = await subscribed_streams([(a, channel), (b, channel)])
        publish(a, channel, {"from": "A"})
        [event] = await read_events(sse_b, '"A"')
        assert json.loads(event["data"])["data"] == {"from": "A"}
        await read_events(sse_a, '"A"')  # the publishing node's own subscribers, too
        external = ExternalPublisher(forwarder.frontend)
        try:
            await asyncio.to_thread(external.wait_subscribed, channel)
            external.send(channel.encode(), b"hello from a ZMQ PUB")
            external.send(channel.encode(), b'{"nick":"zmq","text":"hi"}')
            for sse in (sse_a, sse_b):
                events = await read_events(sse, '"nick"')
                assert [json.loads(e["data"])["data"] for e in events[-2:]] == [
                    "hello from a ZMQ PUB",
                    {"nick": "zmq", "text": "hi"},
                ]
        finally:
            external.close()
        sse_a.close()
        sse_b.close()

    asyncio.run(scenario())


def test_a_skipped_sequence_number_is_a_gap_not_silent_loss(
    start_server: Callable[..., ServerProcess], tcp_forwarder: Forwarder, channel: str
) -> None:
    (node,) = nodes(start_server, tcp_forwarder, 1)

    async def scenario() -> None:
        cursor = httpx.get(f"{node.url}/sub/{channel}?timeout=0").json()["last_id"]
        sse = await Connection.open(node.host, node.port)
        await sse.start_stream(f"/sse/{channel}")
        external = ExternalPublisher(tcp_forwarder.frontend)
        try:
            await asyncio.to_thread(external.wait_subscribed, channel)
            for seq in (1, 2, 4):  # 3 was "dropped"
                external.send(channel.encode(), json.dumps(f"m{seq}").encode(), b"ext %d" % seq)
            events = await read_events(sse, '"m4"')
        finally:
            external.close()
        assert [(e.get("event"), e["data"]) for e in events if e.get("event") == "gap"] == [
            ("gap", json.dumps({"channels": [channel]}, separators=(",", ":")))
        ]
        assert [json.loads(e["data"])["data"] for e in events if "event" not in e] == ["m1", "m2", "m4"]
        # A long-poll from before the loss is told so, and gets what came after it.
        answer = httpx.get(f"{node.url}/sub/{channel}", params={"last_id": cursor, "timeout": 0}).json()
        assert answer["gap"] is True and [m["data"] for m in answer["messages"]] == ["m4"]
        assert bus(node)["lost"] == 1
        sse.close()

    asyncio.run(scenario())


def test_a_node_receives_only_the_channels_it_has_subscribers_for(
    start_server: Callable[..., ServerProcess], tcp_forwarder: Forwarder, channel: str
) -> None:
    a, b = nodes(start_server, tcp_forwarder, 2)
    other = channel + "-wanted"

    async def scenario() -> None:
        (sse,) = await subscribed_streams([(b, other)])
        before = bus(b)["received"]
        for i in range(50):
            publish(a, channel, i)  # nobody on B listens to this one
        publish(a, other, "wanted")  # sent after them on the same path: they would be here first
        await read_events(sse, '"wanted"')
        assert bus(b)["received"] == before + 1
        sse.close()

    asyncio.run(scenario())


def test_a_restarted_sequencer_is_a_gap_never_silent_loss(
    start_server: Callable[..., ServerProcess], tcp_or_unix_forwarder: Forwarder, channel: str
) -> None:
    tcp_forwarder = tcp_or_unix_forwarder
    a, b = nodes(start_server, tcp_forwarder, 2)

    async def scenario() -> None:
        sse, local = await subscribed_streams([(b, channel), (a, channel)])
        publish(a, channel, "before")
        await read_events(sse, '"before"')
        tcp_forwarder.kill()
        # Nobody numbers messages while the sequencer is away: a publish is refused, not lost.
        during = httpx.post(f"{a.url}/pub/{channel}", json="during", timeout=10)
        assert during.status_code == 503 and during.json()["error"] == "broker_unavailable", during.text
        tcp_forwarder.start()
        # ZeroMQ (and the Unix link) reconnect and resubscribe by themselves: publish until B hears again.
        raw = b""
        async with asyncio.timeout(20):
            for attempt in range(200):
                if httpx.post(f"{a.url}/pub/{channel}", json=f"after{attempt}", timeout=10).status_code != 201:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    raw += await sse.read_chunk(0.2)
                except TimeoutError:
                    continue
                if b'"after' in raw:
                    break
        raw += await sse.read_until(b"\n\n")
        # The new sequencer's history starts with it: what the old one held is told as a gap.
        first_after = raw.index(b'"after')
        assert b"event: gap" in raw[:first_after], raw
        assert b'"during"' not in raw
        sse.close()
        local.close()

    asyncio.run(scenario())


def test_a_client_resumes_exactly_on_another_node(
    start_server: Callable[..., ServerProcess], forwarder: Forwarder, channel: str
) -> None:
    a, b = nodes(start_server, forwarder, 2)
    cursor = httpx.get(f"{a.url}/sub/{channel}?timeout=0").json()["last_id"]
    sent = [publish(a if i % 2 else b, channel, i).json()["id"] for i in range(6)]
    # Long-polls alternating between the nodes, each from the cursor the other handed out.
    got = []
    for turn in range(6):
        node = (a, b)[turn % 2]
        answer = httpx.get(f"{node.url}/sub/{channel}", params={"last_id": cursor, "timeout": 5}).json()
        assert answer["gap"] is False, answer
        (message,) = answer["messages"][:1]
        got.append(message["id"])
        cursor = message["id"]
    assert got == sent


def test_the_sequencer_answers_a_turn_of_requests_in_one_message_and_refuses_malformed_ones(
    forwarder: Forwarder, channel: str
) -> None:
    """The wire between the sequencer and Tidings processes, spoken by hand: the requests of a
    turn travel as one message and their answers come back as one; a malformed request is
    refused by its reference and does not stop the others; a message reaches the subscribers
    of its channel alone, not those of a longer name it is a prefix of."""
    context = zmq.Context()
    dealer, sub = context.socket(zmq.DEALER), context.socket(zmq.SUB)
    try:
        dealer.connect(forwarder.requests)
        sub.connect(forwarder.backend)
        sub.setsockopt(zmq.SUBSCRIBE, channel.encode() + b"\x00")
        deadline = b"%d" % (time.time() * 1000 + 60_000)

        def request(*fields: bytes) -> bytes:
            return b"\x00".join(fields)

        # Probe until the subscription works (ZeroMQ subscribes asynchronously).
        probed = False
        for _ in range(100):
            dealer.send(request(b"probe", b"p", deadline, channel.encode(), b"token"))
            assert dealer.poll(5000)
            dealer.recv_multipart()
            if sub.poll(50):
                assert sub.recv().startswith(channel.encode() + b"\x00probe\x00token\x00")
                probed = True
                break
        assert probed
        dealer.send_multipart([
            request(b"pub", b"1", deadline, channel.encode() + b"x", b"node", b"0", b"2"),
            request(b"pub", b"2", deadline, channel.encode(), b"node", b"0", b"{not json"),
            request(b"pub", b"3", deadline, channel.encode(), b"node", b"0", b'{"n":1}'),
            request(b"nonsense", b"4", deadline, b""),
            request(b"pub", b"5", deadline, channel.encode(), b"node", b"0", b'{\n  "n": 2\n}'),
            request(b"pub", b"6", deadline, channel.encode(), b"node", b"0", '"é"'.encode("utf-16")),
        ])  # fmt: skip
        assert dealer.poll(5000)
        answers = [frame.split(b"\x00") for frame in dealer.recv_multipart()]
        statuses = [a[:2] for a in answers]
        assert statuses == [[b"1", b"ok"], [b"2", b"err"], [b"3", b"ok"], [b"4", b"err"], [b"5", b"ok"], [b"6", b"err"]]
        assert answers[1][2] == answers[5][2] == b"invalid_request"
        assert sub.poll(5000)
        fields = sub.recv().split(b"\x00")
        assert fields[0] == channel.encode() and fields[1:3] == [b"m", answers[2][2]] and fields[5] == b'{"n":1}'
        assert sub.poll(5000)
        assert sub.recv().split(b"\x00")[5] == b'{"n":2}'  # (compact: SSE and NDJSON frame by lines)
        assert not sub.poll(100)  # (nothing of the longer name, nothing refused)
    finally:
        dealer.close(0)
        sub.close(0)
        context.term()


def test_a_sequencer_of_another_version_is_named_in_the_log_and_counts_as_away(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A sequencer whose heartbeats carry another version of the frames (a mixed upgrade): the
    server says so in its log and /healthz answers 503, instead of its requests timing out
    without a word."""
    folder = tempfile.mkdtemp(prefix="tidings-zmq-")
    front, back, requests = (f"ipc://{folder}/{name}" for name in ("front", "back", "requests"))
    context = zmq.Context()
    router, xpub = context.socket(zmq.ROUTER), context.socket(zmq.XPUB)
    router.bind(requests)
    xpub.bind(back)
    stop = threading.Event()

    def other_sequencer() -> None:  # answers requests, and beats with version 9
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            xpub.send(b"\x00" + str(int(time.time() * 1000)).encode() + b"-0\x009")
            if router.poll(50):
                peer, *frames = router.recv_multipart()
                router.send_multipart([peer, *(frame.split(b"\x00")[1] + b"\x00ok" for frame in frames)])

    beating = threading.Thread(target=other_sequencer)
    beating.start()
    try:
        srv = start_server("--broker", f"zmq:{front},{back},{requests}")
        wait_until(lambda: "speaks version 9 of the bus" in srv.log(), 10, "the log to name the other version")
        answer = httpx.get(f"{srv.url}/healthz", timeout=10)
        assert answer.status_code == 503 and answer.json()["status"] == "unavailable"
    finally:
        stop.set()
        beating.join(10)
        router.close(0)
        xpub.close(0)
        context.term()


class LocalRecords:
    """The sequencer's Unix socket spoken by hand: records of a 4-byte length, a kind, a frame."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buffer = b""

    @staticmethod
    def record(kind: bytes, frame: bytes) -> bytes:
        return (len(frame) + 1).to_bytes(4, "big") + kind + frame

    def send(self, *records: bytes) -> None:
        self.sock.sendall(b"".join(records))

    def next(self, skip_heartbeats: bool = True) -> tuple[bytes, bytes]:
        """The next record (kind, frame), within 5 s."""
        while True:
            while len(self.buffer) < 4 or len(self.buffer) < 4 + int.from_bytes(self.buffer[:4], "big"):
                chunk = self.sock.recv(65536)
                assert chunk, "the sequencer closed the connection"
                self.buffer += chunk
            end = 4 + int.from_bytes(self.buffer[:4], "big")
            kind, frame, self.buffer = self.buffer[4:5], self.buffer[5:end], self.buffer[end:]
            if not (skip_heartbeats and kind == b"m" and frame.startswith(b"\x00")):
                return kind, frame

    def close(self) -> None:
        self.sock.close()


def test_the_sequencers_unix_socket_answers_requests_and_sends_exactly_the_subscribed_channels(
    channel: str,
) -> None:
    """The local carrier spoken by hand: a turn of requests sent in one write is answered in
    order (a malformed one refused by its reference), a subscription is answered by messages
    of that channel alone (not of a longer name it is a prefix of), heartbeats come to every
    connection, and a malformed record ends the connection."""
    forwarder = start_forwarder("unix")
    assert forwarder.local is not None
    peer = LocalRecords(forwarder.local)
    try:
        kind, frame = peer.next(skip_heartbeats=False)  # every connection hears the heartbeat
        assert kind == b"m" and frame.startswith(b"\x00") and frame.split(b"\x00")[2] == b"2"
        deadline = b"%d" % (time.time() * 1000 + 60_000)
        name = channel.encode()

        def request(*fields: bytes) -> bytes:
            return LocalRecords.record(b"q", b"\x00".join(fields))

        peer.send(
            LocalRecords.record(b"s", name),
            request(b"pub", b"1", deadline, name + b"x", b"node", b"0", b"2"),
            request(b"pub", b"2", deadline, name, b"node", b"0", b"{not json"),
            request(b"pub", b"3", deadline, name, b"node", b"0", b'{\n  "n": 1\n}'),
            request(b"nonsense", b"4", deadline, b""),
        )
        records = [peer.next() for _ in range(5)]  # (four answers, one message)
        answers = [frame.split(b"\x00") for kind, frame in records if kind == b"a"]
        assert [a[:2] for a in answers] == [[b"1", b"ok"], [b"2", b"err"], [b"3", b"ok"], [b"4", b"err"]]
        assert answers[1][2] == answers[3][2] == b"invalid_request"
        [message] = [frame.split(b"\x00") for kind, frame in records if kind == b"m"]
        assert message[:3] == [name, b"m", answers[2][2]] and message[5] == b'{"n":1}'
        peer.send(LocalRecords.record(b"u", name), request(b"pub", b"5", deadline, name, b"node", b"0", b"5"))
        assert peer.next()[0] == b"a"  # (its answer; no message: unsubscribed)
        peer.send(b"\x00\x00\x00\x00")  # a record of no length
        with pytest.raises((AssertionError, ConnectionResetError)):
            while True:
                peer.next(skip_heartbeats=True)
    finally:
        peer.close()
        forwarder.kill()


def test_records_are_read_whole_however_the_stream_cuts_them() -> None:
    records = [(b"q", b"x" * 100_000), (b"m", b"\x00epoch\x002"), (b"a", b"1\x00ok")]
    stream = b"".join(LocalRecords.record(kind, frame) for kind, frame in records)
    for size in (1, 3, 7, 4096, len(stream)):
        reader, got = RecordReader(), []
        for start in range(0, len(stream), size):
            got += reader.feed(stream[start : start + size])
        assert [(bytes([kind]), frame) for kind, frame in got] == records
    with pytest.raises(ValueError):
        RecordReader().feed(b"\x7f\xff\xff\xff")


class CuttableRelay:
    """A Unix socket in front of the sequencer's, piping bytes both ways, that the test can cut
    (every connection closed, none accepted) and open again: a connection lost and made again."""

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target = path, target
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()

    async def open(self) -> None:
        self.connected.clear()
        self.server = await asyncio.start_unix_server(self._pipe, self.path)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        os.unlink(self.path)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers += [writer, up_writer]
        self.connected.set()

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
            sink.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


def test_a_process_whose_unix_connection_was_lost_reads_what_it_missed_without_a_next_message(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    """Messages published while a process's connection to the sequencer was down reach its
    subscribers once it is made again, exactly and with no gap, though no message follows on
    the channel to show by its previous id that some were missed."""
    forwarder = start_forwarder("unix")
    assert forwarder.local is not None
    relay_path = forwarder.local + "-relay"

    async def scenario() -> None:
        relay = CuttableRelay(relay_path, cast(str, forwarder.local))
        await relay.open()
        behind = await asyncio.to_thread(start_server, "--broker", f"zmq+unix:{relay_path}")
        direct = await asyncio.to_thread(start_server, "--broker", f"zmq+unix:{forwarder.local}")
        (sse,) = await subscribed_streams([(behind, channel)])
        await asyncio.to_thread(publish, direct, channel, "one")
        await read_events(sse, '"one"')
        await relay.cut()
        await asyncio.to_thread(publish, direct, channel, "two")  # (while `behind` is cut off)
        await asyncio.to_thread(publish, direct, channel, "three")
        await relay.open()
        events = await read_events(sse, '"three"', timeout=15)
        assert [json.loads(e["data"])["data"] for e in events if e.get("event") != "gap"] == ["two", "three"]
        assert not [e for e in events if e.get("event") == "gap"]
        sse.close()
        await relay.cut()

    try:
        asyncio.run(scenario())
    finally:
        forwarder.kill()


def test_zeromq_tools_listening_by_prefix_hear_the_fan_out(channel: str) -> None:
    """A program on the backend subscribed to a part of a channel's frames (``channel NUL m
    NUL``: its messages alone) or to every frame (an empty prefix) hears them: the sequencer
    sends on ZeroMQ only what someone there subscribed to, and such subscriptions count as
    prefixes, not as channels. One listener at a time (a prefix listener lets all through)."""
    forwarder = start_forwarder("ipc")
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    n = 0
    try:
        dealer.connect(forwarder.requests)
        for prefix in (channel.encode() + b"\x00m\x00", b""):
            sub = context.socket(zmq.SUB)
            try:
                sub.connect(forwarder.backend)
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
                heard = False
                deadline = time.monotonic() + 10
                while not heard and time.monotonic() < deadline:  # (ZeroMQ subscribes asynchronously)
                    n += 1
                    expires = b"%d" % (time.time() * 1000 + 60_000)
                    dealer.send(b"\x00".join([b"pub", b"%d" % n, expires, channel.encode(), b"node", b"0", b"%d" % n]))
                    assert dealer.poll(5000)
                    assert dealer.recv().split(b"\x00")[1] == b"ok"
                    while sub.poll(20):
                        heard = heard or sub.recv().startswith(channel.encode() + b"\x00m\x00")
                assert heard, prefix
            finally:
                sub.close(0)
    finally:
        dealer.close(0)
        context.term()
        forwarder.kill()


def test_a_killed_sequencers_socket_file_is_taken_over_and_a_live_ones_is_not() -> None:
    forwarder = start_forwarder("unix")
    assert forwarder.local is not None
    try:
        forwarder.kill()  # (SIGKILL: its socket file stays behind)
        assert os.path.exists(forwarder.local)
        forwarder.start()  # binds the same path again
        second = subprocess.run(
            [sys.executable, "-m", "tidings", "zmq-proxy", "--frontend", "ipc://" + forwarder.local + "-f",
             "--backend", "ipc://" + forwarder.local + "-b", "--requests", "ipc://" + forwarder.local + "-r",
             "--local", forwarder.local],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode != 0 and "already listens" in second.stderr, second.stderr
        peer = LocalRecords(forwarder.local)  # the first one still serves there
        assert peer.next(skip_heartbeats=False)[0] == b"m"
        peer.close()
    finally:
        forwarder.kill()


def test_processes_tell_the_sequencer_their_presence_in_changes(forwarder: Forwarder, channel: str) -> None:
    """`here` (a process's presence: whole, or the changes since its last) and `who` (the others'),
    spoken by hand: changes from a process the sequencer does not know are answered 0 (then it
    says it all), and a process never hears its own."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.connect(forwarder.requests)
        deadline = b"%d" % (time.time() * 1000 + 60_000)

        def ask(*fields: bytes) -> list[bytes]:
            dealer.send(b"\x00".join([fields[0], b"r", deadline, *fields[1:]]))
            assert dealer.poll(5000)
            return dealer.recv().split(b"\x00")[2:]  # (after the reference and "ok")

        ann = b'{"users":{"ann":[1,["sse"],5,null]},"anonymous":0}'
        room, other = channel.encode(), channel.encode() + b"-other"
        assert ask(b"here", b"n1", b"0", b'{"%s":%s}' % (room, ann)) == [b"0"]  # (not known yet)
        assert ask(b"here", b"n1", b"1", b'{"%s":%s,"%s":%s}' % (room, ann, other, ann)) == [b"1"]
        assert ask(b"here", b"n1", b"0", b'{"%s":null}' % other) == [b"1"]
        who = json.loads(ask(b"who", b"n2", json.dumps([channel, f"{channel}-other"]).encode())[0])
        assert who == {channel: [json.loads(ann)], f"{channel}-other": []}
        assert json.loads(ask(b"who", b"n1", json.dumps([channel]).encode())[0]) == {channel: []}
    finally:
        dealer.close(0)
        context.term()
