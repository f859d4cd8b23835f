"""A real small web application for --auth-url tests (aiohttp on a local port, in a thread of
the test process): it checks a session cookie as a site would."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web
from conftest import free_ports

BASIC = "Basic YW5uOnNlY3JldA=="


class Backend:
    """The application: sessions by cookie. `ann` may do anything and is remembered for a
    minute; `bob` may subscribe to channels starting with `bob` only; `eve` is refused (403); no
    session is 401. `mode` makes it fail: "down" answers 500, "slow" answers after 5 s."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.mode = "ok"
        self.port = free_ports(1)[0]
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "the backend did not start"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/auth", self.auth)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        started.set()
        self.loop.run_forever()

    async def auth(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"body": body, "headers": dict(request.headers)})
        if self.mode == "down":
            return web.Response(status=500, text="oops")
        if self.mode == "slow":
            await asyncio.sleep(5)
        session = request.cookies.get("session")
        if request.headers.get("Authorization") == BASIC:  # (what a browser may attach by itself)
            return web.json_response({"user": "ann"})
        if session == "slow-ann":  # (questions asked meanwhile share this call)
            await asyncio.sleep(0.3)
            return web.json_response({"user": "ann"})
        if session == "tim":
            return web.json_response({"user": "tim", "ttl": 0.5})
        if session == "nan":
            return web.Response(text='{"ttl": NaN}', content_type="application/json")
        if session == "lp":  # long-polls only
            return web.Response(status=200 if body["transport"] == "longpoll" else 403)
        if session == "poster":  # may publish, not delete
            return web.Response(status=200 if body["action"] == "publish" else 403)
        if session == "nameless":  # a user presence cannot list: allowed all the same, anonymous
            return web.json_response({"user": ""})
        if session == "ann":
            return web.json_response({"user": "ann", "info": {"name": "Ann"}, "ttl": 60})
        if session == "bob" and body["action"] == "subscribe":
            return web.json_response({"user": "bob", "channels": [c for c in body["channels"] if c.startswith("bob")]})
        if session in ("bob", "eve"):
            return web.Response(status=403)
        return web.Response(status=401)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
