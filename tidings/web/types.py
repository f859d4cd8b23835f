"""The interface between the application and the modules it routes to: what a transport or an
endpoint may use of the server, so that none of them imports the application (`web/app.py`,
which implements it and is imported only by the server that composes it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from tidings.config import Settings
from tidings.hub import Hub
from tidings.relay import Relay
from tidings.web.http import Request, TurnBatcher
from tidings.web.metrics import Stats
from tidings.web.registry import StreamRegistry
from tidings.web.siblings import Siblings
from tidings.web.wheel import TimeoutWheel


class Services(Protocol):
    settings: Settings
    loop: asyncio.AbstractEventLoop
    relay: Relay  # publish, delete, info, and reads through the bus
    hub: Hub  # joining and waiting (subscribers), and what a channel holds here
    stats: Stats
    batcher: TurnBatcher  # writes at the end of the loop turn
    timeouts: TimeoutWheel  # held long-polls, and every connection's deadline
    streams: StreamRegistry  # heartbeats and the unsent-bytes cap
    siblings: Siblings | None  # the other workers of --workers N (for /healthz, /metrics)

    def authorize(
        self,
        request: Request,
        action: str,
        channels: Sequence[str],
        transport: str,
        proceed: Callable[[], None],
        fail: Callable[[Exception], None],
    ) -> None:
        """Call `proceed` once `action` on `channels` is allowed (by the request's token, or by
        the application's --auth-url): at once when that is known here, and then what it raises
        is the caller's; else later. A refusal raises HttpError (401, 403) at once, or goes to
        `fail` later, as does an --auth-url that cannot answer (503)."""

    def keep_credentials(self, request: Request) -> None:
        """Drops the request's headers but those `authorize` reads: what a WebSocket keeps of
        its handshake to authorize the commands it sends (a browser's headers are ~1 KB)."""

    def check_room(self, channels: tuple[str, ...]) -> None:
        """Raises HttpError (403) when a channel has as many subscribers here as allowed."""
