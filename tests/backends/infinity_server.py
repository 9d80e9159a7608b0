"""A real Infinity (infinity-emb) server on 127.0.0.1 for the remote-backend tests: started from the venv
named by ``BGE_INFINITY_VENV``, and stopped, killed, restarted, frozen and thawed on demand.

Infinity pins old libraries, so it lives in a venv of its own: ``eval "$(.ci/infinity.sh)"`` creates
one and exports ``BGE_INFINITY_VENV``. Without it the tests that need it are skipped locally and fail
in CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

VENV_VARIABLE = "BGE_INFINITY_VENV"
READY_WITHIN_S = 180.0  # about 10 s on an idle machine; CI runners are shared


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set to anything but a false value)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_executable() -> Path:
    """``infinity_emb`` from the venv named by ``BGE_INFINITY_VENV``; skip locally, fail in CI."""
    venv = os.environ.get(VENV_VARIABLE)
    if not venv:
        message = (
            f'{VENV_VARIABLE} is not set: run `eval "$(.ci/infinity.sh)"` to install Infinity in its own '
            "venv and export it, so the remote backend is tested against a real serving engine"
        )
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    executable = Path(venv) / "bin" / "infinity_emb"
    if not executable.is_file():
        pytest.fail(
            f"{VENV_VARIABLE}={venv} has no bin/infinity_emb: rerun .ci/infinity.sh {venv}", pytrace=False
        )
    return executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class InfinityServer:
    """One Infinity process serving ``model_dir`` on ``127.0.0.1:port``, in a process group of its own.

    The port stays the same across :meth:`kill` and :meth:`start`, so a client keeps its ``base_url``.
    """

    def __init__(
        self, executable: Path, model_dir: Path, log_path: Path, *, api_key: str | None = None
    ) -> None:
        """Store how to start it; nothing runs before :meth:`start`."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._command = [
            str(executable),
            "v2",
            "--model-id",
            str(model_dir),
            "--device",
            "cpu",
            "--engine",
            "torch",
            "--host",
            "127.0.0.1",  # it binds to 0.0.0.0 unless told otherwise
            "--port",
            str(self.port),
        ]
        if api_key is not None:
            self._command += ["--api-key", api_key]
        self._process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output (all starts append to one log)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        """Start the server and return once ``/health`` answers 200."""
        assert self._process is None or self._process.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            if self._process.poll() is not None:
                pytest.fail(
                    f"Infinity exited with {self._process.returncode}:\n{self.log_tail()}", pytrace=False
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Infinity not ready within {READY_WITHIN_S:g} s:\n{self.log_tail()}", pytrace=False
                )
            time.sleep(0.25)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections and requests, nothing answers them."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash: connections in flight are reset, the port is free once it returns."""
        self._signal(signal.SIGKILL)
        if self._process is not None:
            self._process.wait(timeout=30.0)

    def stop(self) -> None:
        """Stop the server: politely, then by force, with bounded waits (a frozen one is thawed first)."""
        self.thaw()
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            if self._process is None or self._process.poll() is not None:
                return
            self._signal(sig)
            try:
                self._process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
