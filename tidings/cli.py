"""The `tidings` command: serve, publish, subscribe."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from tidings import __version__
from tidings.config import Settings

DEFAULT_URL = "http://127.0.0.1:8080"

_HELP = {
    "host": "address to listen on",
    "port": "port to listen on (also PORT)",
    "workers": "server processes sharing the port and, with the memory broker, an embedded sequencer: N or auto",
    "broker": "message bus: memory, redis://host:port/db, zmq://host:port1,port2,port3 or zmq+unix:PATH (zmq-proxy)",
    "redis_prefix": "prefix of the Redis pub/sub channels and keys Tidings uses",
    "redis_subscribe": "plain Redis channels or glob patterns (comma-separated, e.g. messages,news.*) whose "
    "PUBLISHes reach the Tidings channels of the same name",
    "buffer_size": "messages kept per channel",
    "buffer_ttl": "seconds a message stays buffered",
    "max_message_bytes": "largest accepted message body",
    "poll_timeout": "default long-poll hold in seconds",
    "max_poll_timeout": "longest long-poll hold; a longer ?timeout= gets this (keep it under a proxy's read timeout)",
    "heartbeat": "seconds between SSE/stream heartbeats (0: none)",
    "stream_buffer_bytes": "unsent bytes a stream may queue before it is dropped as slow",
    "request_timeout": "seconds a request may take to arrive (slow-header limit)",
    "keepalive_timeout": "seconds an idle keep-alive connection stays open",
    "max_header_count": "most headers a request may have",
    "max_header_bytes": "most bytes of headers a request may have",
    "max_url_bytes": "longest request target",
    "shutdown_grace": "seconds to let final answers drain at shutdown",
    "auth_secret": "HS256 secret: tokens required (see tidings token)",
    "auth_public_key": "PEM file of an RS256/ES256 public key: tokens required",
    "public_channels": "channel patterns readable without a token (comma-separated, e.g. news,room.*)",
    "auth_url": "the application's URL asked (POST) before a subscribe, publish or delete no token grants",
    "auth_url_headers": "the client's headers forwarded to --auth-url (comma-separated)",
    "auth_url_ttl": "seconds an --auth-url decision is remembered, unless its answer gives a ttl",
    "auth_url_timeout": "seconds to wait for --auth-url (then 503, refused)",
    "presence_grace": "seconds a long-poll client counts as present after its poll ended (join/leave)",
    "cors_origin": "origins whose pages may use this server (comma-separated, or *)",
    "forwarded_allow_ips": "proxy addresses/networks whose X-Forwarded-For/-Proto are believed (comma-separated, or *)",
    "max_connections": "open connections at most (beyond: 503 and close; 0: no limit)",
    "max_subscribers_per_channel": "subscribers per channel at most, in this process (beyond: 403; 0: no limit)",
    "max_channels": "channels held at most, in this process (a publish or subscribe creating more: 507; 0: no limit)",
    "max_buffered_bytes": "bytes buffered messages may hold, in this process (a publish beyond: 507; 0: no limit)",
    "log_level": "debug, info, warning or error",
    "log_format": "text or json (one JSON object per line)",
    "access_log": "log one line per answered request",
}


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; each also read from TIDINGS_<NAME>."""
    for f in dataclasses.fields(Settings):
        env = "TIDINGS_" + f.name.upper()
        default = os.environ.get(env)
        if f.name == "port" and default is None:
            default = os.environ.get("PORT")  # the PaaS convention
        if isinstance(f.default, bool):
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_true",
                default=default is not None and default.lower() in ("1", "true", "yes", "on"),
                help=f"{_HELP.get(f.name, '')} (default: off; on with {env}=1)",
            )
            continue
        shown = str(f.default).replace("%", "%%") if f.default != "" else "none"  # argparse %-formats help
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=cast(Callable[[str], Any], type(f.default)),
            # A string default goes through `type` like a flag's value, so a bad TIDINGS_* value
            # is a usage error naming the flag, not a traceback.
            default=default if default is not None else f.default,
            metavar=f.name.upper(),
            help=f"{_HELP.get(f.name, '')} (default: {shown}; env {env})",
        )


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})


class Failure(Exception):
    """A one-line error for the user; the command exits 1."""


def _http_url(url: str) -> str:
    url = url if "://" in url else "http://" + url
    if not url.startswith("http://") or len(url) <= len("http://"):
        raise Failure(f"not an http:// URL: {url}")
    return url.rstrip("/")


class HttpPublisher:
    """Publishes through a server, with `tidings.client`."""

    def __init__(self, url: str, token: str | None = None) -> None:
        from tidings.client import Client

        self.url = _http_url(url)
        self.client = Client(self.url, token=token)

    def publish(self, channel: str, message: str, as_json: bool) -> dict[str, Any]:
        import httpx

        from tidings.client import RequestRefused

        try:
            data = json.loads(message) if as_json else message
        except ValueError as exc:
            raise Failure(f"not JSON: {exc}") from None
        try:
            result = self.client.publish(channel, data)
        except httpx.TransportError as exc:
            raise Failure(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        except RequestRefused as exc:
            raise Failure(str(exc)) from None
        return {"id": result.id, "channel": result.channel, "subscribers": result.subscribers}

    def close(self) -> None:
        self.client.close()


class RedisPublisher:
    """Publishes straight into Redis, through the relay and Redis broker a server uses: the
    same ids, history and errors as a publish through any server on that Redis (no server
    needed; publishing needs no subscription, so the broker is never started)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tidings.brokers import REDIS_SCHEMES, NumberingBus, create_broker
        from tidings.relay import Relay

        settings = Settings(
            broker=args.redis,
            redis_prefix=args.redis_prefix,
            buffer_size=args.buffer_size,
            buffer_ttl=args.buffer_ttl,
        )
        if not args.redis.startswith(REDIS_SCHEMES):
            raise Failure(f"--redis takes a Redis URL (redis://host:port/db), not {args.redis!r}")
        try:
            broker = create_broker(settings)
        except ValueError as exc:
            raise Failure(str(exc)) from None
        assert isinstance(broker, NumberingBus)  # (a Redis URL makes a RedisBroker)
        self.broker = broker
        self.runner = asyncio.Runner()
        self.relay = Relay(broker, self.runner.get_loop())

    def publish(self, channel: str, message: str, as_json: bool) -> dict[str, Any]:
        from tidings.errors import TidingsError
        from tidings.hub import validate_channel

        try:
            data = json.loads(message) if as_json else message
            validate_channel(channel)
            result = self.runner.run(self.relay.publish_and_wait(channel, data))
        except (ValueError, TidingsError) as exc:  # not JSON, a bad channel name, Redis away
            raise Failure(str(exc)) from None
        return {"id": str(result.id), "channel": channel, "subscribers": result.subscribers}

    def close(self) -> None:
        self.runner.run(self.broker.close())
        self.runner.close()


def cmd_publish(args: argparse.Namespace) -> int:
    publisher = RedisPublisher(args) if args.redis else HttpPublisher(args.url, args.token)
    try:
        return _publish_loop(args, publisher.publish)
    finally:
        publisher.close()


def _publish_loop(args: argparse.Namespace, publish: Callable[[str, str, bool], dict[str, Any]]) -> int:
    if args.message is not None:
        print(json.dumps(publish(args.channel, args.message, args.json)))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        if interactive and line.strip() == "quit":
            return 0
        result = publish(args.channel, line, args.json)
        if interactive:
            print(f"published {result['id']} to {result['subscribers']} subscriber(s)")


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Print each message as a JSON line; `tidings.client` keeps the cursor across reconnects."""
    import logging

    from tidings.client import ChannelDeleted, Client, RequestRefused

    # The client reports reconnects and gaps through logging: one line each on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tidings: %(message)s"))
    client_log = logging.getLogger("tidings.client")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)

    def gap(channels: list[str]) -> None:
        print(f"tidings: gap: messages on {', '.join(channels)} are no longer buffered", file=sys.stderr, flush=True)

    with Client(_http_url(args.url), timeout=10.0, token=args.token) as client:
        channels = [name for name in args.channels.split(",") if name]
        try:
            for message in client.subscribe(
                *channels, last_id=args.last_id, transport=args.transport, poll_timeout=args.timeout, on_gap=gap
            ):
                line = {"id": message.id, "channel": message.channel, "data": message.data, "time": message.time}
                print(json.dumps(line, ensure_ascii=False), flush=True)
        except ChannelDeleted as exc:
            print(f"tidings: {exc}", file=sys.stderr)
            return 0
        except RequestRefused as exc:
            raise Failure(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="Real-time publish/subscribe push server.")
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    _add_serve_flags(serve)

    url_help = f"server URL (default {DEFAULT_URL}; env TIDINGS_URL)"
    url_default = os.environ.get("TIDINGS_URL", DEFAULT_URL)
    publish = commands.add_parser("publish", help="publish a message, or each line typed or piped")
    publish.add_argument("channel")
    publish.add_argument("message", nargs="?", help="without it: read lines (a typed 'quit' ends)")
    publish.add_argument("--url", default=url_default, help=url_help)
    publish.add_argument("--json", action="store_true", help="send the message as JSON, not text")
    publish.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"), help="for servers that require tokens")
    publish.add_argument("--redis", metavar="URL", help="publish straight into this Redis instead of through a server")
    defaults = Settings()
    publish.add_argument("--redis-prefix", default=defaults.redis_prefix, help="with --redis: the servers' prefix")
    publish.add_argument("--buffer-size", type=int, default=defaults.buffer_size, help="with --redis: history kept")
    publish.add_argument("--buffer-ttl", type=float, default=defaults.buffer_ttl, help="with --redis: history TTL (s)")

    subscribe = commands.add_parser("subscribe", help="print each message as a JSON line")
    subscribe.add_argument("channels", help="one channel or several, comma-separated")
    subscribe.add_argument("--url", default=url_default, help=url_help)
    subscribe.add_argument("--last-id", help="resume after this cursor ('oldest': the whole buffer)")
    subscribe.add_argument("--timeout", type=float, default=30.0, help="long-poll hold in seconds")
    subscribe.add_argument("--transport", choices=("longpoll", "sse", "ws"), default="longpoll")
    subscribe.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"), help="for servers that require tokens")
    token = commands.add_parser("token", help="mint a token for a server started with --auth-secret")
    token.add_argument("--secret", help="the server's --auth-secret (HS256)")
    token.add_argument("--private-key", help="a PEM private key instead (with --algorithm RS256 or ES256)")
    token.add_argument("--algorithm", default="HS256", choices=("HS256", "RS256", "ES256"))
    token.add_argument("--publish", action="append", default=[], help="a channel pattern it may publish to")
    token.add_argument("--subscribe", action="append", default=[], help="a channel pattern it may subscribe to")
    token.add_argument("--ttl", default="1h", help="lifetime: seconds, or with s, m, h, d (default 1h)")

    proxy = commands.add_parser(
        "zmq-proxy", help="run the ZeroMQ sequencer that --broker zmq:// processes share (ids, history, fan-out)"
    )
    proxy.add_argument("--frontend", default="tcp://127.0.0.1:5560", help="where ZeroMQ PUB programs publish (XSUB)")
    proxy.add_argument("--backend", default="tcp://127.0.0.1:5561", help="where Tidings processes receive (XPUB)")
    proxy.add_argument("--requests", default="tcp://127.0.0.1:5562", help="where Tidings processes ask (ROUTER)")
    proxy.add_argument(
        "--local",
        metavar="PATH",
        help="also a Unix socket, for Tidings processes on this machine (--broker zmq+unix:PATH)",
    )
    proxy.add_argument("--buffer-size", type=int, default=defaults.buffer_size, help="messages kept per channel")
    proxy.add_argument("--buffer-ttl", type=float, default=defaults.buffer_ttl, help="seconds a message is kept")
    proxy.add_argument("--max-channels", type=int, default=defaults.max_channels, help="channels kept at most")
    proxy.add_argument(
        "--max-buffered-bytes", type=int, default=defaults.max_buffered_bytes, help="bytes kept messages may hold"
    )
    return parser


def cmd_token(args: argparse.Namespace) -> int:
    from tidings.auth import mint

    if bool(args.secret) == bool(args.private_key):
        raise Failure("give either --secret or --private-key")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = args.ttl.strip()
    try:
        ttl = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise Failure(f"not a lifetime: {args.ttl!r} (e.g. 3600, 30m, 1h, 7d)") from None
    key = args.secret or Path(args.private_key).read_text()
    algorithm = "HS256" if args.secret else args.algorithm
    print(mint(key, args.publish, args.subscribe, ttl, algorithm))
    return 0


def cmd_zmq_proxy(args: argparse.Namespace) -> int:
    """The sequencer (tidings/sequencer.py), until the process is stopped."""
    import zmq

    from tidings.hub import Hub, wall_clock_ms
    from tidings.sequencer import Sequencer

    try:
        hub = Hub(
            buffer_size=args.buffer_size,
            buffer_ttl=args.buffer_ttl,
            now_ms=wall_clock_ms(),
            max_channels=args.max_channels,
            max_buffered_bytes=args.max_buffered_bytes,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None

    async def serve() -> None:
        from tidings import child

        sequencer = Sequencer(hub, args.requests, args.backend, args.frontend, args.local)
        running = asyncio.current_task()
        assert running is not None
        try:
            try:
                sequencer.bind()
            except (zmq.ZMQError, OSError) as exc:
                raise Failure(f"cannot bind: {exc}") from None
            child.watch_lifeline(asyncio.get_running_loop(), running.cancel)
            child.tell_ready()
            print(
                f"tidings zmq-proxy: requests <- {args.requests}, messages -> {args.backend}, "
                f"ZeroMQ publishers -> {args.frontend}{f', local processes <-> {args.local}' if args.local else ''} "
                f"(epoch {hub.floor})",
                file=sys.stderr,
                flush=True,
            )
            await sequencer.run()
        finally:
            sequencer.close()

    from tidings.server import run_loop

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run_loop(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from tidings.server import StartupError, run
            from tidings.workers import run_workers

            settings = _settings(args)
            try:
                if settings.workers == "1":
                    run(settings)
                else:
                    run_workers(settings)
            except (ValueError, StartupError) as exc:  # a setting that makes no sense, a port taken
                raise Failure(str(exc)) from None
            return 0
        if args.command == "publish":
            return cmd_publish(args)
        if args.command == "zmq-proxy":
            return cmd_zmq_proxy(args)
        if args.command == "token":
            return cmd_token(args)
        return cmd_subscribe(args)
    except Failure as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
