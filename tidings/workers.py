"""`tidings serve --workers N`: every core of the machine, with exact cursors.

A parent binds the listening socket and starts N worker processes that inherit it (each runs the
whole server, `tidings serve`, and the kernel hands each new connection to one of them: one
accept queue, so a worker that stops or dies strands no connection, which per-worker
SO_REUSEPORT sockets do; README "Every core" has the measurements). With the
memory broker it also starts an embedded sequencer (`tidings zmq-proxy`, reached over a Unix socket
in a private folder): it numbers every message and keeps the history, and every worker's hub is a
cache of it, so a client whose requests land on different workers gets every message once, in
order. With `--broker redis://` or `zmq://` the workers share that bus instead (Redis, or a
sequencer running elsewhere, already number messages).

The parent supervises: a worker or sequencer that dies is started again (a new sequencer has a
new epoch: cursors from before it are gaps); SIGTERM/SIGINT stop the workers (each drains as a
single server does) and then the sequencer; SIGHUP replaces the workers one at a time, each new
one serving before its predecessor is told to stop. Every child holds a lifeline to the parent
(`tidings/child.py`) and stops by itself if the parent is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from tidings import child
from tidings.config import Settings
from tidings.server import StartupError, configure_logging, listening_socket, raise_fd_limit

log = logging.getLogger("tidings.workers")

READY_TIMEOUT = 15.0  # seconds a child has to say it serves
RESTART_DELAY = (0.1, 5.0)  # back-off between restarts of a child that keeps dying (first, most)


def worker_count(value: str) -> int:
    """`--workers`: a positive number, or auto (the cores this process may run on)."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers is a positive number or auto, not {value!r}")
    return int(value)


def _environment(settings: Settings) -> dict[str, str]:
    """`settings` as the TIDINGS_* variables `tidings serve` reads, for a worker."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        env["TIDINGS_" + field.name.upper()] = str(value)
    return env


class Child:
    """One process the parent runs (a worker or the sequencer), started again when it dies."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], fds: Sequence[int]) -> None:
        self.name, self.argv, self.env, self.fds = name, list(argv), env, list(fds)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, lifeline: int) -> None:
        """Start and wait until it says it serves; raises StartupError if it does not."""
        ready_read, ready_write = os.pipe()
        env = {**self.env, child.READY_FD: str(ready_write), child.LIFELINE_FD: str(lifeline)}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=env, pass_fds=[*self.fds, ready_write, lifeline], stdin=subprocess.DEVNULL
            )
        finally:
            os.close(ready_write)
        loop = asyncio.get_running_loop()
        said: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not said.done():
                said.set_result(os.read(ready_read, 16))

        loop.add_reader(ready_read, readable)
        try:
            await asyncio.wait_for(asyncio.shield(said), READY_TIMEOUT)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(ready_read)
            os.close(ready_read)
        if not said.done() or not said.result():  # silence, or EOF: it exited first
            await self.stop(kill=True)
            raise StartupError(f"the {self.name} did not start (see its log above)")

    async def stop(self, kill: bool = False) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        await proc.wait()


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.folder = tempfile.mkdtemp(prefix="tidings-")
        self.sock = listening_socket(settings.host, settings.port)
        self.sock.set_inheritable(True)
        self.lifeline_read, self.lifeline_write = os.pipe()  # the write end stays here only
        broker = settings.broker
        self.sequencer: Child | None = None
        if broker in ("memory", "memory://"):
            # The workers reach it over a Unix socket (`--local`: ~4x cheaper per round trip than
            # ZeroMQ's ipc://, bench/README "Every core"); its ZeroMQ sockets serve nobody here.
            front, back, requests = (f"ipc://{self.folder}/{name}" for name in ("front", "back", "requests"))
            local = f"{self.folder}/sequencer"
            broker = f"zmq+unix:{local}"
            argv = [sys.executable, "-m", "tidings", "zmq-proxy", "--frontend", front, "--backend", back,
                    "--requests", requests, "--local", local, "--buffer-size", str(settings.buffer_size),
                    "--buffer-ttl", str(settings.buffer_ttl), "--max-channels", str(settings.max_channels),
                    "--max-buffered-bytes", str(settings.max_buffered_bytes)]  # fmt: skip
            self.sequencer = Child("sequencer", argv, dict(os.environ), [])
        env = _environment(dataclasses.replace(settings, workers="1", broker=broker))
        env[child.LISTEN_FD] = str(self.sock.fileno())
        argv = [sys.executable, "-m", "tidings", "serve"]
        self.workers = [
            Child(f"worker {i}", argv, {**env, child.WORKER: f"{i}:{self.folder}"}, [self.sock.fileno()])
            for i in range(1, count + 1)
        ]
        self.stopping = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        replace = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, replace.set)
        watchers: list[asyncio.Task[None]] = []
        # Stop every child whether this ends by a signal, a child that failed to start, or
        # cancellation. Not in a `finally`: mypyc mishandles awaits there (see `server.serve`).
        interrupted: BaseException | None = None
        try:
            children = ([self.sequencer] if self.sequencer else []) + self.workers
            for one in children:
                await one.start(self.lifeline_read)
            host, port = self.sock.getsockname()[:2]
            log.info(
                "Tidings listening on http://%s:%d/ (%d workers, broker: %s)",
                host, port, self.count, "embedded sequencer" if self.sequencer else self.settings.broker,
            )  # fmt: skip
            watchers = [loop.create_task(self._keep(one)) for one in children]
            while not stop.is_set():
                stopped, replacing = loop.create_task(stop.wait()), loop.create_task(replace.wait())
                await asyncio.wait([stopped, replacing], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                replacing.cancel()
                if replace.is_set() and not stop.is_set():
                    replace.clear()
                    await self._replace_workers()
        except BaseException as exc:
            interrupted = exc
        self.stopping = True
        for task in watchers:
            task.cancel()
        await asyncio.gather(*(one.stop() for one in self.workers))  # each drains its clients
        if self.sequencer is not None:
            await self.sequencer.stop()
        os.close(self.lifeline_write)
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        log.info("stopped")
        if interrupted is not None:
            raise interrupted

    async def _keep(self, one: Child) -> None:
        """Start `one` again whenever it exits unasked."""
        delay = RESTART_DELAY[0]
        while True:
            proc = one.proc
            assert proc is not None
            code = await proc.wait()
            if self.stopping or one.proc is not proc:  # stopping, or replaced on purpose
                if self.stopping:
                    return
                continue
            log.warning("the %s exited (%s); starting it again", one.name, code)
            await asyncio.sleep(delay)
            try:
                await one.start(self.lifeline_read)
                delay = RESTART_DELAY[0]
            except StartupError as exc:
                log.error("%s", exc)
                delay = min(delay * 2, RESTART_DELAY[1])

    async def _replace_workers(self) -> None:
        """SIGHUP: a new worker for each, one at a time, serving before the old one stops."""
        log.info("replacing the workers one at a time")
        for one in self.workers:
            old = one.proc
            await one.start(self.lifeline_read)
            if old is not None and old.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    old.send_signal(signal.SIGTERM)
                await old.wait()


def run_workers(settings: Settings) -> None:
    count = worker_count(settings.workers)
    configure_logging(settings)
    raise_fd_limit()
    supervisor = Supervisor(settings, count)
    asyncio.run(supervisor.run())
