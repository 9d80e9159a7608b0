"""Shared fixtures: one small random XLM-RoBERTa cross-encoder, built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bge_rerank_integrations.testing import build_test_model


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--bench-full``: also run the tests marked ``bench_full`` (CI runs them without it)."""
    parser.addoption(
        "--bench-full",
        action="store_true",
        help="run the bench_full tests too (the default where the CI variable is set)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the ``bench_full`` benchmark tests unless ``--bench-full`` or in CI (``CI`` set, as
    ``.ci/run`` does): the same ``pytest`` command runs everything in CI and a fast subset locally."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if ci or config.getoption("--bench-full"):
        return
    left_out = [item for item in items if item.get_closest_marker("bench_full") is not None]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item.get_closest_marker("bench_full") is None]


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


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model folders ``AutoModelForSequenceClassification.from_pretrained`` loads, in order."""
    import transformers

    seen: list[str] = []
    original = transformers.AutoModelForSequenceClassification.from_pretrained

    def counting(model: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(model))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", counting)
    return seen
