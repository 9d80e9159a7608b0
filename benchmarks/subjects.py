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

from bge_rerank_integrations.testing import (
    FULL_DECODER_SHAPES,
    FULL_SHAPE,
    TINY_DECODER_SHAPES,
    TINY_SHAPE,
    DecoderShape,
    ModelShape,
    build_decoder_test_model,
    build_test_model,
    decoder_model_marker,
    model_marker,
)

__all__ = [
    "DECODER_SUBJECTS",
    "DEFAULT_MODELS",
    "SUBJECTS",
    "DecoderSubject",
    "Subject",
    "build_decoder_subject",
    "build_subject",
]

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


@dataclass(frozen=True)
class DecoderSubject:
    """One decoder-only benchmark model (``benchmarks.family``): its size name, kind and shape."""

    name: str
    kind: str
    shape: DecoderShape
    note: str


# Reduced: a CPU-sized model of each architecture. v2-gemma keeps its LM head's share of the work
# (about a quarter of a token's multiply-adds in Gemma-2B), which the reference computes for
# every position and vocabulary entry: vocabulary 16384 at hidden 512 and 4 layers.
_REDUCED_DECODERS: dict[str, DecoderShape] = {
    "v2-gemma": DecoderShape(
        kind="v2-gemma",
        num_hidden_layers=4,
        hidden_size=512,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=128,
        intermediate_size=4096,
        vocab_size=16384,
        initializer_range=0.02,
    ),
    "v2-minicpm-layerwise": DecoderShape(
        kind="v2-minicpm-layerwise",
        num_hidden_layers=6,
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=1280,
        start_layer=2,
        initializer_range=0.02,
    ),
    "v2.5-gemma2-lightweight": DecoderShape(
        kind="v2.5-gemma2-lightweight",
        num_hidden_layers=6,
        hidden_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=2048,
        vocab_size=16384,
        start_layer=2,
        initializer_range=0.02,
    ),
}

DECODER_SUBJECTS: dict[tuple[str, str], DecoderSubject] = {
    (s.kind, s.name): s
    for shapes, name, note in (
        (TINY_DECODER_SHAPES, "tiny", "the test suite's model of the kind (smoke runs)"),
        (_REDUCED_DECODERS, "small", "the CPU run's reduced model, the real proportions at a CPU's scale"),
        (FULL_DECODER_SHAPES, "full", "the real model's shape"),
    )
    for s in (DecoderSubject(name, kind, shape, note) for kind, shape in shapes.items())
}
"""Every decoder-only subject, by (kind, size name)."""


def build_decoder_subject(kind: str, name: str, models: Path) -> Path:
    """Build decoder subject ``(kind, name)`` into ``models/<kind>-<name>``, unless already built."""
    try:
        shape = DECODER_SUBJECTS[kind, name].shape
    except KeyError:
        raise SystemExit(f"unknown decoder subject {name!r} of {kind!r}") from None
    folder = models / f"{kind}-{name}"
    marker = folder / "bge_test_model.json"
    if marker.is_file() and json.loads(marker.read_text()) == decoder_model_marker(shape):
        return folder
    return build_decoder_test_model(folder, shape=shape)
