"""Who may publish and subscribe: JSON Web Tokens (PyJWT), off unless a key is configured.

A token carries `exp` (required) and a `tidings` claim with channel patterns:
``{"tidings": {"publish": ["chat"], "subscribe": ["room.*", "news"]}}`` (`*` matches any run of
characters). It is presented as `Authorization: Bearer <token>`, as `?token=` (EventSource and
browser WebSockets cannot set headers) or as the cookie `tidings_token`. Verified tokens are
cached until they expire, so a long-poll re-presenting its token on every poll costs a lookup.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings.presence import Identity, user_name
from tidings.web import params
from tidings.web.http import HttpError, Request

COOKIE = "tidings_token"
CACHE_LIMIT = 10_000  # verified tokens remembered; the cache is emptied when it is full


@dataclass(frozen=True, slots=True)
class Grants:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    expires: float
    who: Identity | None = None  # from the `sub` claim (and an `info` object claim)

    def allows(self, action: str, channel: str) -> bool:
        patterns = self.publish if action == "publish" else self.subscribe
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


class Auth:
    def __init__(self, secret: str = "", public_key_pem: str = "") -> None:
        if secret:
            self.key: Any = secret
            self.algorithms = ["HS256"]
        else:
            self.key, algorithm = load_public_key(public_key_pem)
            self.algorithms = [algorithm]  # one algorithm per key: no RS256/ES256/HS256 confusion
        self.cache: dict[str, Grants] = {}

    def ungranted(self, request: Request, action: str, channels: Sequence[str]) -> list[str]:
        """Those of `channels` the request's token does not grant `action` on; raises 401 when
        there is no token, or it is bad. (Deleting is granted by the publish patterns.)"""
        grants = self.grants(token_of(request))
        if request.identity is None:
            request.identity = grants.who
        kind = "subscribe" if action == "subscribe" else "publish"
        return [name for name in channels if not grants.allows(kind, name)]

    def check(self, request: Request, action: str, channels: Sequence[str]) -> None:
        """Raise 401 (no or bad token) or 403 (not for these channels) unless allowed."""
        denied = self.ungranted(request, action, channels)
        if denied:
            raise HttpError(403, "forbidden", f"the token does not allow {action} on {', '.join(denied)}")

    def grants(self, token: str | None) -> Grants:
        if not token:
            raise HttpError(401, "unauthorized", "a token is required (Authorization: Bearer, ?token= or cookie)")
        now = time.time()
        cached = self.cache.get(token)
        if cached is not None and cached.expires > now:
            return cached
        try:
            claims = jwt.decode(token, self.key, algorithms=self.algorithms, options={"require": ["exp"]})
        except jwt.PyJWTError as exc:
            raise HttpError(401, "invalid_token", f"the token was refused: {exc}") from None
        spec = claims.get("tidings") or {}
        if not isinstance(spec, dict):
            raise HttpError(401, "invalid_token", "the tidings claim must be an object")
        grants = Grants(
            _patterns(spec.get("publish")), _patterns(spec.get("subscribe")), float(claims["exp"]), _identity(claims)
        )
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[token] = grants
        return grants


class PublicChannels:
    """`--public-channels`: patterns anyone may subscribe to, whatever else guards the rest."""

    def __init__(self, patterns: str) -> None:
        self.patterns = tuple(p.strip() for p in patterns.replace(" ", ",").split(",") if p.strip())

    def guarded(self, action: str, channels: Sequence[str]) -> list[str]:
        """Those of `channels` that need a grant for `action`."""
        if action != "subscribe" or not self.patterns:
            return list(channels)
        return [name for name in channels if not any(fnmatch.fnmatchcase(name, p) for p in self.patterns)]


def load_public_key(pem: str) -> tuple[Any, str]:
    """The key and the one algorithm it verifies: RSA -> RS256, EC P-256 -> ES256; anything else is a ValueError."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"--auth-public-key: not a PEM public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ValueError("--auth-public-key: an RSA (RS256) or EC P-256 (ES256) public key is needed")


def _identity(claims: dict[str, Any]) -> Identity | None:
    user, info = user_name(claims.get("sub")), claims.get("info")
    if user is None:
        return None
    return Identity(user, info if isinstance(info, dict) else None)


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def token_of(request: Request) -> str | None:
    header = request.header(b"authorization")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    token = params.query(request).get("token")
    if token:
        return token
    for part in request.header(b"cookie").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def mint(key: str, publish: list[str], subscribe: list[str], ttl: float, algorithm: str = "HS256") -> str:
    """A token for `tidings token` (and tests)."""
    claims = {"exp": int(time.time() + ttl), "tidings": {"publish": publish, "subscribe": subscribe}}
    return jwt.encode(claims, key, algorithm=algorithm)
