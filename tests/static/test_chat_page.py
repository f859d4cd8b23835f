"""The chat page in a real browser: headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import ServerProcess, free_port, subscribers, wait_until
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

CHROMIUM = next(
    (path for path in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(path)), "/usr/bin/chromium"
)
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (Debian package chromium; .ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_chat(
    browser: Browser,
    srv: ServerProcess,
    channel: str,
    transport: str | None = None,
    viewport: ViewportSize | None = None,
) -> Page:
    page = browser.new_context(viewport=viewport).new_page()
    query = f"?channel={channel}" + (f"&transport={transport}" if transport else "")
    page.goto(srv.url + "/" + query)
    wait_connected(page)
    return page


def wait_connected(page: Page) -> None:
    page.wait_for_function("document.getElementById('status').dataset.state === 'connected'", timeout=WAIT_MS)


def say(page: Page, nick: str, text: str) -> None:
    page.fill("#nick", nick)
    page.fill("#message", text)
    page.press("#message", "Enter")


def wait_for_text(page: Page, text: str, where: str = "#conversation .text") -> None:
    """Until an element `where` (a message's text, by default) reads `text`."""
    page.wait_for_function(
        "([where, text]) => [...document.querySelectorAll(where)].some((e) => e.textContent === text)",
        arg=[where, text],
        timeout=WAIT_MS,
    )


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_two_pages_chat(browser: Browser, server: ServerProcess, channel: str, transport: str) -> None:
    ann = open_chat(browser, server, channel, transport)
    bob = open_chat(browser, server, channel, transport)
    assert ann.evaluate("window.tidingsSubscription.transport") == transport
    say(ann, "ann", f"hello from ann over {transport}")
    wait_for_text(bob, f"hello from ann over {transport}")
    say(bob, "bob", "hi ann")
    wait_for_text(ann, "hi ann")
    wait_for_text(bob, "hi ann")  # bob's own message comes back to him on his subscription, maybe after ann's
    assert bob.inner_text("#conversation .msg:last-child .nick") == "bob"
    ann.context.close()
    bob.context.close()


def test_auto_picks_websocket(browser: Browser, server: ServerProcess, channel: str) -> None:
    page = open_chat(browser, server, channel)
    assert page.evaluate("window.tidingsSubscription.transport") == "ws"
    page.context.close()


def test_markup_in_a_message_is_text_and_history_survives_a_reload(
    browser: Browser, server: ServerProcess, channel: str
) -> None:
    page = open_chat(browser, server, channel)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    attack = "<img src=x onerror=alert(1)>"
    say(page, "mallory", attack)
    wait_for_text(page, attack)
    assert page.locator("#conversation img").count() == 0 and dialogs == []
    page.reload()
    wait_connected(page)
    wait_for_text(page, attack)  # history: the page starts from the oldest buffered message
    assert page.locator("#conversation .msg").count() == 1
    page.context.close()


def test_the_page_reconnects_after_a_server_restart(
    browser: Browser, start_server: Callable[..., ServerProcess], channel: str
) -> None:
    port = str(free_port())
    srv = start_server("--port", port)
    page = open_chat(browser, srv, channel)
    srv.kill()
    page.wait_for_function("document.getElementById('status').dataset.state === 'reconnecting'", timeout=WAIT_MS)
    srv = start_server("--port", port)
    page.wait_for_function(
        "document.getElementById('status').dataset.state === 'connected'", timeout=40_000
    )  # the back-off may be at a few seconds by now
    httpx.post(f"{srv.url}/pub/{channel}", json={"nick": "server", "message": "back again"}, timeout=10)
    wait_for_text(page, "back again")
    page.context.close()


def test_the_page_passes_its_token(browser: Browser, start_server: Callable[..., ServerProcess], channel: str) -> None:
    from tidings.auth import mint

    secret = "page-test-secret-0123456789abcdef"
    srv = start_server("--auth-secret", secret)
    token = mint(secret, [channel], [channel], 600)
    page = browser.new_context().new_page()
    page.goto(f"{srv.url}/?channel={channel}&token={token}")
    wait_connected(page)
    say(page, "ann", "with a token")
    wait_for_text(page, "with a token")
    page.context.close()


LONG_WORD = "Llanfairpwllgwyngyll" * 10
LONG_URL = "https://example.com/" + "/".join(f"section{i}" for i in range(25)) + "?q=" + "x" * 100
# Where things are, in CSS pixels, as the page lays them out.
LAYOUT = """() => {
  const box = (selector) => document.querySelector(selector).getBoundingClientRect().toJSON();
  const pane = document.getElementById('conversation');
  return {
    viewport: {width: window.innerWidth, height: window.innerHeight},
    pageScrollWidth: document.documentElement.scrollWidth,
    paneScrollWidth: pane.scrollWidth,
    paneClientWidth: pane.clientWidth,
    column: box('#conversation'),
    controls: {nick: box('#nick'), message: box('#message'), send: box('#send')},
  };
}"""


@pytest.mark.parametrize(("width", "height"), [(320, 568), (390, 844), (1280, 800)])
def test_no_horizontal_scroll_on_phones_and_desktops(
    browser: Browser, server: ServerProcess, channel: str, width: int, height: int
) -> None:
    channel += "x" * 100  # a long channel name in the header, too
    viewport: ViewportSize = {"width": width, "height": height}
    ann = open_chat(browser, server, channel, viewport=viewport)
    bob = open_chat(browser, server, channel, viewport=viewport)
    for text in (LONG_WORD, LONG_URL):
        say(ann, "ann", text)
        wait_for_text(bob, text)
    # Other publishers are not held to the page's maxlength: a long unbroken nickname.
    httpx.post(f"{server.url}/pub/{channel}", json={"nick": "n" * 120, "message": "hi"}, timeout=10).raise_for_status()
    say(bob, "bob", "hi ann")
    wait_for_text(ann, "hi ann")
    for page in (ann, bob):
        layout = page.evaluate(LAYOUT)
        assert layout["pageScrollWidth"] <= layout["viewport"]["width"], layout
        assert layout["paneScrollWidth"] <= layout["paneClientWidth"], layout
        screen, column = layout["viewport"], layout["column"]
        for name, control in layout["controls"].items():
            # Inside the screen, and inside the page's column (not past its margin).
            assert control["left"] >= 0 and control["right"] <= screen["width"], (name, layout)
            assert control["top"] >= 0 and control["bottom"] <= screen["height"], (name, layout)
            assert control["left"] >= column["left"] and control["right"] <= column["right"], (name, layout)
            if width < 600:
                assert control["height"] >= 44, (name, layout)  # a finger-sized tap target
        page.context.close()


def test_a_repeated_enter_sends_once(browser: Browser, server: ServerProcess, channel: str) -> None:
    page = open_chat(browser, server, channel)
    page.fill("#nick", "ann")
    page.fill("#message", "only once")
    for _ in range(3):  # faster than the publish's answer, like a double tap on Send
        page.keyboard.press("Enter")
    httpx.post(f"{server.url}/pub/{channel}", json={"nick": "server", "message": "after"}, timeout=10)
    wait_for_text(page, "after")
    assert page.locator("#conversation .text").all_inner_texts() == ["only once", "after"]
    page.context.close()


def test_a_message_that_was_not_sent_comes_back(
    browser: Browser, start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()
    page = open_chat(browser, srv, channel)
    srv.kill()
    say(page, "ann", "try again later")
    page.wait_for_function(
        "[...document.querySelectorAll('#conversation .notice')].some((e) => e.textContent.startsWith('Not sent'))",
        timeout=WAIT_MS,
    )
    assert page.input_value("#message") == "try again later"


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_deleting_the_channel_tells_tidings_js_which_one(
    browser: Browser, server: ServerProcess, channel: str, transport: str
) -> None:
    page = open_chat(browser, server, channel, transport)  # the page's own subscription, and tidings.js
    page.evaluate(
        """([channel, transport]) => {
            window.closedWith = null;
            Tidings.subscribe("", channel, () => {}, {transport, onClose: (detail) => { window.closedWith = detail; }});
        }""",
        [channel, transport],
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_until(lambda: subscribers(http, channel) == 2, 10, "both subscriptions to be held")
        assert http.delete(f"/pub/{channel}").json()["subscribers"] == 2
    page.wait_for_function("window.closedWith !== null", timeout=WAIT_MS)
    detail = page.evaluate("window.closedWith")
    assert isinstance(detail, dict) and detail["channel"] == channel, detail  # alike on every transport
    page.context.close()


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_a_refused_page_says_so_and_does_not_retry(
    browser: Browser, start_server: Callable[..., ServerProcess], channel: str, transport: str
) -> None:
    """With --auth-url and no session, the application refuses (401): the page says it is not
    allowed instead of reconnecting for ever, on every transport (for a stream or a socket,
    whose refusal a browser does not show, tidings.js asks with one long-poll)."""
    from auth_app import Backend

    backend = Backend()
    try:
        srv = start_server("--auth-url", backend.url)
        page = browser.new_context().new_page()
        page.goto(f"{srv.url}/?channel={channel}&transport={transport}")
        page.wait_for_function("document.getElementById('status').dataset.state === 'refused'", timeout=WAIT_MS)
        assert page.inner_text("#status") == "not allowed"
        notices = "[...document.querySelectorAll('#conversation .notice')].map((e) => e.textContent).join()"
        page.wait_for_function(f"({notices}).includes('unauthorized')", timeout=WAIT_MS)
        asked = len(backend.calls)
        assert asked <= 2  # (the transport's own question, and the long-poll's)
        page.wait_for_timeout(1500)  # (longer than the first back-off: a retry would have asked again)
        assert len(backend.calls) == asked
        page.context.close()
    finally:
        backend.close()


def wait_for_people(page: Page, names: str) -> None:
    page.wait_for_function(
        "(names) => document.getElementById('people').textContent === names", arg=names, timeout=WAIT_MS
    )


def wait_for_notice(page: Page, text: str) -> None:
    wait_for_text(page, text, "#conversation .notice")


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_the_page_shows_who_is_here_and_who_left(
    browser: Browser, start_server: Callable[..., ServerProcess], channel: str, transport: str
) -> None:
    srv = start_server("--presence-grace", "0.5")
    ann = open_chat(browser, srv, channel, transport)
    bob = open_chat(browser, srv, channel, transport)
    wait_for_people(bob, "nobody named yet")
    say(ann, "ann", "hello")
    wait_for_notice(bob, "ann joined")
    say(bob, "bob", "hi ann")
    wait_for_people(ann, "ann, bob")
    wait_for_people(bob, "ann, bob")
    ann.context.close()
    wait_for_notice(bob, "ann left")
    wait_for_people(bob, "bob")
    bob.context.close()


def test_the_nickname_is_the_users_own_where_the_server_knows_them(
    browser: Browser, start_server: Callable[..., ServerProcess], channel: str
) -> None:
    secret = "test-secret-of-some-length-0123456789"
    srv = start_server("--auth-secret", secret)
    import jwt

    token = jwt.encode(
        {"exp": 2_000_000_000, "sub": "Ann Example", "tidings": {"subscribe": [channel], "publish": [channel]}}, secret
    )
    page = browser.new_context().new_page()
    page.goto(f"{srv.url}/?channel={channel}&token={token}")
    wait_connected(page)
    wait_for_people(page, "Ann Example")
    assert page.input_value("#nick") == "Ann Example" and page.get_attribute("#nick", "readonly") is not None
    page.context.close()
