"""Fixtures of the remote-backend tests that need the real Infinity server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends.infinity_server import find_executable


@pytest.fixture(scope="session")
def infinity_executable() -> Path:
    """``infinity_emb`` from the venv named by ``BGE_INFINITY_VENV``; skip locally, fail in CI."""
    return find_executable()
