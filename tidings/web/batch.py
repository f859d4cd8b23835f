"""Writes collected during one loop turn and done together at its end.

A publish marks its subscribers due and returns at once (so its own answer is not held up
by the fan-out); one callback per loop turn then writes to every due connection, merging
whatever each stream gathered in the meantime into a single write."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


class TurnBatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: list[Flushable] = []

    def schedule(self, item: Flushable) -> None:
        """Call `item.flush()` at the end of this loop turn (callers schedule an item once)."""
        if not self._due:
            self.loop.call_soon(self._run)
        self._due.append(item)

    def _run(self) -> None:
        due, self._due = self._due, []
        for item in due:
            item.flush()
