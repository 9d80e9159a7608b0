"""The public seams benchmarks and tests use instead of private attributes (issue 13):
``LocalBackend(padding_free=...)``, ``Reranker.encode_pairs`` and ``Reranker.stats``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker, RerankerConfig, RerankError
from bge_rerank_integrations.backends.local import LocalBackend

# one long passage among short ones: a padded batch pays the long one's width for every row
PAIRS = [("what is a panda?", "The giant panda is a bear native to China. " * 12)] + [
    ("what is a panda?", word) for word in ("bear", "city", "river", "tree", "a")
]


def test_the_padded_forward_scores_alike_and_computes_the_padding(model_dir: Path) -> None:
    config = RerankerConfig(model=str(model_dir), device="cpu")
    packed, padded = LocalBackend(config), LocalBackend(config, padding_free=False)
    assert padded.score_pairs(PAIRS, config.scoring) == pytest.approx(
        packed.score_pairs(PAIRS, config.scoring), abs=1e-5
    )
    width = max(len(ids) for ids in padded.encode(PAIRS, config.scoring))
    assert padded.stats.computed_tokens == width * len(PAIRS) > packed.stats.computed_tokens
    assert padded.stats.real_tokens == packed.stats.real_tokens


def test_padding_free_true_names_why_a_model_cannot(model_dir: Path, tmp_path: Path) -> None:
    options = RerankerConfig().scoring
    assert LocalBackend(RerankerConfig(model=str(model_dir)), "cpu", padding_free=True).score_pairs(
        PAIRS[:1], options
    )
    other = shutil.copytree(model_dir, tmp_path / "tanh-gelu")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    backend = LocalBackend(RerankerConfig(model=str(other)), "cpu", padding_free=True)
    with pytest.raises(ValueError, match=r"cannot run padding-free: config\.hidden_act is 'gelu_new'"):
        backend.load()
    assert LocalBackend(RerankerConfig(model=str(other)), "cpu").score_pairs(
        PAIRS[:1], options
    )  # padded, as before


def test_int8_refuses_the_padded_forward(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype='int8' runs padding-free only"):
        LocalBackend(RerankerConfig(model=str(model_dir), dtype="int8"), "cpu", padding_free=False)


def test_encode_pairs_gives_the_ids_scored_and_stats_count_them(model_dir: Path) -> None:
    config = RerankerConfig(model=str(model_dir), device="cpu", max_length=32)
    replicas = [LocalBackend(config), LocalBackend(config)]
    rr = Reranker.from_config(config, backends=replicas)
    ids = rr.encode_pairs(PAIRS)
    assert len(ids) == len(PAIRS)
    assert max(map(len, ids)) == 32  # the long passage, truncated at this reranker's max_length
    assert rr.stats.pairs == 0
    rr.score_pairs(PAIRS)
    rr.score_pairs(PAIRS[:2])  # served by whichever replica is free: the totals cover both
    stats = rr.stats
    assert stats.pairs == len(PAIRS) + 2 == sum(b.stats.pairs for b in replicas)
    assert stats.real_tokens == sum(map(len, ids)) + sum(map(len, ids[:2]))
    assert stats.computed_tokens >= stats.real_tokens
    assert rr.encode_pairs([]) == []


def test_encode_pairs_gives_every_window_of_a_long_passage(model_dir: Path) -> None:
    rr = Reranker(model_dir, device="cpu", max_length=32, query_max_length=8, long_passages="window")
    ids = rr.encode_pairs(PAIRS)
    assert len(ids) > len(PAIRS)
    assert all(len(x) <= 32 for x in ids)


def test_encode_pairs_and_stats_are_local_only() -> None:
    rr = Reranker("m", backend="infinity", base_url="http://127.0.0.1:9")  # nothing is sent
    with pytest.raises(RerankError, match="not local replicas"):
        rr.encode_pairs(PAIRS)
    with pytest.raises(RerankError, match="not local replicas"):
        _ = rr.stats
    with pytest.raises(TypeError, match="must be a str"):
        Reranker("m").encode_pairs([("q", 1)])  # type: ignore[list-item]
