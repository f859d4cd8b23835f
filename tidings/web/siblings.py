"""The other workers of `tidings serve --workers N`, for /healthz and /metrics: whichever worker
a request lands on answers for the whole server.

Every worker writes a snapshot of its health and metrics to the supervisor's private folder
every `SNAPSHOT_INTERVAL` seconds (one file per process, replaced atomically), and the worker
that answers adds the others' latest snapshots to its own, live, figures. A snapshot older than
`STALE` is a worker that died or hangs, and is left out. Files, not requests to the other
workers: they share one port, so no worker can address another, and a scrape never waits on
a busy or dead sibling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("tidings")

SNAPSHOT_INTERVAL = 1.0  # seconds between a worker's snapshots
STALE = 5.0  # seconds after which a snapshot no longer counts


class Siblings:
    def __init__(
        self, folder: str, worker: int, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], dict[str, Any]]
    ) -> None:
        self.folder = Path(folder)
        self.worker = worker
        self.loop = loop
        self.snapshot = snapshot  # this worker's figures: {"health": {...}, "metrics": exposition text}
        self.path = self.folder / f"worker-{worker}-{os.getpid()}.json"
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._write()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _write(self) -> None:
        self._timer = self.loop.call_later(SNAPSHOT_INTERVAL, self._write)
        partial = self.path.with_suffix(".partial")
        try:
            partial.write_text(json.dumps({"worker": self.worker, "pid": os.getpid(), **self.snapshot()}))
            partial.replace(self.path)  # (readers see the old snapshot or the new one, never half)
        except OSError as exc:
            log.warning("cannot write this worker's snapshot to %s: %s", self.folder, exc)

    def others(self) -> list[dict[str, Any]]:
        """The other workers' latest snapshots, by worker number."""
        found: list[dict[str, Any]] = []
        now = time.time()
        for path in self.folder.glob("worker-*.json"):
            if path == self.path:
                continue
            try:
                if now - path.stat().st_mtime > STALE:
                    continue
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # (gone meanwhile, or a worker replaced at this moment)
        return sorted(found, key=lambda snapshot: (snapshot.get("worker", 0), snapshot.get("pid", 0)))
