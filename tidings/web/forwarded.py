"""`--forwarded-allow-ips` (uvicorn's name and meaning): from these peers — a reverse proxy in
front of Tidings — `X-Forwarded-For` and `X-Forwarded-Proto` are believed. They then give the
client address (access log) and the scheme the browser used (the Origin check's idea of this
server's own origin: https behind a TLS-terminating proxy). From anyone else they are ignored.
"""

from __future__ import annotations

import ipaddress

from tidings.web.http import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedHeaders:
    def __init__(self, spec: str) -> None:
        entries = [item.strip() for item in spec.split(",") if item.strip()]
        self.any = "*" in entries
        self.networks: list[Network] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"--forwarded-allow-ips: not an IP address or network: {entry!r}") from None

    def trusts(self, address: str) -> bool:
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a Unix socket peer, or none
            return False
        return any(ip in network for network in self.networks)

    def apply(self, request: Request) -> None:
        """Take the client address and scheme from the headers when the peer is trusted."""
        if not self.trusts(request.client):
            return
        protos = request.header_list(b"x-forwarded-proto")
        if protos and protos[-1].lower() in ("http", "https"):  # the last: what the nearest proxy saw
            request.scheme = protos[-1].lower()
        chain = request.header_list(b"x-forwarded-for")
        # Each proxy appends whom it heard from: the client is the last hop we do not trust
        # (anything before it could be made up by that client).
        for hop in reversed(chain):
            request.client = hop
            if not self.trusts(hop):
                break
