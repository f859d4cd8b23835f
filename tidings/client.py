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

Presence: `await client.presence("chat")` lists who is on a channel; `subscribe(...,
on_presence=callback)` calls it with each `PresenceEvent` ("join"/"leave": live notices, see
the README), and `user=` names the client on a server without authentication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
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


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    event: str  # "join" (a user's first client arrived) or "leave" (their last one has gone)
    channel: str
    user: str
    info: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PresentUser:
    user: str
    info: dict[str, Any] | None
    clients: int
    transports: list[str]
    since: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is on a channel: users (longest present first, at most `limit` of `total_users`),
    anonymous clients, and who asked (`you`: {"user", "info", "verified"}, or None)."""

    channel: str
    users: list[PresentUser]
    anonymous: int
    total_users: int
    you: dict[str, Any] | None


@dataclass(slots=True)
class _Hooks:
    """What a subscription's reader needs besides its cursor."""

    on_gap: Callable[[list[str]], None] | None
    on_presence: Callable[[PresenceEvent], None] | None
    query: dict[str, str]  # parameters on every subscribe URL (user, presence)

    def presence(self, event: str, raw: dict[str, Any]) -> None:
        if self.on_presence is not None and event in ("join", "leave"):
            self.on_presence(PresenceEvent(event, raw["channel"], raw["user"], raw.get("info")))


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

    async def presence(self, channel: str, limit: int | None = None, user: str | None = None) -> Presence:
        """Who is on `channel` now (over every process of the server); `user`: who asks, on a
        server without authentication (it is then `you`)."""
        query = {**({"limit": str(limit)} if limit is not None else {}), **({"user": user} if user else {})}
        suffix = f"?{urlencode(query)}" if query else ""
        response = await self.http.get(f"/channels/{quote(channel, safe='')}/presence{suffix}")
        if response.status_code != 200:
            raise _error(response)
        body = response.json()
        users = [PresentUser(u["user"], u["info"], u["clients"], u["transports"], u["since"]) for u in body["users"]]
        return Presence(body["channel"], users, body["anonymous"], body["total_users"], body["you"])

    async def subscribe(
        self,
        *channels: str,
        last_id: str | None = None,
        transport: Transport = "longpoll",
        poll_timeout: float = 30.0,
        on_gap: Callable[[list[str]], None] | None = None,
        on_presence: Callable[[PresenceEvent], None] | None = None,
        user: str | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Every message on `channels` after `last_id` (None: from now on), in order; with
        `on_presence`, the channels' join and leave events too."""
        if not channels:
            raise ValueError("subscribe to at least one channel")
        path = ",".join(quote(name, safe="") for name in channels)
        reader = {"longpoll": self._longpoll, "sse": self._sse, "ws": self._ws}[transport]
        state = {"cursor": last_id}
        query = {**({"user": user} if user else {}), **({"presence": "1"} if on_presence else {})}
        if on_presence and transport == "longpoll":  # (what comes between two polls comes with the next)
            query["client"] = secrets.token_hex(8)
        hooks = _Hooks(on_gap, on_presence, query)
        backoff = RETRY_FIRST
        while True:
            try:
                async for message in reader(path, state, poll_timeout, hooks):
                    backoff = RETRY_FIRST
                    yield message
                backoff = RETRY_FIRST
            except (TimeoutError, httpx.TransportError, OSError, WebSocketException) as exc:
                log.info("connection lost (%s); resuming in %g s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX)

    @staticmethod
    def _gap(channels: list[str], hooks: _Hooks) -> None:
        if hooks.on_gap is None:
            log.warning("messages were missed on %s (no longer buffered)", ", ".join(channels))
        else:
            hooks.on_gap(channels)

    async def _longpoll(
        self, path: str, state: dict[str, str | None], timeout: float, hooks: _Hooks
    ) -> AsyncIterator[Message]:
        while True:
            query = {
                "timeout": f"{timeout:g}",
                **({"last_id": state["cursor"]} if state["cursor"] else {}),
                **hooks.query,
            }
            response = await self.http.get(f"/sub/{path}?{urlencode(query)}", timeout=timeout + self.timeout)
            if response.status_code == 410:
                raise ChannelDeleted(str(response.json().get("channel", path)))
            if response.status_code != 200:
                raise _error(response)
            body = response.json()
            cursor = body["last_id"]
            state["cursor"] = cursor
            if body["gap"]:
                self._gap(body.get("channels") or path.split(","), hooks)
            for event in body.get("events", ()):
                hooks.presence(event["event"], event)
            for raw in body["messages"]:
                yield _message(raw, cursor)

    async def _sse(
        self, path: str, state: dict[str, str | None], timeout: float, hooks: _Hooks
    ) -> AsyncIterator[Message]:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": state["cursor"]} if state["cursor"] else {})}
        url = f"/sse/{path}" + (f"?{urlencode(hooks.query)}" if hooks.query else "")
        async with self.http.stream("GET", url, headers=headers, timeout=httpx.Timeout(None)) as response:
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
                    self._gap(json.loads(data)["channels"], hooks)
                elif kind == "closed":
                    raise ChannelDeleted(json.loads(data)["channel"])
                elif kind in ("join", "leave"):
                    hooks.presence(kind, json.loads(data))
                elif kind is None:
                    if ident:
                        state["cursor"] = ident
                    yield _message(json.loads(data), state["cursor"] or "")
        raise httpx.RemoteProtocolError("the stream ended")  # resume from the cursor

    async def _ws(
        self, path: str, state: dict[str, str | None], timeout: float, hooks: _Hooks
    ) -> AsyncIterator[Message]:
        url = "ws" + self.url[len("http") :] + f"/ws/{path}"
        query = {
            **({"last_id": state["cursor"]} if state["cursor"] else {}),
            **({"token": self.token} if self.token else {}),
            **hooks.query,
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
                    self._gap(frame["channels"], hooks)
                elif kind == "closed":
                    raise ChannelDeleted(frame["channel"])
                elif kind in ("join", "leave"):
                    hooks.presence(kind, frame)
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

    def presence(self, channel: str, limit: int | None = None, user: str | None = None) -> Presence:
        return self._runner.run(self._client.presence(channel, limit, user))

    def subscribe(
        self,
        *channels: str,
        last_id: str | None = None,
        transport: Transport = "longpoll",
        poll_timeout: float = 30.0,
        on_gap: Callable[[list[str]], None] | None = None,
        on_presence: Callable[[PresenceEvent], None] | None = None,
        user: str | None = None,
    ) -> Iterator[Message]:
        messages = self._client.subscribe(
            *channels,
            last_id=last_id,
            transport=transport,
            poll_timeout=poll_timeout,
            on_gap=on_gap,
            on_presence=on_presence,
            user=user,
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
    "Presence",
    "PresenceEvent",
    "PresentUser",
    "PublishResult",
    "RequestRefused",
]
