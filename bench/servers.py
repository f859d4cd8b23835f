"""The servers a benchmark compares: each started fresh per run, pinned to CPU 0, on a free
127.0.0.1 port. Adding a Tidings broker is one entry in `SERVERS`. The peers: Nchan (nginx),
python-socketio (on uvicorn, `bench/socketio_app.py`) and Pushpin (with its GRIP backend,
`bench/grip_backend.py`)."""

from __future__ import annotations

import http.client
import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from bench.procstat import process_tree

SERVER_CPU = 0  # the load generator gets the other core
BUFFER = 1000  # messages buffered per channel, the same on every server
HERE = Path(__file__).parent


def free_port() -> int:
    """A free port below the ephemeral range: the load generator's thousands of outgoing
    connections take ports from that range, and could take a server's before it binds."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    while True:
        port = random.randrange(max(1024, ephemeral_low - 12000), ephemeral_low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def other_port(*taken: int) -> int:
    """A free port none of `taken` (two picks of a free port can coincide)."""
    port = free_port()
    while port in taken:
        port = free_port()
    return port


def wait_listening(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)


def _pin() -> None:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {SERVER_CPU})


class Server:
    name = ""
    flavour = ""  # how the load generator talks to it: tidings | nchan | socketio | pushpin
    transports: tuple[str, ...] = ("longpoll", "sse", "ws")
    connect_batch = 0  # subscribers opened at a time, each batch answered before the next (0: no batches)

    def __init__(self) -> None:
        self.port = free_port()
        self.publish_port = 0  # where publishes go, if not `port`
        self.buffer = BUFFER
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        return None

    def environment(self) -> dict[str, str] | None:
        """The server's environment, if not this process's."""
        return None

    def start(self) -> None:
        # A file, not a pipe: nobody reads it while the server runs (a full pipe would block it).
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=_pin, env=self.environment()
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.log is not None
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited at start: {self.log.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within 15 s")

    def answers(self) -> bool:
        """Whether the process listening on the port is this server (not something else)."""
        return True

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()


class Tidings(Server):
    flavour = "tidings"

    def __init__(self, broker: str = "memory") -> None:
        super().__init__()
        self.broker = broker
        self.name = f"tidings-{broker.split(':')[0]}"

    def answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/healthz")
            return b'"broker"' in conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            return False

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "tidings", "serve", "--port", str(self.port), "--broker", self.broker,
            "--buffer-size", str(self.buffer), "--log-level", "warning",
        ]  # fmt: skip


class TidingsCompiled(Tidings):
    """Tidings compiled by mypyc, from the environment `scripts/test --compiled` installs it into
    (`.venv-compiled`, or the interpreter named by TIDINGS_BENCH_COMPILED_PYTHON)."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.name = "tidings-compiled"
        self.python = os.environ.get("TIDINGS_BENCH_COMPILED_PYTHON") or str(HERE.parent / ".venv-compiled/bin/python")

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONSAFEPATH": "1"}  # the source tree must not shadow the installed build

    def unavailable(self) -> str | None:
        check = "import sys, tidings; sys.exit(not tidings.compiled())"
        if not Path(self.python).exists() or subprocess.run([self.python, "-P", "-c", check]).returncode != 0:
            return f"no compiled Tidings at {self.python} (scripts/test --compiled installs one)"
        return None

    def command(self) -> list[str]:
        return [self.python, *super().command()[1:]]


class TidingsWorkers(Tidings):
    """Tidings with `--workers N` and its embedded sequencer, all counted as the server."""

    def __init__(self, workers: int) -> None:
        super().__init__("memory")
        self.workers = workers
        self.name = f"tidings-w{workers}"

    def command(self) -> list[str]:
        return [*super().command(), "--workers", str(self.workers)]


class TidingsRedis(Tidings):
    """Tidings on the Redis broker with a private redis-server, pinned with it and counted
    as part of the server (its CPU and RSS are the price of scaling out)."""

    def __init__(self) -> None:
        super().__init__("redis")
        self.redis_port = other_port(self.port)
        self.broker = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_dir = ""

    def unavailable(self) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server is not installed (Debian: apt-get install redis-server)"
        return None

    def start(self) -> None:
        self.redis_dir = tempfile.mkdtemp(prefix="tidings-bench-redis-")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", self.redis_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin,
        )  # fmt: skip
        wait_listening(self.redis_port, 10)
        super().start()

    def pids(self) -> list[int]:
        assert self.redis is not None
        return super().pids() + process_tree(self.redis.pid)

    def stop(self) -> None:
        super().stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.redis_dir:
            shutil.rmtree(self.redis_dir, ignore_errors=True)


class Nchan(Server):
    name = "nchan"
    flavour = "nchan"
    module = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")

    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.dir = ""  # made at start, removed at stop
        self.workers = workers
        if workers > 1:
            self.name = f"nchan-w{workers}"

    def unavailable(self) -> str | None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            return "nginx is not installed (Debian: apt-get install nginx libnginx-mod-nchan)"
        if not self.module.exists():
            return "the Nchan module is not installed (Debian: apt-get install libnginx-mod-nchan)"
        return None

    def command(self) -> list[str]:
        self.dir = tempfile.mkdtemp(prefix="tidings-bench-nchan-")
        config = (
            (HERE / "nchan.conf")
            .read_text()
            .format(dir=self.dir, port=self.port, buffer=self.buffer, workers=self.workers)
        )
        path = Path(self.dir) / "nginx.conf"
        path.write_text(config)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-c", str(path), "-p", self.dir + "/", "-e", self.dir + "/error.log"]

    def stop(self) -> None:
        super().stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _answers_health(port: int, says: bytes) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return says in conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False


class SocketIO(Server):
    """python-socketio's ASGI server on uvicorn, one process (`bench/socketio_app.py`): WebSocket
    only. uvicorn's keep-alive timeout (5 s by default) is raised so that it keeps idle publishers."""

    name = "socketio"
    flavour = "socketio"
    transports = ("ws",)

    def unavailable(self) -> str | None:
        missing = [pkg for pkg, module in (("python-socketio", "socketio"), ("uvicorn", "uvicorn"))
                   if importlib.util.find_spec(module) is None]  # fmt: skip
        if missing:
            return f"{' and '.join(missing)} not installed (pip install -e '.[bench]')"
        return None

    def answers(self) -> bool:
        return _answers_health(self.port, b"socketio")

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "bench.socketio_app:app", "--app-dir", str(HERE.parent),
            "--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop", "--http", "httptools",
            "--timeout-keep-alive", "600", "--backlog", "8192", "--no-access-log", "--log-level", "warning",
            "--lifespan", "off",
        ]  # fmt: skip


class Pushpin(Server):
    """Debian's Pushpin with a private config (`bench/pushpin.conf`) and runtime folder, its runner
    starting condure, zurl, pushpin-proxy and pushpin-handler, plus the GRIP backend that tells it
    to hold each subscriber's stream (`bench/grip_backend.py`): all counted as the server, the
    backend too, since an application behind Pushpin pays for it. SSE only."""

    name = "pushpin"
    flavour = "pushpin"
    transports = ("sse",)
    connect_batch = 100  # a burst of a thousand new streams gets 502s

    def __init__(self) -> None:
        super().__init__()
        self.publish_port = other_port(self.port)
        self.backend_port = other_port(self.port, self.publish_port)
        self.backend: subprocess.Popen[bytes] | None = None
        self.dir = ""  # made at start, removed at stop

    def unavailable(self) -> str | None:
        missing = [binary for binary in ("pushpin", "condure", "zurl") if shutil.which(binary) is None]
        if missing:
            return f"{', '.join(missing)} not installed (Debian: apt-get install pushpin)"
        return None

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tidings-bench-pushpin-")
        for sub in ("run", "log"):
            os.mkdir(Path(self.dir) / sub)
        (Path(self.dir) / "routes").write_text(f"* 127.0.0.1:{self.backend_port}\n")
        template = (HERE / "pushpin.conf").read_text()
        config = template.format(dir=self.dir, port=self.port, publish_port=self.publish_port)
        (Path(self.dir) / "pushpin.conf").write_text(config)
        self.backend = subprocess.Popen(
            [sys.executable, str(HERE / "grip_backend.py"), str(self.backend_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin,
        )  # fmt: skip
        wait_listening(self.backend_port, 10)
        super().start()

    def command(self) -> list[str]:
        return ["pushpin", "--config", str(Path(self.dir) / "pushpin.conf")]

    def answers(self) -> bool:
        """Pushpin's proxy reaches the backend through zurl, and its publish port is open."""
        try:
            with socket.create_connection(("127.0.0.1", self.publish_port), timeout=0.5):
                pass
        except OSError:
            return False
        return _answers_health(self.port, b"grip-backend")

    def pids(self) -> list[int]:
        assert self.backend is not None
        return super().pids() + process_tree(self.backend.pid)

    def stop(self) -> None:
        super().stop()
        if self.backend is not None and self.backend.poll() is None:
            self.backend.terminate()
            self.backend.wait(10)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


SERVERS: dict[str, Callable[[], Server]] = {
    "tidings": lambda: Tidings("memory"),
    "tidings-compiled": TidingsCompiled,
    "tidings-redis": TidingsRedis,
    "tidings-w2": lambda: TidingsWorkers(2),
    "nchan": Nchan,
    "socketio": SocketIO,
    "pushpin": Pushpin,
}
# Run when named (`--servers tidings-w2,nchan-w2`): Nchan at the worker count of `tidings-w2`.
ON_REQUEST_SERVERS: dict[str, Callable[[], Server]] = {
    "nchan-w2": lambda: Nchan(2),
}
# For `python -m bench capacity` (more connections than one process may hold), not in the default runs.
MANY_PROCESS_SERVERS: dict[str, Callable[[], Server]] = {
    "tidings-w4": lambda: TidingsWorkers(4),
    "nchan-w4": lambda: Nchan(4),
}
