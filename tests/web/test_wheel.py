"""The long-poll timeout wheel on a real event loop."""

from __future__ import annotations

import asyncio

from tidings.web.wheel import TimeoutWheel


class Item:
    def __init__(self, name: str, log: list[tuple[str, float]], loop: asyncio.AbstractEventLoop) -> None:
        self.name, self.log, self.loop = name, log, loop

    def expire(self) -> None:
        self.log.append((self.name, self.loop.time()))


def test_items_expire_in_order_never_early_and_removed_ones_never() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimeoutWheel(loop, tick=0.05)
        log: list[tuple[str, float]] = []
        start = loop.time()
        delays = {"a": 0.0, "b": 0.12, "c": 0.3}
        items = {name: Item(name, log, loop) for name in [*delays, "removed"]}
        keys = {name: wheel.add(items[name], delay) for name, delay in delays.items()}
        wheel.remove(items["removed"], wheel.add(items["removed"], 0.1))
        async with asyncio.timeout(5):
            while len(log) < 3:
                await asyncio.sleep(0.01)
        assert [name for name, _ in log] == ["a", "b", "c"]
        for name, fired in log:
            late = fired - start - delays[name]
            assert -0.001 <= late < 1.0, f"{name} fired {late:.3f} s off"  # never early; late by about a tick
        assert set(keys) == set(delays)
        async with asyncio.timeout(5):
            while wheel._timer is not None:  # the wheel stops ticking once empty
                await asyncio.sleep(0.01)
        assert [name for name, _ in log] == ["a", "b", "c"]

    asyncio.run(scenario())
