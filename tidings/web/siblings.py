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
        """The other workers' latest snapshots, by worker number: one per number (a worker that
        replaced a dead or retired one may find its predecessor's file for a few seconds)."""
        newest: dict[int, tuple[float, dict[str, Any]]] = {}
        now = time.time()
        for path in self.folder.glob("worker-*.json"):
            try:
                written = path.stat().st_mtime
                if path == self.path or now - written > STALE:
                    continue
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # (gone meanwhile)
            if not _well_formed(snapshot) or snapshot["worker"] == self.worker:
                continue
            if snapshot["worker"] not in newest or written > newest[snapshot["worker"]][0]:
                newest[snapshot["worker"]] = (written, snapshot)
        return [snapshot for _, (_, snapshot) in sorted(newest.items())]


def _well_formed(snapshot: Any) -> bool:
    """A snapshot as this version writes them (another version's, during a SIGHUP, may differ)."""
    return (
        isinstance(snapshot, dict)
        and isinstance(snapshot.get("worker"), int)
        and isinstance(snapshot.get("health"), dict)
        and isinstance(snapshot.get("metrics"), str)
    )
