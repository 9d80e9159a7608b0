"""Adapters of different frameworks and scoring options load the weights once, and each scores as a
reranker with its options does on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.langchain import BGERerankCompressor
from haystack_integrations.components.rankers.bge_reranker import BGERanker

from .corpus import QUERY, TEXTS
from .test_copy_and_close import IDS, haystack_run, langchain_compress


def test_haystack_and_langchain_adapters_with_different_lengths_share_one_load(
    model_dir: Path, tmp_path: Path, loads: list[str]
) -> None:
    folder = tmp_path / "model"  # a name of its own: no other test's reranker holds these weights
    folder.symlink_to(model_dir, target_is_directory=True)
    expected = {}
    for max_length in (24, 512):
        with Reranker(folder, max_length=max_length) as alone:  # closed: its weights go before the next
            expected[max_length] = dict(zip(IDS, alone.score(QUERY, TEXTS, normalize=True), strict=True))
    assert expected[24] != expected[512]  # the lengths really score differently

    loads.clear()  # count from here: the two rerankers above loaded (and freed) their own
    ranker = BGERanker(model=folder, max_length=24, top_k=len(TEXTS))
    compressor = BGERerankCompressor(model=str(folder), max_length=512, top_n=None)
    ranked = dict(haystack_run(ranker))  # what BM25 retrieved (the documents sharing a query word)
    assert len(ranked) > 2
    assert ranked == pytest.approx({i: expected[24][i] for i in ranked}, abs=1e-5)
    assert dict(langchain_compress(compressor)) == pytest.approx(expected[512], abs=1e-5)
    assert loads == [str(folder)]
    ranker.close()
    assert dict(langchain_compress(compressor)) == pytest.approx(expected[512], abs=1e-5)
