"""Runs the server: binds, serves until SIGTERM/SIGINT, then shuts down gracefully."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tidings import child, compiled
from tidings.brokers import create_broker
from tidings.config import Settings
from tidings.web.acceptor import BACKLOG, Acceptor, connection_room
from tidings.web.app import App
from tidings.web.http import connection_factory
from tidings.web.siblings import Siblings

log = logging.getLogger("tidings")


class StartupError(Exception):
    """The server cannot start (e.g. its port is taken): one line for the user, no traceback."""


def raise_fd_limit() -> None:
    """Every held subscriber is a socket: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(settings: Settings, on_ready: Callable[[str, int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    broker = create_broker(settings)
    app = App(settings, broker, loop)  # first: a bad setting fails before the broker connects
    # Then a taken port, before the broker connects (a worker's socket is its parent's).
    sock = child.inherited_socket() or listening_socket(settings.host, settings.port)
    place = child.worker_place()
    if place is not None:
        app.siblings = Siblings(place[1], place[0], loop, app.snapshot)
    acceptor = Acceptor(loop, sock, connection_factory(app, app.limits, app.timeouts), connection_room())
    app.on_count = acceptor.count_changed
    await acceptor.listen(start_serving=False)
    await broker.start()
    await acceptor.start_serving()
    host, port = sock.getsockname()[:2]
    app.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    child.watch_lifeline(loop, stop.set)
    build = "compiled" if compiled() else "plain Python"
    log.info("Tidings listening on http://%s:%d/ (broker: %s, %s)", host, port, broker.name, build)
    child.tell_ready()
    if on_ready is not None:
        on_ready(host, port)
    # Shut down the same way when cancelled instead (an embedding program's way to stop us). Not in
    # a `finally`: compiled by mypyc, an exception suppressed in an await there (the broker's tasks'
    # CancelledError, during its close) was raised again when the block ended, after "stopped".
    interrupted: BaseException | None = None
    try:
        await stop.wait()
    except BaseException as exc:
        interrupted = exc
    log.info("shutting down: answering held requests, ending streams")
    acceptor.close()
    sock.close()  # (new connections are refused now, not left to hang while we drain)
    app.stop()
    await _drain(app, loop, settings.shutdown_grace)
    app.close()
    await broker.close()
    log.info("stopped")
    if interrupted is not None:
        raise interrupted


def listening_socket(host: str, port: int) -> socket.socket:
    """The listening socket; a failure is a StartupError that says why."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not 0 <= port <= 65535:
        raise StartupError(f"--port {port} is not a port (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {host!r} does not resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} is in use: cannot listen on {where}",
            errno.EACCES: f"permission denied: cannot listen on {where} (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: f"cannot listen on {where}: {host} is not an address of this machine",
        }
        raise StartupError(reasons.get(exc.errno or 0, f"cannot listen on {where}: {exc.strerror or exc}")) from None
    sock.setblocking(False)
    return sock


async def _drain(app: App, loop: asyncio.AbstractEventLoop, grace: float) -> None:
    """Let the final answers reach their clients, then drop whatever is left."""
    deadline = loop.time() + grace
    while app.connections and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for conn in list(app.connections):
        conn.abort()
    if app.relay.tasks:
        await asyncio.wait(app.relay.tasks, timeout=max(0.0, deadline - loop.time()))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    if settings.log_format not in ("text", "json"):
        raise ValueError(f"--log-format is text or json, not {settings.log_format!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError(f"--log-level is debug, info, warning or error, not {settings.log_level!r}")
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop (a server, a worker, the sequencer)."""
    try:
        import uvloop
    except ImportError:  # uvloop does not build everywhere; plain asyncio works the same
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(settings: Settings) -> None:
    configure_logging(settings)
    raise_fd_limit()
    run_loop(serve(settings))
