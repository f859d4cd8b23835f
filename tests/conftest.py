"""Fixtures: real Tidings servers in subprocesses on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

READY = re.compile(r"listening on http://([\d.]+):(\d+)/")


class ServerProcess:
    """`python -m tidings serve` on a free port; its log is collected in `lines`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, max_fds: int | None = None) -> None:
        def limit_fds() -> None:
            if max_fds is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=limit_fds,
        )
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            self.kill()
            raise AssertionError("server did not start within 15 s; log:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.url = f"http://{match[1]}:{match[2]}"
                self.host, self.port = match[1], int(match[2])
                self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return "".join(self.lines)

    def whole_log(self, timeout: float = 5.0) -> str:
        """The log up to its end, once the process (and every child writing to it) has exited."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"the log did not end within {timeout:g} s"
        return self.log()


def free_ports(count: int) -> list[int]:
    """Distinct free ports below the ephemeral range: a port the kernel hands out for outgoing
    connections can be taken by one between being picked here and being bound by a server."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    picked: list[int] = []
    while len(picked) < count:
        port = random.randrange(max(1024, ephemeral_low - 12000), ephemeral_low)
        if port in picked:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        picked.append(port)
    return picked


def free_port() -> int:
    return free_ports(1)[0]


class RedisProcess:
    """A real `redis-server` on a free 127.0.0.1 port, without persistence (a restart
    starts empty, as a crashed cache would)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tidings-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer on port {self.port} within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One Redis for tests that use their own key prefix."""
    proc = RedisProcess()
    yield proc
    proc.kill()
    shutil.rmtree(proc.dir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of the test's own, to kill and restart."""
    proc = RedisProcess()
    yield proc
    proc.kill()
    shutil.rmtree(proc.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One shared server for tests that use their own channels."""
    proc = ServerProcess("--heartbeat", "15")
    yield proc
    proc.kill()
    assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """A factory for servers with their own flags, killed after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, max_fds: int | None = None) -> ServerProcess:
        proc = ServerProcess(*args, env=env, max_fds=max_fds)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
    for proc in started:
        assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture
def channel() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> float:
    """Poll `condition` until true; fail naming `what` after `timeout` s. Returns seconds taken."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def subscribers(client: httpx.Client, channel: str) -> int:
    count = client.get(f"/channels/{channel}").json()["subscribers"]
    assert isinstance(count, int)
    return count


def scrape(srv: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A server's /metrics: (name, labels) → value."""
    answer = httpx.get(f"{srv.url}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
