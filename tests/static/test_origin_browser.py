"""Cross-site WebSocket hijacking and cross-origin form posts, in a real browser: headless Chromium
holds the user's `tidings_token` cookie; a page on origin A (another port of the same host, so the
same site: the cookie goes along) must not read or publish, a page on the allowed origin B may."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import ServerProcess, free_ports
from playwright.sync_api import Browser, BrowserContext, Page
from test_chat_page import browser

from tidings.auth import mint

__all__ = ["browser"]  # the fixture, shared with the chat page's tests

SECRET = "browser-origin-secret-0123456789abcdef"

# What a page on either origin tries: read the channel over a WebSocket (the cookie is its only
# credential), publish on it, and send the form post a hostile page would.
ATTEMPT = """async ([server, channel]) => {
  const ws = new WebSocket(server.replace("http", "ws") + "/ws/" + channel + "?last_id=oldest");
  const socket = await new Promise((resolve) => {
    const frames = [];
    ws.onmessage = (e) => {
      frames.push(JSON.parse(e.data));
      if (frames.some((f) => f.type === "published")) resolve({opened: true, frames});
    };
    ws.onopen = () => ws.send(JSON.stringify({publish: {channel, data: "over the socket"}}));
    ws.onclose = (e) => resolve({opened: false, code: e.code, frames});
  });
  ws.close();
  await fetch(server + "/pub/" + channel, {
    method: "POST", mode: "no-cors", credentials: "include", body: new URLSearchParams({message: "form post"}),
  });
  // Reading with the cookie: only a listed origin's page may (the browser enforces the answer's CORS headers).
  socket.read = await fetch(server + "/sub/" + channel + "?last_id=oldest&timeout=0", {credentials: "include"})
    .then((r) => r.json()).then((body) => body.messages.map((m) => m.data), (e) => String(e));
  return socket;
}"""


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


class _BlankPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><title>another site's page</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def page_origins() -> Iterator[tuple[str, str]]:
    """Two origins on this host that serve a blank page: A (not allowed) and B (allowed). Real
    servers, not intercepted requests: Chromium lets only pages it fetched from a loopback
    address reach loopback addresses (Local Network Access)."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", port), _BlankPage) for port in free_ports(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{servers[0].server_port}", f"http://127.0.0.1:{servers[1].server_port}"
    for server in servers:
        server.shutdown()
        server.server_close()


def page_on(context: BrowserContext, origin: str) -> Page:
    page = context.new_page()
    page.goto(origin + "/page.html")
    return page


def test_a_page_on_another_origin_cannot_use_the_users_cookie(
    start_server: Callable[..., ServerProcess],
    context: BrowserContext,
    page_origins: tuple[str, str],
    channel: str,
) -> None:
    origin_a, origin_b = page_origins
    srv = start_server("--auth-secret", SECRET, "--cors-origin", origin_b)
    token = mint(SECRET, [channel], [channel], 300)
    context.add_cookies([{"name": "tidings_token", "value": token, "url": srv.url}])
    reader = {"Authorization": f"Bearer {token}"}

    def buffered() -> int:
        count = httpx.get(f"{srv.url}/channels/{channel}", headers=reader, timeout=10).json()["buffered"]
        assert isinstance(count, int)
        return count

    httpx.post(f"{srv.url}/pub/{channel}", content=b"secret", headers=reader, timeout=10).raise_for_status()

    hostile = page_on(context, origin_a).evaluate(ATTEMPT, [srv.url, channel])
    assert hostile["opened"] is False and hostile["frames"] == [], hostile  # refused: read nothing
    assert hostile["read"] == "TypeError: Failed to fetch", hostile
    assert buffered() == 1  # and published nothing, neither over the socket nor by the form post

    allowed = page_on(context, origin_b).evaluate(ATTEMPT, [srv.url, channel])
    assert allowed["opened"] is True, allowed
    assert allowed["read"][0] == "secret", allowed
    assert next(f["message"]["data"] for f in allowed["frames"] if f["type"] == "message") == "secret"
    # The secret, the socket's publish and the form post (each answered before evaluate returned).
    assert buffered() == 3
