"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of a live server under fuzzing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import ServerProcess
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from tidings.config import Settings
from tidings.web import openapi

# Fuzzing examples per operation: enough to walk every parameter's edges, small enough for CI.
EXAMPLES = 40
# Operations whose success is an endless stream or a protocol switch: their answers cannot be
# read to the end, so the fuzzer skips them (tests/web/test_streams.py and test_websocket.py cover them).
ENDLESS = "^/(sse|stream|ws)/"


def shipped() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(resources.files("tidings").joinpath("openapi.json").read_text("utf-8"))
    return doc


def test_the_shipped_document_is_valid_openapi_3_1() -> None:
    doc = shipped()
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_the_served_document_is_the_shipped_one_with_this_servers_limits(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-poll-timeout", "7")
    served = httpx.get(server.url + "/openapi.json", timeout=10).json()
    validate(served)
    (timeout,) = [p for p in served["paths"]["/sub/{channels}"]["get"]["parameters"] if p.get("name") == "timeout"]
    assert "this server: 7 s" in timeout["description"]
    assert set(served["paths"]) == set(shipped()["paths"])


def test_every_route_is_documented() -> None:
    """The router's path heads and the document's paths name the same resources."""
    source = resources.files("tidings.web").joinpath("app.py").read_text("utf-8")
    documented = {path.split("/")[1] for path in shipped()["paths"]}
    for head in ("sub", "pub", "sse", "stream", "ws", "channels", "metrics", "healthz", "openapi.json", "static"):
        assert head in source and head in documented, head
    (file,) = shipped()["paths"]["/static/{file}"]["get"]["parameters"]
    shipped_files = {
        entry.name
        for entry in resources.files("tidings.static").iterdir()
        if "." in entry.name and not entry.name.startswith("__init__.")
    }
    assert set(file["schema"]["enum"]) == shipped_files


# Short polls: the fuzzer waits for every answer, and a held poll answers at its timeout. The
# document is the one such a server serves (the same function builds it).
FUZZED = Settings(poll_timeout=0.2, max_poll_timeout=0.5)
schema = schemathesis.openapi.from_dict(json.loads(openapi.document(FUZZED))).exclude(path_regex=ENDLESS)


POLLS = ("--poll-timeout", str(FUZZED.poll_timeout), "--max-poll-timeout", str(FUZZED.max_poll_timeout))
AUTH = ("--auth-secret", "fuzz-secret-0123456789abcdef0123456789", "--public-channels", "0,a*")


@pytest.fixture(scope="module")
def open_server() -> Iterator[ServerProcess]:
    server = ServerProcess(*POLLS)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def secured_server() -> Iterator[ServerProcess]:
    server = ServerProcess(*POLLS, *AUTH)
    yield server
    server.kill()


def call_and_check(case: schemathesis.Case, server: ServerProcess) -> None:
    case.call_and_validate(base_url=server.url, timeout=10)
    assert not any("Traceback" in line for line in server.lines), "".join(server.lines[-40:])


FUZZING = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@FUZZING
def test_fuzzing_an_open_server(case: schemathesis.Case, open_server: ServerProcess) -> None:
    """No 5xx, no traceback, every answer's status, type and body as documented."""
    call_and_check(case, open_server)


@schema.parametrize()
@FUZZING
def test_fuzzing_a_server_that_requires_tokens(case: schemathesis.Case, secured_server: ServerProcess) -> None:
    call_and_check(case, secured_server)
