"""Tiny random decoder-only rerankers of each kind, built offline once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_rerank_integrations.testing import TINY_DECODER_SHAPES, build_decoder_test_model


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of the tiny random model of each decoder kind, by kind name."""
    root = tmp_path_factory.mktemp("decoders")
    return {
        kind: build_decoder_test_model(root / kind, shape=shape)
        for kind, shape in TINY_DECODER_SHAPES.items()
    }
