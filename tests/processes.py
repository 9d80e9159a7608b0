"""Run this checkout's code in a child process, and stand-ins for the hub on 127.0.0.1 to point it at."""

from __future__ import annotations

import http.server
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bge_rerank_integrations

SOURCE = Path(bge_rerank_integrations.__file__).resolve().parents[1]
"""The folder the tests import the package from (the checkout's ``src``, or an installed copy)."""

CLI = [sys.executable, "-m", "bge_rerank_integrations"]


def child_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment for a child that imports the same package from any working folder.

    ``overrides`` set variables; a ``None`` value removes one (``{"HF_HUB_OFFLINE": None}``).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"})
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class FakeHub:
    """A web server on 127.0.0.1 standing in for the hub (or a proxy in front of it)."""

    url: str
    requests: list[str] = field(default_factory=list)
    """``"METHOD path"`` of every request it answered, in order."""


@contextmanager
def fake_hub(status: int, headers: Mapping[str, str] | None = None) -> Iterator[FakeHub]:
    """Serve every request (``CONNECT`` too, as a proxy would) with ``status`` and ``headers``."""
    hub = FakeHub(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = do_CONNECT = _reply

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def online_env(hub: FakeHub, cache: Path, *, endpoint: str | None = None) -> dict[str, str]:
    """A child environment with the hub allowed (``HF_HUB_OFFLINE`` removed) but every HTTP request,
    to any host, routed to ``hub`` as its proxy; the hub's address is ``endpoint`` (default ``hub``
    itself) and its cache the empty folder ``cache``. Nothing leaves 127.0.0.1."""
    return child_env(
        {
            "HF_HUB_OFFLINE": None,
            "TRANSFORMERS_OFFLINE": None,
            "NO_PROXY": None,
            "no_proxy": None,
            "HF_ENDPOINT": endpoint or hub.url,
            "HF_HOME": str(cache),
            "HF_HUB_CACHE": str(cache / "hub"),
            **{name: hub.url for name in _PROXY_VARIABLES},
        }
    )
