"""Shared fixtures for the dataset tests: a local file server (loopback only) with HTTP Range and
Basic-auth support, so the real download code runs without network. It answers as S3, PhysioNet
and Dataverse do: 206 with ``Content-Range: bytes a-b/N``, 416 with ``Content-Range: bytes */N``
for a range past the end, 401 for missing credentials, and (``refuse``) 403 for everything."""

import base64
import functools
import http.server
import threading
from pathlib import Path

import pytest


class _Handler(http.server.SimpleHTTPRequestHandler):
    credentials: tuple[str, str] | None = None
    refuse: int | None = None  # answer every request with this status (e.g. 403 from an S3 bucket)
    bare_416: bool = False  # a 416 without Content-Range, as some servers send

    def log_message(self, *args):  # keep test output quiet
        pass

    def _authorised(self) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        return self.headers.get("Authorization") == expected

    def do_GET(self):
        if self.refuse is not None:
            self.send_response(self.refuse)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self._authorised():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.end_headers()
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                if not self.bare_416:
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def file_server(tmp_path):
    """Returns serve(directory, credentials=None, refuse=None, bare_416=False) -> base URL
    "http://127.0.0.1:<port>"; stopped after the test."""
    servers = []

    def serve(
        directory: Path, credentials: tuple[str, str] | None = None, refuse: int | None = None, bare_416: bool = False
    ) -> str:
        handler = type("Handler", (_Handler,), {"credentials": credentials, "refuse": refuse, "bare_416": bare_416})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
