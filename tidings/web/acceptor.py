"""Accepting connections only while this process has descriptors to spare.

A process out of descriptors cannot accept: the connection stays in the kernel's queue and the
loop is woken for it again and again, while the process serves nobody new. So past `most` open
connections the acceptor stops listening, and listens again once they are down to
`RESUME_SHARE` of it; meanwhile new connections wait in the queue. With `--workers` the queue is
shared, so the other workers take them: measured, 60,000 long-polls over four workers put two
of them at this machine's 20,000-descriptor limit and the rest of the connections stalled.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Callable

log = logging.getLogger("tidings")

# Descriptors kept for what is not a connection (the bus, logs, static files) and for the
# connections a burst brings in before the count is seen (a loop accepts many per wake-up).
RESERVE = 200
RESERVE_SHARE = 0.05
RESUME_SHARE = 0.95
BACKLOG = 4096


def connection_room() -> int:
    """How many connections this process may hold with the descriptors it may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - max(RESERVE, int(soft * RESERVE_SHARE)) if soft > 2 * RESERVE else soft // 2


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        most: int,
    ) -> None:
        self.loop, self.sock, self.factory, self.most = loop, sock, factory, most
        self.server: asyncio.Server | None = None
        self.count = 0  # open connections, as last told
        self.resuming = False
        self.stopped = False

    async def listen(self, start_serving: bool = True) -> None:
        # A duplicate of the socket: closing a server closes its socket, and the port stays ours.
        self.server = await self.loop.create_server(
            self.factory, sock=self.sock.dup(), backlog=BACKLOG, start_serving=start_serving
        )

    async def start_serving(self) -> None:
        assert self.server is not None
        await self.server.start_serving()

    def count_changed(self, count: int) -> None:
        """Called with the number of open connections whenever it changes."""
        self.count = count
        if self.server is not None and count >= self.most:
            log.warning("%d connections: not accepting more until some close (descriptor limit)", count)
            self.server.close()
            self.server = None
        elif self.server is None and not (self.stopped or self.resuming) and count <= self.most * RESUME_SHARE:
            self.resuming = True
            self.loop.create_task(self._resume())

    async def _resume(self) -> None:
        try:
            if not self.stopped:
                await self.listen()
                log.info("accepting connections again")
            if self.server is not None and (self.stopped or self.count >= self.most):  # (meanwhile)
                self.server.close()
                self.server = None
        finally:
            self.resuming = False

    def close(self) -> None:
        self.stopped = True
        if self.server is not None:
            self.server.close()
            self.server = None
