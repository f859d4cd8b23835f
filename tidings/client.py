"""A Python client for Tidings: publish, and subscribe as an iterator that keeps its cursor.

    async with AsyncClient("http://127.0.0.1:8080") as client:
        await client.publish("chat", {"nick": "ann", "text": "hi"})
        async for message in client.subscribe("chat", last_id="oldest"):
            print(message.channel, message.data)

    with Client("http://127.0.0.1:8080") as client:          # the same, blocking
        for message in client.subscribe("chat", transport="sse"):
            ...

A subscription resumes from its cursor across dropped connections and server restarts
(back-off 0.5 s doubling to 30 s). When the server says messages after the cursor are gone
(`gap`), `on_gap(channels)` is called (without one, a warning is logged) and the messages that
follow the gap are yielded as usual. A deleted channel ends the subscription with
`ChannelDeleted`; a refused request raises `RequestRefused`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

log = logging.getLogger("tidings.client")

Transport = Literal["longpoll", "sse", "ws"]
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class Message:
    id: str | None  # None for a live-only message (a plain Redis PUBLISH)
    channel: str
    data: Any
    time: int
    cursor: str  # where to resume to continue after this message


@dataclass(frozen=True, slots=True)
class PublishResult:
    id: str
    channel: str
    subscribers: int


class RequestRefused(Exception):
    """The server refused a request: `status`, the error code and its detail (its JSON error body)."""

    def __init__(self, status: int, error: str, detail: object) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class ChannelDeleted(Exception):
    def __init__(self, channel: str) -> None:
        super().__init__(f"channel {channel!r} was deleted")
        self.channel = channel


def _message(raw: dict[str, Any], cursor: str) -> Message:
    return Message(raw.get("id"), raw["channel"], raw.get("data"), raw.get("time", 0), cursor)


def _error(response: httpx.Response) -> RequestRefused:
    try:
        body = response.json()
        return RequestRefused(response.status_code, body.get("error", "error"), body.get("detail"))
    except ValueError:
        return RequestRefused(response.status_code, "error", response.text[:200])


class AsyncClient:
    """`token`: for servers started with --auth-secret (sent as a Bearer header, and as ?token= on
    the WebSocket URL)."""

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def publish(self, channel: str, data: Any) -> PublishResult:
        response = await self.http.post("/pub/" + quote(channel, safe=""), json=data)
        if response.status_code not in (201, 202):
            raise _error(response)
        body = response.json()
        return PublishResult(body["id"], body["channel"], body["subscribers"])

    async def subscribe(
        self,
        *channels: str,
        last_id: str | None = None,
        transport: Transport = "longpoll",
        poll_timeout: float = 30.0,
        on_gap: Callable[[list[str]], None] | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Every message on `channels` after `last_id` (None: from now on), in order."""
        if not channels:
            raise ValueError("subscribe to at least one channel")
        path = ",".join(quote(name, safe="") for name in channels)
        reader = {"longpoll": self._longpoll, "sse": self._sse, "ws": self._ws}[transport]
        state = {"cursor": last_id}
        backoff = RETRY_FIRST
        while True:
            try:
                async for message in reader(path, state, poll_timeout, on_gap):
                    backoff = RETRY_FIRST
                    yield message
                backoff = RETRY_FIRST
            except (TimeoutError, httpx.TransportError, OSError, WebSocketException) as exc:
                log.info("connection lost (%s); resuming in %g s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    @staticmethod
    def _gap(channels: list[str], on_gap: Callable[[list[str]], None] | None) -> None:
        if on_gap is None:
            log.warning("messages were missed on %s (no longer buffered)", ", ".join(channels))
        else:
            on_gap(channels)

    async def _longpoll(
        self, path: str, state: dict[str, str | None], timeout: float, on_gap: Callable[[list[str]], None] | None
    ) -> AsyncIterator[Message]:
        while True:
            query = {"timeout": f"{timeout:g}", **({"last_id": state["cursor"]} if state["cursor"] else {})}
            response = await self.http.get(f"/sub/{path}?{urlencode(query)}", timeout=timeout + self.timeout)
            if response.status_code == 410:
                raise ChannelDeleted(str(response.json().get("channel", path)))
            if response.status_code != 200:
                raise _error(response)
            body = response.json()
            cursor = body["last_id"]
            state["cursor"] = cursor
            if body["gap"]:
                self._gap(body.get("channels") or path.split(","), on_gap)
            for raw in body["messages"]:
                yield _message(raw, cursor)

    async def _sse(
        self, path: str, state: dict[str, str | None], timeout: float, on_gap: Callable[[list[str]], None] | None
    ) -> AsyncIterator[Message]:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": state["cursor"]} if state["cursor"] else {})}
        async with self.http.stream("GET", f"/sse/{path}", headers=headers, timeout=httpx.Timeout(None)) as response:
            if response.status_code != 200:
                await response.aread()
                raise _error(response)
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    if not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        event[key] = value
                    continue
                kind, data, ident = event.get("event"), event.get("data"), event.get("id")
                event = {}
                if data is None:
                    continue
                if kind == "gap":
                    self._gap(json.loads(data)["channels"], on_gap)
                elif kind == "closed":
                    raise ChannelDeleted(json.loads(data)["channel"])
                elif kind is None:
                    if ident:
                        state["cursor"] = ident
                    yield _message(json.loads(data), state["cursor"] or "")
        raise httpx.RemoteProtocolError("the stream ended")  # resume from the cursor

    async def _ws(
        self, path: str, state: dict[str, str | None], timeout: float, on_gap: Callable[[list[str]], None] | None
    ) -> AsyncIterator[Message]:
        url = "ws" + self.url[len("http") :] + f"/ws/{path}"
        query = {
            **({"last_id": state["cursor"]} if state["cursor"] else {}),
            **({"token": self.token} if self.token else {}),
        }
        if query:
            url += "?" + urlencode({key: value for key, value in query.items() if value})
        async with ws_connect(url, open_timeout=self.timeout) as ws:
            async for text in ws:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "message":
                    state["cursor"] = frame["last_id"]
                    yield _message(frame["message"], frame["last_id"])
                elif kind == "gap":
                    self._gap(frame["channels"], on_gap)
                elif kind == "closed":
                    raise ChannelDeleted(frame["channel"])
        raise httpx.RemoteProtocolError("the socket closed")  # resume from the cursor


class Client:
    """The blocking twin of `AsyncClient` (it runs one on a private event loop)."""

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0, token: str | None = None) -> None:
        self._runner = asyncio.Runner()
        self._client = self._runner.run(_make(url, timeout, token))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()

    def publish(self, channel: str, data: Any) -> PublishResult:
        return self._runner.run(self._client.publish(channel, data))

    def subscribe(
        self,
        *channels: str,
        last_id: str | None = None,
        transport: Transport = "longpoll",
        poll_timeout: float = 30.0,
        on_gap: Callable[[list[str]], None] | None = None,
    ) -> Iterator[Message]:
        messages = self._client.subscribe(
            *channels, last_id=last_id, transport=transport, poll_timeout=poll_timeout, on_gap=on_gap
        )
        try:
            while True:
                try:
                    yield self._runner.run(_next(messages))
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(messages.aclose())


async def _next(messages: AsyncGenerator[Message, None]) -> Message:
    return await messages.__anext__()


async def _make(url: str, timeout: float, token: str | None) -> AsyncClient:
    return AsyncClient(url, timeout, token)


def __getattr__(name: str) -> Any:
    # The name this exception had in 0.1.0 (in the README), kept working for a while:
    # `tidings.errors.TidingsError` is the server's base class, not this.
    if name == "TidingsError":
        warnings.warn("tidings.client.TidingsError is now RequestRefused", DeprecationWarning, stacklevel=2)
        return RequestRefused
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "ChannelDeleted",
    "Client",
    "Message",
    "PublishResult",
    "RequestRefused",
]
