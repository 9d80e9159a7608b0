"""Pairs for the decoder kinds' tests: realistic, multilingual, and every truncation edge."""

from __future__ import annotations

import itertools
import random

from tests.core.texts import LONG_PASSAGE, LONG_QUERY, PASSAGES, QUERIES

UNUSUAL = [
    "emoji 😀 and a snowman ☃",
    "தமிழ் எழுத்துக்கள்",  # a script outside the toy vocabulary: byte fallback
    "e\u0301 combining accent, \u200b zero width, \u00a0 no-break space",
    "control \x00 and \x1b characters",
    "  spaces   around  ",
    "\n\nnewlines\n",
    "Yes",
]


def all_pairs() -> list[tuple[str, str]]:
    pairs = list(itertools.product(QUERIES, PASSAGES[:4]))
    pairs += [(QUERIES[0], p) for p in PASSAGES[4:]]
    pairs += [(q, p) for q, p in zip(UNUSUAL, [*UNUSUAL[1:], UNUSUAL[0]], strict=True)]
    pairs += [(LONG_QUERY, p) for p in PASSAGES[:3]]
    pairs += [(q, LONG_PASSAGE) for q in QUERIES[:3]]
    pairs += [(LONG_QUERY, LONG_PASSAGE), (LONG_QUERY, ""), ("", "")]
    return pairs


def workload(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of many lengths (passages cut at random points), for batch-invariance checks."""
    rng = random.Random(seed)
    texts = [*PASSAGES, *UNUSUAL, LONG_PASSAGE]
    return [(rng.choice(QUERIES), rng.choice(texts)[: rng.randint(0, 300)]) for _ in range(n)]
