"""Behind nginx (Debian's package, started here with a private prefix) configured exactly as README's
"Behind a reverse proxy" says: every transport passes, a long-poll is never cut by the proxy's read
timeout, the Origin check sees the scheme the browser used (TLS ends at nginx), and the access log
names the client, not the proxy."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, free_ports, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tidings.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
NGINX_DEFAULT_READ_TIMEOUT = 60.0  # seconds: proxy_read_timeout when the configuration does not set it


def readme_nginx_config() -> str:
    """The nginx block of README's "Behind a reverse proxy" section."""
    section = README.read_text().split("## Behind a reverse proxy", 1)[1]
    match = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert match, "README's proxy section has no nginx block"
    return match[1]


@dataclass
class Proxy:
    http_port: int
    https_port: int
    upstream: ServerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def proxied(start_server: Callable[..., ServerProcess]) -> Iterator[Proxy]:
    """Tidings (trusting 127.0.0.1's forwarded headers, logging each request, polls held at most
    1 s) behind nginx with README's configuration, on plain HTTP and on TLS."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed (Debian package nginx; scripts/test installs it)")
    upstream = start_server("--forwarded-allow-ips", "127.0.0.1", "--access-log", "--max-poll-timeout", "1")
    http_port, https_port = free_ports(2)
    work = Path(tempfile.mkdtemp(prefix="tidings-nginx-"))
    cert, key = self_signed(work)
    site = readme_nginx_config().replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream.port};")
    listen = (
        f"listen 127.0.0.1:{http_port};\n    listen 127.0.0.1:{https_port} ssl;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};"
    )
    assert "listen 80;" in site
    site = site.replace("listen 80;", listen)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")  # (workers would run as nobody: no access to `work`)
        + f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n{temp_paths}\n{site}\n}}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-c", str(work / "nginx.conf"), "-p", f"{work}/", "-e", f"{work}/error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_until(listening, 10, "nginx to listen")
        yield Proxy(http_port, https_port, upstream)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def test_the_default_poll_hold_fits_under_common_proxies() -> None:
    assert Settings().max_poll_timeout < NGINX_DEFAULT_READ_TIMEOUT


def test_long_poll_through_nginx(proxied: Proxy, channel: str) -> None:
    with httpx.Client(base_url=proxied.url, timeout=10) as client:
        # README's own example asks for 60 s; the server holds at most its maximum (1 s here, 55 s by
        # default), so the proxy never times the request out.
        started = time.monotonic()
        empty = client.get(f"/sub/{channel}", params={"timeout": "60"})
        assert empty.status_code == 200 and empty.json()["messages"] == []
        assert time.monotonic() - started < 5
        client.post(f"/pub/{channel}", content=b"through the proxy").raise_for_status()
        answer = client.get(f"/sub/{channel}", params={"last_id": empty.json()["last_id"], "timeout": "0"}).json()
        assert [m["data"] for m in answer["messages"]] == ["through the proxy"]


def _first_line_with(response: httpx.Response, marker: str) -> str:
    for line in response.iter_lines():
        if marker in line:
            return line
    raise AssertionError(f"the stream ended without {marker!r}")


@pytest.mark.parametrize(
    ("path", "marker"), [("/sse/{}", "data: "), ("/stream/{}", '"data"'), ("/stream/{}?format=html", 'class="m"')]
)
def test_streams_pass_through_nginx_unbuffered(proxied: Proxy, channel: str, path: str, marker: str) -> None:
    with httpx.Client(base_url=proxied.url, timeout=10) as client, client.stream("GET", path.format(channel)) as stream:
        assert stream.status_code == 200
        wait_until(lambda: _subscribers(client, channel) == 1, 10, "the subscriber")
        client.post(f"/pub/{channel}", content=b"live from the proxy").raise_for_status()
        line = _first_line_with(stream, marker)  # arrives now, not when the response ends
        assert "live from the proxy" in line, line


def _subscribers(client: httpx.Client, channel: str) -> int:
    count = client.get(f"/channels/{channel}").json()["subscribers"]
    assert isinstance(count, int)
    return count


async def _ws_roundtrip(url: str, origin: str, **kw: Any) -> dict[str, Any]:
    async with connect(url, origin=origin, open_timeout=10, **kw) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"publish": {"channel": url.rsplit("/", 1)[1], "data": "over the socket"}}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "message":
                    assert isinstance(frame, dict)
                    return frame


def _handshake_status(url: str, origin: str, **kw: Any) -> int:
    try:
        asyncio.run(_ws_roundtrip(url, origin, **kw))
    except InvalidStatus as exc:
        return exc.response.status_code
    return 101


def test_websocket_and_the_origin_check_through_nginx(proxied: Proxy, channel: str) -> None:
    # Plain HTTP: the page's own origin is the proxy's address; https would be another origin.
    frame = asyncio.run(_ws_roundtrip(f"ws://127.0.0.1:{proxied.http_port}/ws/{channel}", proxied.url))
    assert frame["message"]["data"] == "over the socket"
    assert _handshake_status(f"ws://127.0.0.1:{proxied.http_port}/ws/{channel}", "https://127.0.0.1") == 403
    # TLS ends at nginx: X-Forwarded-Proto (believed from 127.0.0.1) makes https pages this server's own.
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    wss = f"wss://127.0.0.1:{proxied.https_port}/ws/{channel}"
    assert _handshake_status(wss, proxied.https_url, ssl=tls) == 101
    assert _handshake_status(wss, f"http://127.0.0.1:{proxied.https_port}", ssl=tls) == 403
    with httpx.Client(base_url=proxied.https_url, verify=False, timeout=10) as client:
        own = client.post(f"/pub/{channel}", content=b"x", headers={"Origin": proxied.https_url})
        assert own.status_code in (201, 202)


def test_the_access_log_names_the_client_not_the_proxy(proxied: Proxy, channel: str) -> None:
    # Loopback has many addresses: the client speaks from 127.0.0.5 to nginx, nginx from 127.0.0.1 to Tidings.
    via_proxy = httpx.Client(base_url=proxied.url, transport=httpx.HTTPTransport(local_address="127.0.0.5"))
    with via_proxy:
        via_proxy.get(f"/channels/{channel}-via-proxy").raise_for_status()
    # A client that is not a trusted proxy cannot forge the header.
    direct = httpx.Client(base_url=proxied.upstream.url, transport=httpx.HTTPTransport(local_address="127.0.0.7"))
    with direct:
        direct.get(f"/channels/{channel}-direct", headers={"X-Forwarded-For": "198.51.100.9"}).raise_for_status()
    # A proxy that adds a header line of its own (HAProxy does) behind the client's forged one:
    # the client is the last untrusted hop over all the lines.
    with httpx.Client(base_url=proxied.upstream.url) as appending_proxy:
        two_lines = [("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-For", "127.0.0.8")]
        appending_proxy.get(f"/channels/{channel}-two-lines", headers=two_lines).raise_for_status()
    upstream = proxied.upstream

    def logged(query: str) -> str:
        return next((line for line in upstream.lines if query in line and "tidings.access" in line), "")

    wait_until(lambda: all(map(logged, ("-via-proxy", "-direct", "-two-lines"))), 10, "the access log lines")
    assert " 127.0.0.5 GET " in logged("-via-proxy"), logged("-via-proxy")
    assert " 127.0.0.7 GET " in logged("-direct"), logged("-direct")
    assert " 127.0.0.8 GET " in logged("-two-lines"), logged("-two-lines")
