"""Fixtures the adapter tests share: the test model as users name it, and a core for expected scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker


@pytest.fixture(scope="session")
def model(model_dir: Path) -> str:
    """The tiny test model's folder, as the string users pass."""
    return str(model_dir)


@pytest.fixture(scope="session")
def core(model: str) -> Reranker:
    """An unshared core reranker on the test model: the source of expected scores."""
    return Reranker(model)


@pytest.fixture
def own_model(own_model_dir: Path) -> str:
    """The test model under a folder of this test's own, as a string: no other test's shared
    reranker (whose engine adapters of any scoring options share) has loaded it."""
    return str(own_model_dir)
