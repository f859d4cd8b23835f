"""GET /ws/{channels}: WebSocket, on the same HTTP edge.

The handshake and the framing come from the `websockets` library's sans-I/O `ServerProtocol`
(fed the bytes our connection receives); no extensions are negotiated, so a server frame's
bytes are the same for every connection and a message is framed once per fan-out.

Server → client, one JSON text frame each:
  {"type":"message","last_id":CURSOR,"message":{id, channel, data, time}}
  {"type":"gap","channels":[...]}     {"type":"closed","channel":...}
  {"type":"join"|"leave","channel":...,"user":...,"info":{...}|null}
  {"type":"published","id":...,"channel":...,"subscribers":N}     (answer to a publish)
  {"type":"error","error":CODE,"detail":...}     {"type":"slow",...} (then the socket closes)
Client → server:
  {"publish":{"channel":...,"data":...}}
  {"subscribe":[channels],"last_id":CURSOR,"presence":true}     {"unsubscribe":[channels]}
  ("presence": join/leave events for those channels; ?presence=1 does it for the URL's)
The server pings every heartbeat interval. A binary frame closes the socket with 1003, text that
is not JSON with 1007, a frame over the message size limit with 1009, a slow client with 1008.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from tidings.encoding import decode_json, encode_json
from tidings.errors import TidingsError
from tidings.hub import MAX_CHANNELS_PER_REQUEST, Batch, Cursor, Published, validate_channel
from tidings.web import params
from tidings.web.errors import failing, http_error
from tidings.web.http import HttpConnection, HttpError, Request
from tidings.web.streaming import NO_CHANNELS, WEBSOCKET, Stream

if TYPE_CHECKING:
    from tidings.web.types import Services


class WebSocketSession:
    """One WebSocket: the sans-I/O `ServerProtocol` for its frames, a stream engine (`Stream`)
    for what it is subscribed to, and the commands the client sends. The engine asks it, as
    its `StreamEnds`, how the stream ends: with a close frame, and not when a channel is
    deleted (the socket keeps its other channels)."""

    __slots__ = ("app", "conn", "fragments", "handshake", "inbox", "joining", "listen", "protocol", "stream")

    outlives_channels = True
    transport = "ws"

    def __init__(
        self,
        app: Services,
        conn: HttpConnection,
        handshake: Request,
        channels: tuple[str, ...],
    ) -> None:
        self.app = app
        self.conn = conn
        self.protocol: ServerProtocol | None = None  # (see `_protocol`)
        self.fragments: bytearray | None = None  # of a text message still arriving
        self.handshake = handshake  # its token authorizes the commands sent on the socket
        self.stream = Stream(app, conn, channels, WEBSOCKET, ends=self, who=handshake.identity)
        self.listen = params.flag(params.query(handshake), "presence")  # (for the URL's channels)
        self.inbox: list[bytes] | None = []  # what arrives before the first read is answered
        # Channels of subscribe commands whose read is not answered yet (it may wait on the
        # broker): a repeated command must not read their backlog again.
        self.joining = NO_CHANNELS

    def start(self, batch: Batch) -> None:
        self.stream.begin(batch, self.listen)
        inbox, self.inbox = self.inbox, None
        for data in inbox or ():
            self.receive(data)

    # -- the connection's hold (until the stream begins; then the stream holds it)

    def release(self) -> None:
        self.stream.release()

    def shutdown(self) -> None:
        self.stream.shutdown()

    # -- bytes from the client

    def receive(self, data: bytes) -> None:
        if self.inbox is not None:
            self.inbox.append(data)
            return
        protocol = self._protocol()
        protocol.receive_data(data)
        brought_data = False
        for frame in protocol.events_received():
            if not isinstance(frame, Frame):
                continue  # the handshake was done before this object existed
            brought_data = brought_data or frame.opcode in _DATA
            if frame.opcode is Opcode.TEXT:
                if frame.fin:
                    self._command(bytes(frame.data))
                else:  # a message in fragments (RFC 6455 5.4); the protocol checks their order and size
                    self.fragments = bytearray(frame.data)  # (one buffer: empty fragments add nothing)
            elif frame.opcode is Opcode.CONT and self.fragments is not None:
                self.fragments += frame.data
                if frame.fin:
                    command, self.fragments = bytes(self.fragments), None
                    self._command(command)
            elif frame.opcode is Opcode.BINARY:
                self._close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
        self._send_protocol_output()
        if protocol.state is State.CLOSED or protocol.close_expected():
            self.stream.release()
            self.conn.close()
        elif not brought_data and _between_frames(protocol):
            self.protocol = None  # an idle socket's (it only answered a ping): see `_protocol`

    def _protocol(self) -> ServerProtocol:
        """The frames' state machine. Between frames a new one is the same as the old (no
        extensions are negotiated), and an idle socket is ~1.1 KB lighter without it; making one
        costs ~6 us. So it goes when a read brought only control frames (a pong to our ping: an
        idle socket, which makes one per heartbeat) and left no frame, fragmented message or
        closing handshake under way; a socket sending commands keeps it."""
        protocol = self.protocol
        if protocol is None:
            protocol = self.protocol = _open_protocol(self.app)
        return protocol

    def _send_protocol_output(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        for data in protocol.data_to_send():
            if data:
                self.conn.send_raw(data)

    def _close(self, code: int, reason: str, send_now: bool = True) -> None:
        try:
            self._protocol().send_close(code, reason)
        except InvalidState:
            return
        if send_now:  # (a refusal may come from a callback, after `receive` has sent its output)
            self._send_protocol_output()

    def _refuse(self, error: Exception) -> None:
        """A command refused: an error frame, or for a token's refusal a close (documented:
        4401 no or bad token, 4403 not allowed)."""
        refusal = http_error(error)
        if refusal.code in _AUTH_ERRORS:
            self._close(4000 + refusal.status, f"{refusal.code}: {refusal.detail}"[:120])
        else:
            self.stream.push(WEBSOCKET.event("error", {"error": refusal.code, "detail": refusal.detail}))

    def _command(self, payload: bytes) -> None:
        try:
            command = decode_json(payload.decode())
        except ValueError:
            self._close(CloseCode.INVALID_DATA, "frames must be JSON")
            return
        try:
            if not isinstance(command, dict) or len(command) < 1:
                raise HttpError(400, "invalid_command", "a frame is a JSON object: publish, subscribe or unsubscribe")
            if "publish" in command:
                self._publish(command["publish"])
            elif "subscribe" in command:
                self._subscribe(_channel_list(command["subscribe"]), command.get("last_id"), command.get("presence"))
            elif "unsubscribe" in command:
                self.stream.remove_channels(_channel_list(command["unsubscribe"]))
            else:
                raise HttpError(400, "invalid_command", "a frame is a JSON object: publish, subscribe or unsubscribe")
        except TidingsError as exc:
            self._refuse(exc)

    # -- commands

    def _publish(self, spec: object) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("channel"), str) or "data" not in spec:
            raise HttpError(400, "invalid_command", 'publish needs {"channel": name, "data": value}')
        channel = validate_channel(spec["channel"])
        data = spec["data"]
        if len(encode_json(data)) > self.app.settings.max_message_bytes:
            raise HttpError(
                413, "body_too_large", f"messages are limited to {self.app.settings.max_message_bytes} bytes"
            )

        def publishing() -> None:
            if not self.conn.closed:  # (an --auth-url check takes a while)
                self.app.relay.publish(channel, data, self._published, self._refuse)

        self.app.authorize(self.handshake, "publish", [channel], "websocket", publishing, self._refuse)

    def _published(self, result: Published) -> None:
        body = {"id": str(result.id), "channel": result.channel, "subscribers": result.subscribers}
        self.stream.push(WEBSOCKET.event("published", body))

    def _subscribe(self, channels: list[str], token: object, listen: object) -> None:
        if token is not None and not isinstance(token, str):
            raise HttpError(400, "invalid_cursor", "last_id is a cursor string")
        if listen is not None and not isinstance(listen, bool):
            raise HttpError(400, "invalid_command", "presence is true or false")
        cursor = Cursor.parse(token)  # (before `joining`: a refused command leaves no trace)
        subscribed = self.stream.channels
        if listen:  # (on channels it holds already: their join/leave from now on)
            self.stream.listen_to(tuple(name for name in channels if name in subscribed), True)
        new = tuple(dict.fromkeys(name for name in channels if name not in subscribed and name not in self.joining))
        if len(subscribed) + len(self.joining) + len(new) > MAX_CHANNELS_PER_REQUEST:
            raise HttpError(400, "invalid_channel", f"at most {MAX_CHANNELS_PER_REQUEST} channels per socket")
        if new:
            self.joining |= frozenset(new)

            def refused(error: Exception) -> None:
                self.joining -= frozenset(new)  # (a later command may try them again)
                self._refuse(error)

            def joining() -> None:
                if self.conn.closed:  # (an --auth-url check takes a while)
                    return
                self.app.check_room(new)
                self.app.relay.read(
                    self.conn, new, cursor, lambda batch: self._add(new, batch, bool(listen)), refused, limit=None
                )

            try:
                self.app.authorize(self.handshake, "subscribe", new, "websocket", joining, refused)
            except TidingsError as exc:
                refused(exc)

    def _add(self, channels: tuple[str, ...], batch: Batch, listen: bool) -> None:
        self.joining -= frozenset(channels)
        self.stream.add_channels(channels, batch, listen, self.handshake.identity)

    # -- the stream's end (as its `StreamEnds`)

    def end(self, conn: HttpConnection, final: bytes, slow: bool) -> None:
        if slow:
            self._close(CloseCode.POLICY_VIOLATION, "slow consumer", send_now=False)
        else:
            self._close(CloseCode.GOING_AWAY, "server shutting down", send_now=False)
        conn.end_stream(final + b"".join(self._protocol().data_to_send()))


_AUTH_ERRORS = frozenset({"unauthorized", "invalid_token", "forbidden"})
_DATA = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})
_AWAITING_A_FRAME = StreamReader.at_eof.__code__  # what the library's parser waits in between frames


def _open_protocol(app: Services) -> ServerProtocol:
    # (The handshake was our edge's: the protocol starts OPEN, its parser expecting frames.)
    return ServerProtocol(state=State.OPEN, max_size=app.settings.max_message_bytes + 1024)


def _between_frames(protocol: ServerProtocol) -> bool:
    """Whether `protocol` holds nothing a new one would not: open, no fragmented message under
    way, nothing buffered, and its parser waiting for the first byte of a frame. (The parser is
    the library's generator; it waits in `StreamReader.at_eof` only between frames. Should a
    later version differ, this answers False and the protocol is merely kept.)"""
    if protocol.state is not State.OPEN or protocol.current_size is not None or protocol.reader.buffer:
        return False
    waiting: object = protocol.parser  # (generators delegating down to the one that waits)
    while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
        waiting = inner
    return getattr(waiting, "gi_code", None) is _AWAITING_A_FRAME


def _channel_list(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise HttpError(400, "invalid_channel", "channels are a list of names")
    return [validate_channel(name) for name in value]


def subscribe(app: Services, request: Request, conn: HttpConnection, channels: tuple[str, ...]) -> None:
    if not request.http11:  # RFC 6455 4.1: the handshake is an HTTP/1.1 request (1.0 has no Upgrade)
        raise HttpError(400, "bad_handshake", "a WebSocket handshake needs HTTP/1.1", close=True)
    if request.header(b"upgrade").lower() != "websocket":
        raise HttpError(
            426,
            "upgrade_required",
            "this is a WebSocket endpoint: send Upgrade: websocket",
            headers=b"Upgrade: websocket\r\nConnection: Upgrade\r\n",  # RFC 9110 15.5.22: name the protocol
        )
    cursor = params.cursor(params.query(request), "last_id")  # a bad one is a 400, before the upgrade
    # Past --max-channels `Hub.join` refuses; checked here too, so that the refusal is a 507
    # before the upgrade rather than a closed socket after it.
    app.hub.make_room(channels)
    # Our edge has parsed the request already: the library checks it and makes the answer,
    # then a protocol that starts OPEN (its parser expects frames, not a request) takes over.
    headers = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers])
    response = ServerProtocol().accept(WsRequest(request.raw_path, headers))
    if response.status_code != 101:
        detail = response.body.decode("utf-8", "replace").strip() or "bad WebSocket handshake"
        raise HttpError(response.status_code, "bad_handshake", detail, close=True)
    app.keep_credentials(request)  # (after the library has read the handshake's headers)
    session = WebSocketSession(app, conn, request, channels)
    conn.upgrade(response.serialize(), session)
    app.relay.read(conn, channels, cursor, session.start, failing(conn), limit=None)


__all__ = ["WebSocketSession", "subscribe"]
