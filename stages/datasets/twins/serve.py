"""A loopback HTTP server for a twin's archives, so twins go through the real download path.

:func:`serve_directory` serves the files under one directory on ``127.0.0.1`` (an ephemeral port)
with single-range ``Range`` support, which is what :func:`stages.io.http.fetch` needs to resume.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

BLOCK = 1 << 20
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The inclusive byte span ``(first, last)`` a ``Range`` header asks for.

    ``None`` means serve the whole file (no header, a malformed one, or several ranges, which a
    server may ignore); ``"unsatisfiable"`` means answer 416.
    """
    m = _RANGE.fullmatch(header or "")
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n and size else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


def _handler_for(root: Path) -> type[BaseHTTPRequestHandler]:
    real_root = Path(os.path.realpath(root))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "landfuse-twin"

        def log_message(self, format: str, *args) -> None:  # quiet: tests and logs need no access log
            pass

        def _resolve(self) -> Path | None:
            """The file the URL names, or None if it is missing or lies outside the root."""
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            path = Path(os.path.realpath(real_root / rel))
            if not path.is_relative_to(real_root) or not path.is_file():
                return None
            return path

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self._resolve()
            if path is None:
                self.send_error(HTTPStatus.NOT_FOUND, "no such file")
                return
            size = path.stat().st_size
            span = parse_range(self.headers.get("Range"), size)
            if span == "unsatisfiable":
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            first, last = span if isinstance(span, tuple) else (0, size - 1)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(span, tuple) else HTTPStatus.OK)
            if isinstance(span, tuple):
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if body:
                self._send_bytes(path, first, last - first + 1)

        def _send_bytes(self, path: Path, offset: int, count: int) -> None:
            with open(path, "rb") as fh, contextlib.suppress(BrokenPipeError, ConnectionResetError):
                fh.seek(offset)
                shutil.copyfileobj(_Limited(fh, count), self.wfile, BLOCK)

    return Handler


class _Limited:
    """A read-only view of at most ``count`` bytes of a file object."""

    def __init__(self, fh, count: int) -> None:
        self.fh, self.left = fh, count

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        self.left -= len(data)
        return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on ``127.0.0.1`` in a daemon thread; yield the base URL ``http://127.0.0.1:<port>``.

    The server is shut down and its socket closed when the block exits.
    """
    server = _Server(("127.0.0.1", 0), _handler_for(Path(root)))
    # A short poll interval makes shutdown() return quickly.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="twin-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
