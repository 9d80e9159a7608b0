"""Many concurrent async calls through each adapter: every call gets exactly its own documents back.

Each call carries its own query and documents with unique ids and metadata (some calls empty, some
with a duplicate, some cut by ``top_n``/``top_k``). All run at once through the framework's async
path on one shared core that coalesces them into shared forward passes; each result must be that
call's documents, metadata intact, in the order of the scores the core gives that call alone.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from haystack import Document as HaystackDocument
from langchain_core.documents import Document as LangChainDocument
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.haystack import BGERanker
from bge_rerank_integrations.langchain import BGERerankCompressor
from bge_rerank_integrations.llamaindex import BGERerank

CALLS = 50
POOL = [
    "The giant panda is a bear native to south central China.",
    "Bamboo makes up almost all of a giant panda's diet.",
    "Pandas is a Python library for data analysis.",
    "The Eiffel Tower is in Paris.",
    "Le panda géant vit dans les forêts de bambous du Sichuan.",
    "大熊猫主要以竹子为食。",
    "Berlin is the capital of Germany.",
    "A cross-encoder reads the query and the passage together.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Red pandas are small mammals of the eastern Himalayas.",
    "مرحبا بالعالم، هذا نص تجريبي.",
    "Kale, bamboo shoots and apples: what zoo pandas are fed. 🐼",
]
QUERIES = ["What do giant pandas eat?", "Which city is a capital?", "How does a reranker work?"]
NEAR_TIE = 1e-6
"""Scores closer than this may come out in either order (batched and serial float noise is ~1e-7)."""


@dataclass
class Call:
    """One caller's request: its query, documents (a duplicate included where planned) and top."""

    number: int
    query: str
    ids: list[str]
    texts: list[str]
    metas: list[dict[str, Any]]
    top: int | None
    duplicate: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    """Score of each document id from the core scoring this call alone, filled in by the test."""


def make_calls() -> list[Call]:
    """Fifty requests: every tenth empty, every seventh (from 3) with its first document twice."""
    calls = []
    for c in range(CALLS):
        n = 0 if c % 10 == 0 else 1 + (c * 7) % 9
        ids = [f"call{c}-doc{j}" for j in range(n)]
        texts = [f"{POOL[(c + j) % len(POOL)]} (call {c}, passage {j})" for j in range(n)]
        metas = [
            {"call": c, "doc": j, "title": f"Title {c}.{j}", "flag": False, "zero": 0, "tags": [c, j]}
            for j in range(n)
        ]
        calls.append(
            Call(
                number=c,
                query=f"{QUERIES[c % len(QUERIES)]} (request {c})",
                ids=ids,
                texts=texts,
                metas=metas,
                top=3 if c % 4 == 1 else None,
                duplicate=bool(n) and c % 7 == 3,
            )
        )
    return calls


def expected_order(call: Call, scored_ids: list[str]) -> list[str]:
    """``scored_ids`` best first by the call's serial scores, ties in input order, cut to ``top``."""
    order = sorted(range(len(scored_ids)), key=lambda i: -call.scores[scored_ids[i]])
    return [scored_ids[i] for i in order][: call.top]


def check_call(call: Call, got: list[tuple[str, float, dict[str, Any], str]], want_ids: list[str]) -> None:
    """``got`` (id, score, metadata, text) is ``want_ids``: same documents, same order, own metadata."""
    assert len(got) == len(want_ids), call.number
    meta_of = dict(zip(call.ids, call.metas, strict=True))
    text_of = dict(zip(call.ids, call.texts, strict=True))
    got_ids = [doc_id for doc_id, _, _, _ in got]
    assert all(doc_id in meta_of for doc_id in got_ids), f"call {call.number} got a foreign document"
    assert not Counter(got_ids) - Counter(want_ids), f"call {call.number}: a document was duplicated"
    for position, ((doc_id, score, meta, text), want_id) in enumerate(zip(got, want_ids, strict=True)):
        assert meta == meta_of[doc_id], (call.number, doc_id)
        assert text == text_of[doc_id], (call.number, doc_id)
        assert type(score) is float
        assert score == pytest.approx(call.scores[doc_id], abs=1e-5), (call.number, doc_id)
        if doc_id != want_id:  # only a near tie may swap places
            gap = abs(call.scores[doc_id] - call.scores[want_id])
            assert gap < NEAR_TIE, (call.number, position, doc_id, want_id)


@pytest.fixture(scope="module")
def serial_core(model: str) -> Reranker:
    """An unshared core on the test model, called one request at a time for the expected scores."""
    return Reranker(model)


# Settings of the shared core under test: a batching wait so that concurrent calls coalesce.
SHARED = {"max_batch_tokens": 4096, "batch_wait_ms": 5.0}


@dataclass
class Framework:
    """How to call one adapter's async path and read its output as (id, score, metadata, text)."""

    name: str
    build_inputs: Callable[[Call], list[Any]]
    scored: Callable[[Call, list[Any]], tuple[list[str], list[str]]]
    """(ids, texts) the adapter scores for these inputs, in order (after any de-duplication)."""
    run: Callable[[Call, list[Any]], Awaitable[list[Any]]]
    read: Callable[[Any], tuple[str, float, dict[str, Any], str]]
    dump: Callable[[Any], Any]
    """A deep, comparable snapshot of one input, to prove inputs are not modified."""


# --- one builder per framework: inputs with ids and metadata, its async path, its output read back


def llamaindex_nodes(call: Call) -> list[NodeWithScore]:
    nodes = [
        NodeWithScore(node=TextNode(id_=i, text=t, metadata=copy.deepcopy(m)), score=0.5)
        for i, t, m in zip(call.ids, call.texts, call.metas, strict=True)
    ]
    return [*nodes, nodes[0]] if call.duplicate else nodes


def llamaindex_framework(model: str) -> Framework:
    adapters = {top: BGERerank(model=model, top_n=top, **SHARED) for top in (None, 3)}

    def scored(call: Call, nodes: list[NodeWithScore]) -> tuple[list[str], list[str]]:
        return (
            [n.node.node_id for n in nodes],
            [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes],
        )

    async def run(call: Call, nodes: list[NodeWithScore]) -> list[NodeWithScore]:
        return await adapters[call.top].apostprocess_nodes(nodes, query_str=call.query)

    def read(out: NodeWithScore) -> tuple[str, float, dict[str, Any], str]:
        assert out.score is not None
        return out.node.node_id, out.score, out.node.metadata, out.node.get_content()

    return Framework("llamaindex", llamaindex_nodes, scored, run, read, lambda n: n.model_dump())


def langchain_documents(call: Call) -> list[LangChainDocument]:
    docs = [
        LangChainDocument(page_content=t, id=i, metadata=copy.deepcopy(m))
        for i, t, m in zip(call.ids, call.texts, call.metas, strict=True)
    ]
    return [*docs, docs[0]] if call.duplicate else docs


def langchain_framework(model: str) -> Framework:
    adapters = {top: BGERerankCompressor(model=model, top_n=top, **SHARED) for top in (None, 3)}

    def scored(call: Call, docs: list[LangChainDocument]) -> tuple[list[str], list[str]]:
        return [d.id or "" for d in docs], [d.page_content for d in docs]

    async def run(call: Call, docs: list[LangChainDocument]) -> list[LangChainDocument]:
        return list(await adapters[call.top].acompress_documents(docs, call.query))

    def read(out: LangChainDocument) -> tuple[str, float, dict[str, Any], str]:
        meta = dict(out.metadata)
        score = meta.pop("relevance_score")
        return out.id or "", score, meta, out.page_content

    return Framework("langchain", langchain_documents, scored, run, read, lambda d: d.model_dump())


def haystack_documents(call: Call) -> list[HaystackDocument]:
    docs = [
        HaystackDocument(id=i, content=t, meta=copy.deepcopy(m), score=0.5)
        for i, t, m in zip(call.ids, call.texts, call.metas, strict=True)
    ]
    if call.duplicate:  # same id, lower incoming score: the ranker keeps the first (its meta is checked)
        first = docs[0]
        copy_meta = {**first.meta, "copy": True}
        docs.append(HaystackDocument(id=first.id, content=first.content, meta=copy_meta, score=0.1))
    return docs


def haystack_framework(model: str) -> Framework:
    ranker = BGERanker(model=model, **SHARED)

    def scored(call: Call, docs: list[HaystackDocument]) -> tuple[list[str], list[str]]:
        unique: dict[str, HaystackDocument] = {}
        for doc in docs:
            unique.setdefault(doc.id, doc)  # first-seen order, as the ranker keeps them
        return list(unique), [d.content or "" for d in unique.values()]

    async def run(call: Call, docs: list[HaystackDocument]) -> list[HaystackDocument]:
        top_k = call.top if call.top is not None else 100
        result = await ranker.run_async(query=call.query, documents=docs, top_k=top_k)
        return result["documents"]

    def read(out: HaystackDocument) -> tuple[str, float, dict[str, Any], str]:
        assert out.score is not None
        return out.id, out.score, out.meta, out.content or ""

    return Framework("haystack", haystack_documents, scored, run, read, lambda d: d.to_dict())


FRAMEWORKS = {
    "llamaindex": llamaindex_framework,
    "langchain": langchain_framework,
    "haystack": haystack_framework,
}


async def run_concurrently(frameworks: list[Framework], serial_core: Reranker) -> None:
    """All calls of all ``frameworks`` at once; then check each against the serial expectation."""
    plans = []
    for fw in frameworks:
        for call in make_calls():
            inputs = fw.build_inputs(call)
            ids, texts = fw.scored(call, inputs)
            call.scores = dict(zip(ids, serial_core.score(call.query, texts, normalize=True), strict=True))
            plans.append((fw, call, inputs, [fw.dump(x) for x in inputs], expected_order(call, ids)))

    async def one(plan: tuple[Framework, Call, list[Any], list[Any], list[str]]) -> list[Any]:
        fw, call, inputs, _, _ = plan
        for _ in range(call.number % 3):  # stagger the starts so requests interleave
            await asyncio.sleep(0)
        return await fw.run(call, inputs)

    results = await asyncio.gather(*(one(plan) for plan in plans))
    for (fw, call, inputs, snapshot, want), outputs in zip(plans, results, strict=True):
        check_call(call, [fw.read(out) for out in outputs], want)
        assert [fw.dump(x) for x in inputs] == snapshot, f"{fw.name} changed the inputs of call {call.number}"


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(FRAMEWORKS))
async def test_concurrent_async_calls_each_get_their_own_documents(
    name: str, model: str, serial_core: Reranker
) -> None:
    await run_concurrently([FRAMEWORKS[name](model)], serial_core)


@pytest.mark.asyncio
async def test_all_three_frameworks_at_once_on_one_shared_core(model: str, serial_core: Reranker) -> None:
    frameworks = [build(model) for build in FRAMEWORKS.values()]
    cores = {id(BGERerank(model=model, **SHARED).reranker), id(BGERanker(model=model, **SHARED).reranker)}
    assert len(cores) == 1  # the three adapters really share one core, so their requests mix
    await run_concurrently(frameworks, serial_core)
