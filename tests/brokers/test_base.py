"""What every broker shares (`tidings.brokers.base`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tidings.brokers.base import cancel_all


async def _swallows_one_cancel(cleaned: list[str]) -> None:
    # As redis-py's send through Python 3.11's asyncio.wait_for can (CPython gh-86296).
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    try:
        await asyncio.Event().wait()
    finally:
        cleaned.append("stopped")


async def _cleans_up_slowly(cleaned: list[str]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)  # (closing a connection, say: longer than one loop turn)
        cleaned.append("cleaned up")
        raise


async def _fails() -> None:
    raise RuntimeError("the subscription broke")


def test_cancel_all_stops_a_task_that_lost_a_cancel_and_lets_clean_up_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[str]:
        cleaned: list[str] = []
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_swallows_one_cancel(cleaned)), loop.create_task(_cleans_up_slowly(cleaned))]
        failed = loop.create_task(_fails())
        await asyncio.sleep(0)  # (every task at its first await)
        async with asyncio.timeout(5):
            await cancel_all([*tasks, failed])
        assert all(task.cancelled() for task in tasks)
        return cleaned

    with caplog.at_level(logging.ERROR, "tidings.brokers"):
        assert sorted(asyncio.run(scenario())) == ["cleaned up", "stopped"]
    assert "the subscription broke" in caplog.text  # a task that had failed says so


def test_cancel_all_gives_up_on_a_task_that_never_stops(caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn(release: asyncio.Event) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def scenario() -> None:
        release = asyncio.Event()
        task = asyncio.get_running_loop().create_task(stubborn(release))
        await asyncio.sleep(0)
        try:
            await cancel_all([task], waits=(0.01, 0.01))
            assert not task.done()  # (left behind, as logged)
        finally:
            release.set()  # (or the end of asyncio.run would wait for it forever)
        await task

    with caplog.at_level(logging.WARNING, "tidings.brokers"):
        asyncio.run(scenario())
    assert "did not stop when cancelled" in caplog.text
