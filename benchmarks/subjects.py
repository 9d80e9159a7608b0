"""The models the benchmarks run on: random XLM-RoBERTa cross-encoders of known shapes, built offline.

Speed does not depend on weight values, so a subject is a random model of the shape to measure,
built once into ``<models>/<name>`` (every entry point's ``--models``) and rebuilt only when the
builder or the shape changed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from bge_rerank_integrations.testing import FULL_SHAPE, TINY_SHAPE, ModelShape, build_test_model, model_marker

__all__ = ["DEFAULT_MODELS", "SUBJECTS", "Subject", "build_subject"]

log = logging.getLogger("benchmarks")

DEFAULT_MODELS = Path(".models/bench")
"""Where every entry point builds its subjects unless told otherwise (git-ignored)."""


@dataclass(frozen=True)
class Subject:
    """One benchmark model: its name on the command line, its shape, and what it stands for."""

    name: str
    shape: ModelShape
    note: str

    def folder(self, models: Path = DEFAULT_MODELS) -> Path:
        """Where this subject is built under ``models``."""
        return models / self.name

    def build(self, models: Path = DEFAULT_MODELS) -> Path:
        """The subject's folder under ``models``, built unless the same build is already there."""
        return build_subject(self.name, self.folder(models))


SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        Subject("tiny", TINY_SHAPE, "2 layers, hidden 64: the test suite's model (smoke runs)"),
        Subject(
            "small",
            ModelShape(
                num_hidden_layers=6,
                hidden_size=384,
                num_attention_heads=6,
                intermediate_size=1536,
                initializer_range=0.1,
            ),
            "6 layers, hidden 384: the CPU suite's reduced bge-reranker-v2-m3",
        ),
        Subject("full", FULL_SHAPE, "bge-reranker-v2-m3's shape: 24 layers, hidden 1024, vocab 250002"),
    )
}


def build_subject(name: str, folder: Path) -> Path:
    """Build subject ``name`` (a key of :data:`SUBJECTS`) into ``folder``, unless the same build is there."""
    try:
        shape = SUBJECTS[name].shape
    except KeyError:
        raise SystemExit(f"unknown subject {name!r}; choose from {', '.join(SUBJECTS)}") from None
    marker = folder / "bge_test_model.json"
    if marker.exists() and json.loads(marker.read_text()) == model_marker(shape):
        return folder
    t0 = time.perf_counter()
    build_test_model(folder, shape=shape)
    log.info("built subject %s in %s (%.1f s)", name, folder, time.perf_counter() - t0)
    return folder
