"""Stand-ins for the in-process tests of the HTTP edge and the stream engine."""

from __future__ import annotations


class RecordingTransport:
    """What `HttpConnection` uses of an asyncio transport, keeping what is written."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def take(self) -> bytes:
        """What was written since the last call."""
        data, self.written = self.written, b""
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.7", 40000) if name == "peername" else None
