"""The other workers' snapshots as a worker reads them (tidings/web/siblings.py), in-process."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from tidings.web.siblings import Siblings


def write(folder: Path, name: str, snapshot: object, age: float = 0.0) -> None:
    path = folder / name
    path.write_text(json.dumps(snapshot))
    written = time.time() - age
    os.utime(path, (written, written))


def snapshot(worker: int, pid: int) -> dict[str, object]:
    return {"worker": worker, "pid": pid, "health": {"status": "ok"}, "metrics": ""}


def test_one_snapshot_per_other_worker_the_newest_and_well_formed(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        siblings = Siblings(str(tmp_path), 1, loop, lambda: {"health": {}, "metrics": ""})
        write(tmp_path, "worker-1-100.json", snapshot(1, 100))  # this worker's predecessor
        write(tmp_path, "worker-2-200.json", snapshot(2, 200), age=2)  # replaced by 201
        write(tmp_path, "worker-2-201.json", snapshot(2, 201))
        write(tmp_path, "worker-3-300.json", snapshot(3, 300), age=60)  # silent: gone
        write(tmp_path, "worker-4-400.json", {"worker": 4, "pid": 400})  # another version's shape
        (tmp_path / "worker-5-500.json").write_text('{"worker": 5,')  # (cannot happen: written whole)
        write(tmp_path, "worker-6-600.json", snapshot(6, 600))
        assert [(s["worker"], s["pid"]) for s in siblings.others()] == [(2, 201), (6, 600)]
    finally:
        loop.close()
