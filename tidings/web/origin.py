"""Which pages may use this server: CORS headers for reads, and the Origin check for requests
that act (WebSocket handshakes, publish, delete).

A browser sends `Origin` with every WebSocket handshake and every cross-origin POST/DELETE, and
it attaches the user's cookies to them even when the page is on another origin (a form post
needs no preflight; another port of the same host is the same site). So a request that can act
and carries an `Origin` is refused unless that origin is this server's own (same scheme, host
and port as the request's Host) or is listed in `--cors-origin`. With `--cors-origin '*'` any
page may act, but never with the cookie: its token must be presented explicitly (header or
`?token=`), which a page on another origin can only do when it was given the token.
Requests without `Origin` (curl, servers, the CLI) are not browsers' and are unaffected.
"""

from __future__ import annotations

import re

from tidings.web.http import HttpError, Request

_ORIGIN = re.compile(r"https?://[^/?#\s@]+/?", re.IGNORECASE)  # as a browser sends it: no path, no user
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normal_origin(scheme: str, host: str) -> str:
    """`scheme://host[:port]` lower-cased, without the scheme's default port."""
    scheme, host = scheme.lower(), host.strip().lower().rstrip("/")
    name, colon, port = host.rpartition(":")
    if colon and port == _DEFAULT_PORTS.get(scheme):  # ("[::1]" has no port: its tail "1]" is none)
        host = name
    return f"{scheme}://{host}"


def _parse_origin(origin: str) -> str:
    scheme, sep, host = origin.partition("://")
    return normal_origin(scheme, host) if sep else origin.strip().lower()


class OriginPolicy:
    """`--cors-origin`: origins whose pages may call this server ("" for none, "*" for any)."""

    def __init__(self, spec: str) -> None:
        listed = {origin.strip() for origin in spec.replace(" ", ",").split(",") if origin.strip()}
        for origin in listed - {"*"}:
            if _ORIGIN.fullmatch(origin) is None:
                raise ValueError(
                    f"--cors-origin: {origin!r} is not an origin: scheme://host[:port], e.g. https://app.example, or *"
                )
        self.any = "*" in listed
        self.origins = {_parse_origin(origin) for origin in listed if origin != "*"}
        self.cors = self.any or bool(self.origins)  # whether any other origin gets CORS headers at all
        self.preflight = (
            b"Access-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\n"
            b"Access-Control-Allow-Headers: Content-Type, Authorization, Last-Event-ID\r\n"
            b"Access-Control-Max-Age: 600\r\n"
        )

    def listed(self, origin: str) -> bool:
        return _parse_origin(origin) in self.origins

    def allows(self, origin: str) -> bool:
        return self.any or self.listed(origin)

    def cors_headers(self, origin: str) -> bytes:
        if self.listed(origin):
            # A listed page may act with the user's cookie (see check_acting), so it may read with it too.
            return (
                b"Access-Control-Allow-Origin: %s\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
                % origin.encode("latin-1")
            )
        return b"Access-Control-Allow-Origin: *\r\n"  # any page, never with credentials

    def vouches(self, request: Request) -> bool:
        """Whether a read's browser credentials (a cookie) may stand for the user: not when a page
        on another site sent it without being listed — it cannot read the answer, but the user
        would be counted present, under their name, where they never went. A browser names the
        page by Origin on CORS requests, by Sec-Fetch-Site on the others."""
        origin = request.header(b"origin")
        if origin:
            return _parse_origin(origin) == normal_origin(request.scheme, request.header(b"host")) or self.listed(
                origin
            )
        return request.header(b"sec-fetch-site") in ("", "same-origin", "none")

    def check_acting(self, request: Request) -> bool:
        """Refuse (403) a browser request from a page that may not act here. Returns whether
        the request's cookie may stand for the user (False: present a token explicitly)."""
        origin = request.header(b"origin")
        if not origin:
            return True
        if _parse_origin(origin) == normal_origin(request.scheme, request.header(b"host")) or self.listed(origin):
            return True
        if self.any:
            return False
        raise HttpError(
            403,
            "origin_not_allowed",
            f"pages on {origin[:200]} may not act here (not this server's origin, not in --cors-origin)",
        )
