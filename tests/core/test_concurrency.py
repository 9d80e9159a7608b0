"""Many threads on one shared reranker get exactly what sequential calls get."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker

from .texts import LONG_PASSAGE, PASSAGES, QUERIES


def test_threads_sharing_one_instance_match_sequential_calls(model_dir: Path) -> None:
    rng = random.Random(7)
    requests = [
        (rng.choice(QUERIES), [rng.choice([*PASSAGES, LONG_PASSAGE]) for _ in range(rng.randint(0, 12))])
        for _ in range(48)
    ]
    reranker = Reranker(model_dir, device="cpu", max_length=256, max_batch_tokens=2048)
    # The first calls race the lazy load too.
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda r: reranker.score(*r), requests))
    sequential = [reranker.score(*r) for r in requests]
    assert len(concurrent) == len(sequential)
    for got, want in zip(concurrent, sequential, strict=True):
        assert got == pytest.approx(want, abs=1e-5, rel=1e-5)
