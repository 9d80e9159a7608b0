"""Shared fixtures: one small random XLM-RoBERTa cross-encoder, built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bge_rerank_integrations.testing import build_test_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny random test model (2 layers, hidden 64, trained multilingual tokenizer)."""
    return build_test_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def own_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """The test model under a folder name of this test's own.

    Loaded weights are shared process-wide per model folder, so a test that counts loads needs a
    name no other test's reranker has loaded.
    """
    own = tmp_path / "own-model"
    own.symlink_to(model_dir, target_is_directory=True)
    return own
