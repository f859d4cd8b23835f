"""Authorisation by the application's own backend (`--auth-url`): before a subscribe, publish or
delete that no token grants, Tidings POSTs to the app what is asked (``{"action", "channels",
"transport"}``) with the client's credentials (by default its `Cookie` and `Authorization`
headers; the action is `subscribe`, `publish` or `delete`), and the app answers as it would any
request of that user:

- 2xx: allowed; an optional JSON body may carry ``user`` (a string), ``info`` (an object), ``ttl``
  (seconds to remember the decision) and ``channels`` (those granted, if not all that were asked:
  the others are refused with 403);
- 401 or 403: refused, with the same status to the client;
- anything else, a body that is not what is described, no answer within `--auth-url-timeout`:
  503 `auth_unavailable`. Closed: a backend that cannot say yes is a no (there is no setting to
  fail open, because a push server that lets everyone in while the app is down leaks exactly
  what the app guards).

Decisions, refusals included, are remembered per (credentials, action, transport, channel) for
their `ttl` (default `--auth-url-ttl`), so a long-poll loop asks once, not at every poll; identical
questions asked at once share one call. One pool of keep-alive connections for every call
(`tidings/http_client.py`: httpx cost ~1,350 us of CPU per call, measured).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tidings.encoding import encode_json
from tidings.http_client import JsonPoster, UpstreamError
from tidings.latency import LatencyHistogram
from tidings.presence import Identity, user_name
from tidings.web.http import HttpError, Request

log = logging.getLogger("tidings.auth")

CACHE_LIMIT = 100_000  # decisions remembered (~200 B each); when full, the expired go, else all
MAX_TTL = 3600.0  # seconds: a longer `ttl` from the app is cut to this

Credentials = tuple[str, ...]  # the forwarded headers' values, in the order of the setting
# Decisions are remembered by a digest of the credentials (a client may send 16 KiB of cookie:
# keeping it would let anonymous clients fill memory), and by action, transport and channel (the
# application is told the transport, so its answer may depend on it).
DecisionKey = tuple[bytes, str, str, str]  # (credentials' digest, action, transport, channel)
QuestionKey = tuple[bytes, str, str, tuple[str, ...]]  # (credentials' digest, action, transport, channels)


def _digest(credentials: Credentials) -> bytes:
    return hashlib.blake2b("\x00".join(credentials).encode("latin-1"), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the app said about one channel for one action and one set of credentials."""

    allowed: bool
    expires: float  # time.monotonic()
    status: int = 200  # a refusal's: 401 or 403
    detail: str = ""
    who: Identity | None = None  # the user the app named, for presence

    def refusal(self) -> HttpError:
        code = "unauthorized" if self.status == 401 else "forbidden"
        return HttpError(self.status, code, self.detail)


class BackendAuth:
    def __init__(self, url: str, headers: str, ttl: float, timeout: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--auth-url: an http:// or https:// URL, not {url!r}")
        self.url = url
        self.client = JsonPoster(url, timeout)
        self.headers = tuple(name.strip().lower() for name in headers.split(",") if name.strip())
        self.header_bytes = tuple(name.encode() for name in self.headers)
        self.ttl = ttl
        self.timeout = timeout
        self.cache: dict[DecisionKey, Decision] = {}
        self.asking: dict[QuestionKey, asyncio.Future[dict[str, Decision]]] = {}
        self.calls = 0
        self.seconds = LatencyHistogram(
            "tidings_auth_url_seconds",
            "Time the application's backend took to answer an --auth-url check",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )

    def close(self) -> None:
        for pending in self.asking.values():
            pending.cancel()
        self.client.close()

    def credentials(self, request: Request) -> Credentials:
        return tuple(request.header(name) for name in self.header_bytes)

    def check(
        self,
        request: Request,
        action: str,
        channels: Sequence[str],
        transport: str,
        proceed: Callable[[], None],
        refuse: Callable[[Exception], None],
    ) -> bool:
        """Whether the app allows `action` on every one of `channels`, if known now: True, or an
        HttpError (401, 403) raised. Else False, and once the app has answered, `proceed()` or
        `refuse(error)` (401, 403; 503 when it could not answer)."""
        credentials = self.credentials(request)
        digest = _digest(credentials)
        now = time.monotonic()
        cache = self.cache
        unknown = []
        for name in channels:
            decision = cache.get((digest, action, transport, name))
            if decision is None or decision.expires <= now:
                unknown.append(name)
            elif not decision.allowed:
                raise decision.refusal()
            elif request.identity is None:
                request.identity = decision.who
        if not unknown:
            return True
        key = (digest, action, transport, tuple(unknown))
        pending = self.asking.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self.asking[key] = loop.create_future()
            task = loop.create_task(self._ask(key, credentials, pending))
            task.add_done_callback(lambda _: self.asking.pop(key, None))

        def decided(future: asyncio.Future[dict[str, Decision]]) -> None:
            if future.cancelled():
                refuse(HttpError(503, "auth_unavailable", "the server is stopping"))
                return
            error = future.exception()
            if error is not None:
                refuse(error if isinstance(error, Exception) else HttpError(503, "auth_unavailable", "no answer"))
                return
            for decision in future.result().values():
                if not decision.allowed:
                    refuse(decision.refusal())
                    return
                if request.identity is None:
                    request.identity = decision.who
            proceed()

        pending.add_done_callback(decided)
        return False

    async def _ask(
        self, key: QuestionKey, credentials: Credentials, pending: asyncio.Future[dict[str, Decision]]
    ) -> None:
        digest, action, transport, channels = key
        try:
            decisions = await self._call(credentials, action, channels, transport)
        except HttpError as exc:
            if not pending.done():
                pending.set_exception(exc)
            return
        except Exception:  # (whatever it is, the client hears 503 rather than waiting)
            log.exception("an --auth-url check failed")
            if not pending.done():
                pending.set_exception(HttpError(503, "auth_unavailable", "the authorisation check failed"))
            return
        if len(self.cache) + len(decisions) > CACHE_LIMIT:
            self._make_room()
        for name, decision in decisions.items():
            self.cache[(digest, action, transport, name)] = decision
        if not pending.done():
            pending.set_result(decisions)

    def _make_room(self) -> None:
        now = time.monotonic()
        for key in [key for key, decision in self.cache.items() if decision.expires <= now]:
            del self.cache[key]
        if len(self.cache) > CACHE_LIMIT * 9 // 10:
            self.cache.clear()

    async def _call(
        self, credentials: Credentials, action: str, channels: tuple[str, ...], transport: str
    ) -> dict[str, Decision]:
        headers = {name: value for name, value in zip(self.headers, credentials, strict=True) if value}
        body = encode_json({"action": action, "channels": list(channels), "transport": transport})
        started = time.perf_counter()
        self.calls += 1
        try:
            status, content = await self.client.post(body, headers)
        except (UpstreamError, TimeoutError) as exc:
            log.warning("--auth-url: no answer from %s: %s", self.url, exc or "timed out")
            raise HttpError(503, "auth_unavailable", "the application's authorisation check did not answer") from None
        finally:
            self.seconds.observe(time.perf_counter() - started)
        now = time.monotonic()
        if status in (401, 403):
            detail = f"the application refused {action} on {', '.join(channels)}"
            refused = Decision(False, now + self.ttl, status, detail)
            return dict.fromkeys(channels, refused)
        if not 200 <= status < 300:
            log.warning("--auth-url: %s answered %d", self.url, status)
            raise HttpError(503, "auth_unavailable", f"the application's authorisation check answered {status}")
        return self._decisions(content, action, channels, now)

    def _decisions(self, content: bytes, action: str, channels: tuple[str, ...], now: float) -> dict[str, Decision]:
        spec: Any = {}
        if content.strip():
            try:
                spec = json.loads(content)
            except ValueError:
                spec = None
        if not isinstance(spec, dict):
            log.warning("--auth-url: %s answered 2xx with a body that is not a JSON object", self.url)
            raise HttpError(503, "auth_unavailable", "the application's authorisation check answered nonsense")
        user, info, ttl, granted = spec.get("user"), spec.get("info"), spec.get("ttl", self.ttl), spec.get("channels")
        if (
            (user is not None and not isinstance(user, str))
            or (info is not None and not isinstance(info, dict))
            or not isinstance(ttl, int | float)
            or isinstance(ttl, bool)
            or not math.isfinite(ttl)  # (NaN would be remembered for ever)
            or (granted is not None and not (isinstance(granted, list) and all(isinstance(c, str) for c in granted)))
        ):
            log.warning("--auth-url: %s answered 2xx with fields of the wrong types: %.200r", self.url, content)
            raise HttpError(503, "auth_unavailable", "the application's authorisation check answered nonsense")
        expires = now + min(max(float(ttl), 0.0), MAX_TTL)
        if user is not None and user_name(user) is None:  # (allowed all the same: it is only for presence)
            log.warning("--auth-url: %s named a user presence cannot list (1-128 characters, no controls)", self.url)
            user = None
        allowed = Decision(True, expires, who=Identity(user, info) if user else None)
        decisions = {}
        for name in channels:
            if granted is None or name in granted:
                decisions[name] = allowed
            else:
                decisions[name] = Decision(False, expires, 403, f"the application does not allow {action} on {name}")
        return decisions
