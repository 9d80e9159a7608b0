"""A tiny text-embeddings-inference server on 127.0.0.1 that counts the connections open to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def tei_logit(query: str, text: str) -> float:
    """The score the server gives a pair: a function of the texts, so a mix-up would show."""
    return len(query) - len(text) / 10


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.changed = threading.Condition()
        self.open_connections = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_open(self, count: int, timeout: float = 30) -> bool:
        """Whether exactly ``count`` connections are open, waiting up to ``timeout`` for it."""
        with self.changed:
            return self.changed.wait_for(lambda: self.open_connections == count, timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection stays open until the client closes it
    server: _Server

    def handle(self) -> None:
        with self.server.changed:
            self.server.open_connections += 1
            self.server.connections += 1
            self.server.changed.notify_all()
        try:
            super().handle()
        finally:
            with self.server.changed:
                self.server.open_connections -= 1
                self.server.changed.notify_all()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = [{"index": i, "score": tei_logit(body["query"], t)} for i, t in enumerate(body["texts"])]
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def tei_server() -> Iterator[_Server]:
    """A running loopback TEI server, shut down afterwards."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, name="loopback-tei", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
