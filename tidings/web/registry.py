"""Every open stream, for heartbeats and the unsent-bytes cap (`streaming.Stream` registers)."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Heartbeat(Protocol):
    @property
    def heartbeat(self) -> bytes: ...


class OpenStream(Protocol):
    """A stream as the registry sees it: something to push its format's heartbeat to."""

    @property
    def fmt(self) -> Heartbeat: ...

    def push(self, data: bytes) -> None: ...


class StreamRegistry:
    def __init__(self, loop: asyncio.AbstractEventLoop, heartbeat: float, max_unsent: int) -> None:
        self.loop = loop
        self.heartbeat_interval = heartbeat
        self.max_unsent = max_unsent
        self.streams: set[OpenStream] = set()
        self._heartbeat: asyncio.TimerHandle | None = None

    def add(self, stream: OpenStream) -> None:
        self.streams.add(stream)

    def remove(self, stream: OpenStream) -> None:
        self.streams.discard(stream)

    def start(self) -> None:
        if self.heartbeat_interval > 0:
            self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _beat(self) -> None:
        for stream in self.streams:
            stream.push(stream.fmt.heartbeat)
        self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)
