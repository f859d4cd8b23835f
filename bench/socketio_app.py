"""The python-socketio peer in the benchmark: an ASGI app, run by uvicorn (see `SocketIO` in
bench/servers.py): `uvicorn bench.socketio_app:app`.

Subscribers connect to `/socket.io/?EIO=4&transport=websocket&channel=<name>` and join the room
`<name>` in the connect handler, before their namespace connect is acknowledged. `POST /pub/<name>`
(the body as UTF-8 text, as the load generator publishes to Tidings and Nchan) emits the event
`message` with the body as its data to that room; `GET /healthz` says which server this is.
WebSocket only (no HTTP long-polling transport, no upgrade), everything else at its defaults.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import socketio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])


async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
    channel = parse_qs(environ.get("QUERY_STRING", "")).get("channel", [""])[0]
    if not channel:
        return False
    await sio.enter_room(sid, channel)
    return True


sio.on("connect", connect)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def publish_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Everything that is not Socket.IO: the publish endpoint and the health check."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if scope["method"] == "GET" and path == "/healthz":
        await _answer(send, 200, b"socketio\n")
        return
    if scope["method"] != "POST" or not path.startswith("/pub/") or len(path) == len("/pub/"):
        await _answer(send, 404, b"not found\n")
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await sio.emit("message", body.decode(), room=path[len("/pub/") :])
    await _answer(send, 200, b"published\n")


app = socketio.ASGIApp(sio, other_asgi_app=publish_app)
