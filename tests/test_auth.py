"""Tokens (PyJWT): 401 without one, 403 for channels it does not grant, on every transport."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tidings.auth import mint

SECRET = "test-secret-of-some-length-0123456789"


@pytest.fixture
def secured(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--auth-secret", SECRET, "--public-channels", "news,public.*")


def test_no_token_401_wrong_channel_403_right_one_200(secured: ServerProcess, channel: str) -> None:
    reader = mint(SECRET, [], [channel], 60)
    writer = mint(SECRET, [channel], [], 60)
    with httpx.Client(base_url=secured.url, timeout=10) as client:
        assert client.get(f"/sub/{channel}?timeout=0").json()["error"] == "unauthorized"
        assert client.get(f"/sub/{channel}?timeout=0").status_code == 401
        bad = client.get(f"/sub/{channel}?timeout=0", headers={"Authorization": "Bearer nonsense"})
        assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
        other = client.get(f"/sub/{channel}-x?timeout=0", headers={"Authorization": f"Bearer {reader}"})
        assert other.status_code == 403 and other.json()["error"] == "forbidden"
        assert client.get(f"/sub/{channel}?timeout=0", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
        assert client.get(f"/sub/{channel}?timeout=0&token={reader}").status_code == 200  # EventSource's way
        client.cookies.set("tidings_token", reader)
        assert client.get(f"/sub/{channel}?timeout=0").status_code == 200
        client.cookies.clear()
        # Publishing needs a publish grant; a subscribe grant is not one.
        assert client.post(f"/pub/{channel}", json=1, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        assert client.post(f"/pub/{channel}", json=1, headers={"Authorization": f"Bearer {writer}"}).status_code == 202
        # Public channels are readable without a token, not writable.
        assert client.get("/sub/public.room?timeout=0").status_code == 200
        assert client.post("/pub/news", json=1).status_code == 401
        expired = mint(SECRET, [], [channel], -10)
        answer = client.get(f"/sub/{channel}?timeout=0", headers={"Authorization": f"Bearer {expired}"})
        assert answer.status_code == 401 and "expired" in answer.json()["detail"].lower()
        assert client.get(f"/sse/{channel}?token={writer}").status_code == 403
        assert "tidings_auth_failures_total 8.0" in client.get("/metrics").text


def test_websocket_handshake_and_commands(secured: ServerProcess, channel: str) -> None:
    url = f"ws://{secured.host}:{secured.port}/ws/{channel}"
    reader = mint(SECRET, [], [channel], 60)

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 401
        async with connect(f"{url}?token={reader}") as ws:
            await ws.send(json.dumps({"publish": {"channel": channel, "data": "x"}}))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

    asyncio.run(scenario())


def test_tidings_token_mints_a_token_the_server_takes(secured: ServerProcess, channel: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "token", "--secret", SECRET, "--publish", "room.*", "--ttl", "10m"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    answer = httpx.post(f"{secured.url}/pub/room.1", json="hi", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202
    assert (
        httpx.post(f"{secured.url}/pub/{channel}", json="hi", headers={"Authorization": f"Bearer {token}"}).status_code
        == 403
    )


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_the_python_client_presents_its_token(secured: ServerProcess, channel: str, transport: str) -> None:
    from tidings.client import AsyncClient

    token = mint(SECRET, [channel], [channel], 60)

    async def scenario() -> None:
        async with AsyncClient(secured.url, token=token) as client:
            first = await client.publish(channel, "one")
            messages = client.subscribe(channel, last_id="oldest", transport=transport)  # type: ignore[arg-type]
            message = await asyncio.wait_for(anext(messages), 10)
            assert message.id == first.id and message.data == "one"
            await messages.aclose()

    asyncio.run(scenario())


def test_the_cli_presents_its_token(secured: ServerProcess, channel: str) -> None:
    token = mint(SECRET, [channel], [channel], 60)
    command = [sys.executable, "-m", "tidings", "publish", channel, "hello", "--url", secured.url]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    done = subprocess.run([*command, "--token", token], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_tokens(
    start_server: Callable[..., ServerProcess], tmp_path: Path, channel: str, algorithm: str
) -> None:
    """--auth-public-key verifies tokens signed with the private half; the key's type picks the algorithm."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    private = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private_file = tmp_path / "private.pem"
    private_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = start_server("--auth-public-key", str(public_file))
    command = ["token", "--private-key", str(private_file), "--algorithm", algorithm, "--subscribe", channel]
    minted = subprocess.run(
        [sys.executable, "-m", "tidings", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    # Neither an HS256 token (the key-confusion attack) nor one signed by another key of the same kind passes.
    stranger = (
        rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    )
    stranger_pem = stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    forgeries = [mint(SECRET, [], [channel], 60), mint(stranger_pem, [], [channel], 60, algorithm)]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        good = client.get(f"/sub/{channel}?timeout=0", headers={"Authorization": f"Bearer {minted}"})
        assert good.status_code == 200, good.text
        for forged in forgeries:
            answer = client.get(f"/sub/{channel}?timeout=0", headers={"Authorization": f"Bearer {forged}"})
            assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
        other = client.get(f"/sub/{channel}x?timeout=0", headers={"Authorization": f"Bearer {minted}"})
        assert other.status_code == 403


def test_a_bad_public_key_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    for content in (None, "not a key"):
        path = tmp_path / "key.pem"
        if content is not None:
            path.write_text(content)
        done = subprocess.run(
            [sys.executable, "-m", "tidings", "serve", "--port", "0", "--auth-public-key", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1 and "--auth-public-key" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
