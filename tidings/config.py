"""Server settings: one dataclass, filled from command-line flags and TIDINGS_* variables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: str = "1"  # server processes sharing the port: a number, or auto (one per core)
    broker: str = "memory"
    redis_prefix: str = "tidings:"  # Redis pub/sub channels and keys start with this
    redis_subscribe: str = ""  # plain Redis channels or patterns taken in as Tidings channels (comma-separated)
    buffer_size: int = 100  # messages kept per channel
    buffer_ttl: float = 3600.0  # seconds a message stays in the buffer
    max_message_bytes: int = 65536
    poll_timeout: float = 30.0  # default long-poll hold, seconds
    max_poll_timeout: float = 55.0  # longer asks are held this long: under common proxies' 60 s read timeout
    heartbeat: float = 15.0  # seconds between SSE/stream keep-alive comments
    stream_buffer_bytes: int = 1 << 20  # unsent bytes a stream may queue before it is dropped
    request_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_header_count: int = 100
    max_header_bytes: int = 16384
    max_url_bytes: int = 8192
    shutdown_grace: float = 3.0  # seconds to let answers drain at shutdown
    auth_secret: str = ""  # HS256 key: with it (or a public key) every channel needs a token
    auth_public_key: str = ""  # a PEM file with an RS256/ES256 public key
    public_channels: str = ""  # patterns anyone may subscribe to without a token (comma-separated)
    auth_url: str = ""  # the application's endpoint asked before a subscribe/publish no token grants
    auth_url_headers: str = "cookie,authorization"  # the client's headers forwarded to it
    auth_url_ttl: float = 5.0  # seconds a decision is remembered unless the answer says otherwise
    auth_url_timeout: float = 2.0  # seconds to wait for its answer (then 503)
    presence_grace: float = 10.0  # seconds a long-poll client stays present after its poll ended
    cors_origin: str = ""  # origins allowed cross-origin (comma-separated, or *); none by default
    forwarded_allow_ips: str = ""  # reverse proxies whose X-Forwarded-For/-Proto are believed
    max_connections: int = 0  # 0: no limit but the process's file descriptors
    max_subscribers_per_channel: int = 0  # 0: no limit
    max_channels: int = 100_000  # channels held at most (~1 KB each); 0: no limit
    max_buffered_bytes: int = 64 << 20  # bytes buffered messages may hold; 0: no limit
    log_level: str = "info"
    log_format: str = "text"  # text or json (one JSON object per line)
    access_log: bool = False  # one line per answered request
