"""GET / (the chat page) and GET /static/{file}: the files shipped in tidings/static, read
once at start. Only files that exist there are served; no path is joined from the request."""

from __future__ import annotations

from importlib import resources

from tidings.web.http import HttpConnection

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


class StaticFiles:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bytes]] = {}
        for entry in resources.files("tidings.static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _TYPES:
                self.files["/static/" + entry.name] = (entry.read_bytes(), _TYPES[suffix])
        if "/static/index.html" in self.files:
            self.files["/"] = self.files["/static/index.html"]

    def serve(self, path: str, conn: HttpConnection) -> None:
        """Answer with the file at `path`, one of `files` (the router checks)."""
        body, content_type = self.files[path]
        conn.respond(200, body, content_type)
