"""What a process started by `tidings serve --workers N` (tidings/workers.py) takes from its
parent, through descriptors it inherits and names in the environment: the listening socket it
shares with the other workers, a pipe to say it is ready, and a lifeline — the read end of a
pipe only the parent writes to, which reads EOF when the parent is gone (so no worker outlives a
parent that was killed)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

LISTEN_FD = "TIDINGS_LISTEN_FD"
READY_FD = "TIDINGS_READY_FD"
LIFELINE_FD = "TIDINGS_LIFELINE_FD"
WORKER = "TIDINGS_WORKER"  # this worker's number and the parent's private folder: "N:FOLDER"


def _take(name: str) -> int | None:
    value = os.environ.pop(name, None)  # (popped: a process this one starts does not inherit it)
    return int(value) if value else None


def inherited_socket() -> socket.socket | None:
    """The listening socket the parent bound, if this process is a worker."""
    fd = _take(LISTEN_FD)
    return socket.socket(fileno=fd) if fd is not None else None


def worker_place() -> tuple[int, str] | None:
    """This worker's number (1 to N) and the folder the workers share, if this is a worker."""
    value = os.environ.pop(WORKER, None)
    if not value:
        return None
    number, _, folder = value.partition(":")
    return int(number), folder


def tell_ready() -> None:
    """Tell the parent this process serves (nothing when it has no parent waiting)."""
    fd = _take(READY_FD)
    if fd is not None:
        os.write(fd, b"ready\n")
        os.close(fd)


def watch_lifeline(loop: asyncio.AbstractEventLoop, parent_gone: Callable[[], Any]) -> None:
    """Call `parent_gone` when the parent exits, however it exits."""
    fd = _take(LIFELINE_FD)
    if fd is None:
        return

    def readable() -> None:
        if not os.read(fd, 64):  # EOF: the last writer, the parent, is gone
            loop.remove_reader(fd)
            os.close(fd)
            parent_gone()

    loop.add_reader(fd, readable)
