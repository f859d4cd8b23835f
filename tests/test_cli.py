"""The tidings command: publish from a pipe and a prompt, subscribe, clear errors."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, subscribers, wait_until

TIDINGS = [sys.executable, "-m", "tidings"]


def buffered(srv: ServerProcess, channel: str) -> list[object]:
    body = httpx.get(f"{srv.url}/sub/{channel}", params={"last_id": "oldest"}, timeout=10).json()
    return [m["data"] for m in body["messages"]]


def test_publish_each_line_from_a_pipe(server: ServerProcess, channel: str) -> None:
    done = subprocess.run(
        [*TIDINGS, "publish", channel, "--url", server.url],
        input="first line\nsecond\nquit\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert buffered(server, channel) == ["first line", "second", "quit"]  # a pipe ends at EOF only


def test_publish_one_message_prints_the_answer(server: ServerProcess, channel: str) -> None:
    done = subprocess.run(
        [*TIDINGS, "publish", channel, '{"a": 1}', "--json", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["channel"] == channel and answer["subscribers"] == 0
    assert buffered(server, channel) == [{"a": 1}]


def test_the_prompt_publishes_typed_lines_until_quit(server: ServerProcess, channel: str) -> None:
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [*TIDINGS, "publish", channel, "--url", server.url],
        stdin=secondary,
        stdout=secondary,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(secondary)
    os.write(primary, b"hello there\nquit\n")
    assert proc.wait(30) == 0
    os.close(primary)
    assert buffered(server, channel) == ["hello there"]


def test_an_unreachable_server_is_one_clear_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    done = subprocess.run(
        [*TIDINGS, "publish", "chat", "hi", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith(f"tidings: cannot reach http://127.0.0.1:{port}")


def test_an_invalid_channel_is_reported(server: ServerProcess) -> None:
    done = subprocess.run(
        [*TIDINGS, "publish", "bad name", "x", "--url", server.url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "invalid_channel" in done.stderr


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_subscribe_prints_messages_and_keeps_its_cursor_across_a_restart(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    srv = start_server()
    port = str(srv.port)  # the restarted server takes the same port (a later --port wins)
    httpx.post(f"{srv.url}/pub/{channel}", json="old", timeout=10)
    proc = subprocess.Popen(
        [*TIDINGS, "subscribe", channel, "--url", srv.url, "--last-id", "oldest", "--timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(proc)
        assert json.loads(lines.get(timeout=10))["data"] == "old"
        client = httpx.Client(base_url=srv.url, timeout=10)
        wait_until(lambda: subscribers(client, channel) == 1, 10, "the subscriber to poll")
        client.post(f"/pub/{channel}", json={"n": 1})
        message = json.loads(lines.get(timeout=10))
        assert message["data"] == {"n": 1} and message["channel"] == channel
        # The server goes away and comes back on the same port: the subscriber reconnects.
        srv.kill()
        srv = start_server("--port", port)
        client = httpx.Client(base_url=srv.url, timeout=10)
        wait_until(lambda: subscribers(client, channel) == 1, 20, "the subscriber to reconnect")
        client.post(f"/pub/{channel}", json="after restart")
        assert json.loads(lines.get(timeout=10))["data"] == "after restart"
    finally:
        proc.kill()
        proc.wait(10)


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tidings serve` expected to fail at start (a bounded wait: it must not start serving)."""
    return subprocess.run(
        [*TIDINGS, "serve", *args], capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
    )


def assert_one_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("tidings: ") and expected in done.stderr, done.stderr


def test_a_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line(serve("--port", str(port)), f"port {port} is in use")


def test_an_address_that_cannot_be_bound_is_one_line_and_exit_1() -> None:
    # 203.0.113.1 is a documentation address (RFC 5737): no interface of this machine has it.
    assert_one_line(serve("--port", "0", "--host", "203.0.113.1"), "203.0.113.1 is not an address of this machine")
    # .invalid never resolves (RFC 6761).
    assert_one_line(serve("--port", "0", "--host", "no-such-host.invalid"), "'no-such-host.invalid' does not resolve")
    assert_one_line(serve("--port", "70000"), "--port 70000 is not a port")


def _unprivileged_ports_start() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return int(f.read())


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or _unprivileged_ports_start() <= 80,
    reason="needs root to drop privileges with setpriv, and port 80 privileged",
)
def test_permission_denied_is_one_line_and_exit_1(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("unreadable once privileges are dropped")
    key.chmod(0o600)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TIDINGS, "serve"]
    done = subprocess.run([*nobody, "--port", "80"], capture_output=True, text=True, timeout=30)
    assert_one_line(done, "permission denied: cannot listen on 127.0.0.1:80")
    done = subprocess.run(
        [*nobody, "--port", "0", "--auth-public-key", str(key)], capture_output=True, text=True, timeout=30
    )
    assert_one_line(done, f"--auth-public-key: cannot read {key}: Permission denied")


def test_bad_settings_from_the_environment_are_usage_errors_not_tracebacks() -> None:
    done = serve(env={"TIDINGS_PORT": "eighty"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "argument --port: invalid int value: 'eighty'" in done.stderr
    assert_one_line(serve("--port", "0", "--log-level", "loud"), "--log-level is debug, info, warning or error")


def test_serve_help_shows_every_default_readably() -> None:
    done = subprocess.run([*TIDINGS, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines at the terminal's width
    assert "(default ;" not in text and "(default: ;" not in text
    assert "(default: none; env TIDINGS_AUTH_SECRET)" in text
    assert "(default: 8080; env TIDINGS_PORT)" in text
    assert "--access-log log one line per answered request (default: off; on with TIDINGS_ACCESS_LOG=1)" in text


def test_a_negative_presence_grace_is_one_line_and_exit_1() -> None:
    assert_one_line(serve("--port", "0", "--presence-grace", "-1"), "presence_grace must be 0 or more seconds")
