"""Every adapter copies, pickles and closes as its framework's users expect, in the real frameworks.

Copies (``copy.deepcopy``, ``pickle``: multiprocessing, joblib, Ray, caches; ``copy``/``model_copy``)
carry the settings and find their process's shared model on first use, loading nothing before; an
adapter on an unshared reranker copies to one on an equivalent new reranker. ``close()`` (Haystack's
``Pipeline.close()``) lets go of the shared model without breaking the others that hold it, and an
adapter nobody references returns its own reranker's threads and memory.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import itertools
import multiprocessing
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from haystack import Document as HaystackDocument
from haystack import Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.langchain import BGECrossEncoder, BGERerankCompressor
from bge_rerank_integrations.llamaindex import BGERerank
from haystack_integrations.components.rankers.bge_reranker import BGERanker
from tests.resources import memory_bound, rss_bytes, still_running

from .corpus import QUERY, TEXTS

IDS = [f"doc-{i}" for i in range(len(TEXTS))]
Ranked = list[tuple[str, float]]

_distinct = itertools.count(1)


def own_settings() -> dict[str, Any]:
    """Settings no other test uses (so a shared model of their own), scoring like the defaults."""
    return {"batch_wait_ms": next(_distinct) / 1000}


# --- each adapter in its framework's pipeline ---------------------------------------------------


def llamaindex_query(adapter: Any) -> Ranked:
    """A real VectorStoreIndex query engine (mock embeddings and LLM) with ``adapter`` as postprocessor."""
    documents = [LlamaDocument(text=t, id_=i) for t, i in zip(TEXTS, IDS, strict=True)]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[adapter])
    return [(n.node.ref_doc_id or "", float(n.score or 0.0)) for n in engine.query(QUERY).source_nodes]


def _langchain_retriever(compressor: Any) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore.from_texts(TEXTS, DeterministicFakeEmbedding(size=16), ids=IDS)
    return ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": len(TEXTS)})
    )


def langchain_compress(adapter: Any) -> Ranked:
    """A real ContextualCompressionRetriever with ``adapter`` as its compressor."""
    return [(d.id or "", d.metadata["relevance_score"]) for d in _langchain_retriever(adapter).invoke(QUERY)]


def langchain_cross_encode(adapter: Any) -> Ranked:
    """CrossEncoderReranker on ``adapter`` in a real retriever: its order, with the encoder's scores."""
    docs = _langchain_retriever(CrossEncoderReranker(model=adapter, top_n=len(TEXTS))).invoke(QUERY)
    scores = dict(zip(TEXTS, adapter.score([(QUERY, t) for t in TEXTS]), strict=True))
    return [(d.id or "", scores[d.page_content]) for d in docs]


def _haystack_pipeline(ranker: BGERanker) -> tuple[Pipeline, Callable[[], Ranked]]:
    store = InMemoryDocumentStore()
    store.write_documents([HaystackDocument(id=i, content=t) for t, i in zip(TEXTS, IDS, strict=True)])
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(TEXTS)))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")

    def run() -> Ranked:
        out = pipe.run({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})
        return [(d.id, float(d.score or 0.0)) for d in out["ranker"]["documents"]]

    return pipe, run


def haystack_run(adapter: Any) -> Ranked:
    """A real Haystack pipeline: in-memory BM25 retriever, then ``adapter``, removed again afterwards.

    Removed, because a component in a pipeline refers to it, so it can join no other pipeline, and
    copying it would copy the pipeline (whose in-memory document store cannot be copied).
    """
    pipe, run = _haystack_pipeline(adapter)
    try:
        return run()
    finally:
        pipe.remove_component("ranker")


ADAPTERS: dict[str, tuple[Callable[..., Any], Callable[[Any], Ranked]]] = {
    "BGERerank": (lambda **kw: BGERerank(top_n=None, **kw), llamaindex_query),
    "BGERerankCompressor": (lambda **kw: BGERerankCompressor(top_n=None, **kw), langchain_compress),
    "BGECrossEncoder": (lambda **kw: BGECrossEncoder(**kw), langchain_cross_encode),
    "BGERanker": (lambda **kw: BGERanker(top_k=len(TEXTS), **kw), haystack_run),
}

COPIES: dict[str, Callable[[Any], Any]] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda adapter: pickle.loads(pickle.dumps(adapter)),
    "copy": copy.copy,
}


def check_same(got: Ranked, want: Ranked) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


# --- copies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("used", [False, True], ids=["new", "used"])
@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_a_copy_carries_the_settings_and_loads_nothing(model: str, name: str, how: str, used: bool) -> None:
    build, use = ADAPTERS[name]
    original = build(model=model, **own_settings())
    if used:
        use(original)  # the model loaded (for Haystack: warmed up by Pipeline.run)
    copied = COPIES[how](original)
    assert type(copied) is type(original)
    assert copied is not original
    core = copied.reranker  # found now, not while copying: nothing loads
    assert core is original.reranker  # this process's shared model for the settings
    assert core.is_loaded is used
    check_same(use(copied), use(original))


@pytest.mark.parametrize("name", ["BGERerank", "BGERerankCompressor", "BGECrossEncoder"])
def test_model_copy_takes_its_own_hold_on_the_shared_model(model: str, name: str) -> None:
    build, use = ADAPTERS[name]
    original = build(model=model, **own_settings())
    want = use(original)
    copied = original.model_copy()
    check_same(use(copied), want)
    core = original.reranker
    assert copied.reranker is core
    copied.close()  # gives back the copy's own hold
    assert not core.is_closed  # the original's remains
    check_same(use(original), want)
    original.close()
    assert core.is_closed


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", list(ADAPTERS))
def test_an_adapter_on_an_unshared_reranker_copies_to_one_on_an_equivalent_new_reranker(
    model: str, name: str, how: str
) -> None:
    build, use = ADAPTERS[name]
    mine = Reranker(model)
    original = build(reranker=mine)
    use(original)
    copied = COPIES[how](original)
    assert copied.reranker is not mine
    assert copied.reranker.config == mine.config
    assert copied.reranker is not Reranker.shared_from_config(mine.config)  # unshared, like the original's
    assert not copied.reranker.is_loaded
    assert copy.copy(original).reranker is mine  # a shallow copy keeps the very reranker
    check_same(use(copied), use(original))


# --- in another process --------------------------------------------------------------------------


def _use_in_child(name: str, adapter: Any) -> tuple[bool, Ranked]:
    """In a fresh process: whether unpickling loaded anything, and what the adapter ranks."""
    loaded = adapter.reranker.is_loaded
    return loaded, ADAPTERS[name][1](adapter)


def test_pickled_adapters_rank_the_same_in_a_spawned_process(model: str) -> None:
    originals = {name: build(model=model, **own_settings()) for name, (build, _) in ADAPTERS.items()}
    originals["BGERanker on its own reranker"] = BGERanker(top_k=len(TEXTS), reranker=Reranker(model))
    wanted = {name: ADAPTERS[name.split()[0]][1](adapter) for name, adapter in originals.items()}
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = {
            name: pool.submit(_use_in_child, name.split()[0], adapter).result(timeout=600)
            for name, adapter in originals.items()
        }
    for name, (loaded, ranked) in got.items():
        assert not loaded, f"{name}: unpickling loaded the model"
        check_same(ranked, wanted[name])


# --- close ---------------------------------------------------------------------------------------


def test_pipeline_close_lets_go_of_the_model_without_breaking_its_other_holders(model: str) -> None:
    settings = own_settings()
    pipe, run = _haystack_pipeline(BGERanker(model=model, top_k=len(TEXTS), **settings))
    compressor = BGERerankCompressor(model=model, top_n=None, **settings)  # the same shared model
    want_pipe, want_compressor = run(), langchain_compress(compressor)
    core = compressor.reranker
    assert pipe.get_component("ranker").reranker is core
    pipe.close()  # Haystack calls BGERanker.close()
    assert core.is_loaded  # the compressor still holds it
    check_same(langchain_compress(compressor), want_compressor)
    check_same(run(), want_pipe)  # warm_up takes the model again
    pipe.close()
    compressor.close()  # the last holder
    assert core.is_closed
    assert not core.is_loaded
    check_same(run(), want_pipe)  # a new shared model, loaded on warm-up
    pipe.close()


def test_async_pipeline_close_calls_close_async(model: str) -> None:
    ranker = BGERanker(model=model, top_k=len(TEXTS), **own_settings())
    pipe, run = _haystack_pipeline(ranker)
    want = run()

    async def main() -> Ranked:
        out = await pipe.run_async({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})
        await pipe.close_async()
        return [(d.id, float(d.score or 0.0)) for d in out["ranker"]["documents"]]

    core = ranker.reranker
    pipe.close()  # the hold the sync run took
    check_same(asyncio.run(main()), want)
    assert core.is_closed  # close_async gave back the only hold left
    assert not core.is_loaded


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_close_leaves_a_given_reranker_alone_and_the_adapter_usable(model: str, name: str) -> None:
    build, use = ADAPTERS[name]
    mine = Reranker(model)
    adapter = build(reranker=mine)
    want = use(adapter)
    adapter.close()
    assert mine.is_loaded  # yours to close
    assert not mine.is_closed
    check_same(use(adapter), want)
    shared = build(model=model, **own_settings())
    check_same(use(shared), want)
    core = shared.reranker
    shared.close()  # its only holder: the model unloads
    assert core.is_closed
    check_same(use(shared), want)  # and the adapter takes a new one on its next call
    shared.close()
    mine.close()


# --- without close() -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["BGERerank", "BGERerankCompressor", "BGERanker"])
def test_thirty_dropped_adapters_on_their_own_rerankers_return_threads_and_memory(
    model: str, model_dir: Path, name: str
) -> None:
    build, use = ADAPTERS[name]
    use(build(reranker=Reranker(model)))  # warm-up: imports, allocator pools
    gc.collect()
    threads, rss = set(threading.enumerate()), rss_bytes()
    for _ in range(30):
        use(build(reranker=Reranker(model)))
    gc.collect()
    assert not still_running(set(threading.enumerate()) - threads)
    assert rss_bytes() - rss < memory_bound(model_dir)
