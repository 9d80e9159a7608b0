"""The LlamaIndex adapter end to end: a real VectorStoreIndex query engine, and postprocess_nodes directly."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import transformers
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field, ValidationError

from bge_rerank_integrations import ModelLoadError, Reranker
from bge_rerank_integrations.llamaindex import BGERerank

from .corpus import QUERY, TEXTS
from .recording import RecordingReranker

ROOT = Path(__file__).resolve().parents[2]
IDS = [f"node-{i}" for i in range(len(TEXTS))]


# ---------------------------------------------------------------- helpers and fixtures


@pytest.fixture
def fresh_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty process-wide reranker cache for one test, so loading can be observed from the start."""
    monkeypatch.setattr(Reranker, "_shared", {})


def make_nodes() -> list[NodeWithScore]:
    """Retrieved nodes with ids, metadata (one of it hidden from embedding) and retrieval scores."""
    return [
        NodeWithScore(
            node=TextNode(
                id_=IDS[i],
                text=text,
                metadata={"title": f"Title {i}", "page": i, "secret": "x"},
                excluded_embed_metadata_keys=["secret"],
            ),
            score=1.0 - i / 10,
        )
        for i, text in enumerate(TEXTS)
    ]


def embed_texts(nodes: Sequence[NodeWithScore]) -> list[str]:
    """What LlamaIndex embeds for each node: the text a reranker should score by default."""
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def expected(core: Reranker, texts: Sequence[str], *, normalize: bool = True) -> list[tuple[int, float]]:
    """(input index, score) best first, from the core's scores in input order (stable on ties)."""
    scores = core.score(QUERY, texts, normalize=normalize)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(i, scores[i]) for i in order]


def check_result(
    result: Sequence[NodeWithScore],
    nodes: Sequence[NodeWithScore],
    want: Sequence[tuple[int, float]],
) -> None:
    """``result`` is ``nodes`` in the ``want`` order, new wrappers, ids/text/metadata kept, float scores."""
    assert [r.node.node_id for r in result] == [nodes[i].node.node_id for i, _ in want]
    for out, (i, score) in zip(result, want, strict=True):
        assert out is not nodes[i]
        assert type(out.score) is float
        assert out.score == pytest.approx(score, rel=1e-6, abs=1e-7)
        assert out.node.get_content() == nodes[i].node.get_content()
        assert out.node.metadata == nodes[i].node.metadata


class EventLog(BaseEventHandler):
    """Instrumentation handler recording the rerank events it sees."""

    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Keep rerank events only (a query engine emits many others)."""
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append(event)


class CallbackLog(BaseCallbackHandler):
    """Callback handler recording RERANKING starts and ends with their payloads."""

    def __init__(self) -> None:
        """Listen to every event type."""
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        """Record a RERANKING start."""
        if event_type is CBEventType.RERANKING:
            self.calls.append(("start", dict(payload or {})))
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        """Record a RERANKING end."""
        if event_type is CBEventType.RERANKING:
            self.calls.append(("end", dict(payload or {})))

    def start_trace(self, trace_id: str | None = None) -> None:
        """Traces are not recorded."""

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        """Traces are not recorded."""


@pytest.fixture
def event_log() -> Iterator[EventLog]:
    """An instrumentation handler on the root dispatcher for the duration of one test."""
    root = get_dispatcher()
    log = EventLog()
    root.add_event_handler(log)
    try:
        yield log
    finally:
        root.event_handlers.remove(log)


def check_balanced(log: EventLog, callbacks: CallbackLog, result: Sequence[NodeWithScore] | None) -> None:
    """One start and one end of each kind; the ends carry ``result`` (``None``: an error, no nodes)."""
    assert [type(e) for e in log.events] == [ReRankStartEvent, ReRankEndEvent]
    assert [kind for kind, _ in callbacks.calls] == ["start", "end"]
    end = log.events[1]
    assert isinstance(end, ReRankEndEvent)
    if result is None:
        assert end.nodes == []
        assert isinstance(callbacks.calls[1][1][EventPayload.EXCEPTION], Exception)
    else:
        assert end.nodes == list(result)
        assert callbacks.calls[1][1][EventPayload.NODES] == list(result)


# ---------------------------------------------------------------- construction


def test_is_a_node_postprocessor_named_bgererank(model: str) -> None:
    rerank = BGERerank(model=model)
    assert isinstance(rerank, BaseNodePostprocessor)
    assert BGERerank.class_name() == "BGERerank"
    assert rerank.to_dict()["class_name"] == "BGERerank"


def test_construction_loads_nothing(own_model: str, fresh_shared: None) -> None:
    rerank = BGERerank(model=own_model, top_n=3)
    assert rerank.reranker.is_loaded is False


def test_defaults_are_the_cores_and_documented(model: str) -> None:
    rerank = BGERerank(model=model)
    assert rerank.top_n == 5
    assert rerank.normalize is True
    assert rerank.keep_retrieval_score is False
    assert rerank.metadata_mode is MetadataMode.EMBED
    assert (rerank.max_length, rerank.query_max_length, rerank.max_batch_tokens) == (512, 384, 16384)
    assert (rerank.device, rerank.dtype) == (None, "auto")
    assert rerank.reranker.config == Reranker(model).config
    assert BGERerank().model == "BAAI/bge-reranker-v2-m3"  # lazy: the Hub is never reached here


def test_same_settings_share_one_loaded_model(
    own_model_dir: Path, fresh_shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(own_model_dir)  # a folder of its own: no other test loaded these weights
    loads: list[Any] = []
    real = transformers.AutoModelForSequenceClassification.from_pretrained

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(
        transformers.AutoModelForSequenceClassification, "from_pretrained", staticmethod(counting)
    )
    first = BGERerank(model=model, top_n=2)
    second = BGERerank(model=model, top_n=4, normalize=False, keep_retrieval_score=True)
    assert first.reranker is second.reranker
    assert BGERerank(model=model, max_length=256).reranker is not first.reranker

    first.postprocess_nodes(make_nodes(), query_str=QUERY)
    second.postprocess_nodes(make_nodes(), query_str=QUERY)
    assert len(loads) == 1
    assert second.reranker.is_loaded


def test_settings_round_trip_through_to_dict(model: str) -> None:
    rerank = BGERerank(model=model, top_n=3, max_length=256, meta_fields_to_embed=["title"])
    again = BGERerank.from_dict(rerank.to_dict())
    assert again.to_dict() == rerank.to_dict()
    assert again.reranker is rerank.reranker


def test_a_ready_reranker_is_used_as_is(model: str) -> None:
    mine = Reranker(model, max_length=128)
    rerank = BGERerank(reranker=mine, top_n=2)
    assert rerank.reranker is mine
    assert (rerank.model, rerank.max_length, rerank.query_max_length) == (model, 128, 96)


def test_a_reranker_and_model_settings_together_are_refused(model: str) -> None:
    with pytest.raises(ValueError, match=r"either reranker or model settings.*max_length"):
        BGERerank(reranker=Reranker(model), max_length=256)
    with pytest.raises(TypeError, match="reranker must be a Reranker, got str"):
        BGERerank(reranker=model)  # type: ignore[arg-type]


@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_is_refused_at_construction(model: str, top_n: int) -> None:
    with pytest.raises(ValueError, match=f"top_n must be >= 1, got {top_n}"):
        BGERerank(model=model, top_n=top_n)


def test_top_n_below_one_is_refused_on_assignment_and_at_call(model: str) -> None:
    rerank = BGERerank(model=model)
    with pytest.raises(ValueError, match="top_n must be >= 1, got 0"):
        rerank.top_n = 0
    unchecked = rerank.model_copy(update={"top_n": 0})  # pydantic does not validate this path
    with pytest.raises(ValueError, match="top_n must be >= 1, got 0"):
        unchecked.postprocess_nodes(make_nodes(), query_str=QUERY)


def test_bad_model_settings_fail_at_construction(model: str) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        BGERerank(model=model, dtype="int3")
    with pytest.raises(ValueError, match="max_length must be >= 16"):
        BGERerank(model=model, max_length=8)
    with pytest.raises(TypeError, match="unexpected keyword argument 'topn'"):
        BGERerank(model=model, topn=3)  # type: ignore[call-arg]


def test_model_settings_are_frozen(model: str) -> None:
    rerank = BGERerank(model=model)
    with pytest.raises(ValidationError, match="frozen"):
        rerank.max_length = 1024


# ---------------------------------------------------------------- postprocess_nodes


def test_reranks_in_the_cores_order_with_float_scores(model: str, core: Reranker) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=len(nodes)).postprocess_nodes(nodes, query_str=QUERY)
    check_result(result, nodes, expected(core, embed_texts(nodes)))
    assert all(0.0 <= r.score <= 1.0 for r in result if r.score is not None)


@pytest.mark.parametrize(("top_n", "count"), [(1, 1), (3, 3), (len(TEXTS), len(TEXTS)), (50, len(TEXTS))])
def test_top_n_keeps_the_best(model: str, core: Reranker, top_n: int, count: int) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=top_n).postprocess_nodes(nodes, query_str=QUERY)
    assert len(result) == count
    check_result(result, nodes, expected(core, embed_texts(nodes))[:count])


def test_top_n_none_returns_every_node_reranked(model: str, core: Reranker) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    check_result(result, nodes, expected(core, embed_texts(nodes)))
    assert sorted(r.node.node_id for r in result) == sorted(IDS)


def test_a_query_bundle_works_like_a_query_str(model: str) -> None:
    rerank = BGERerank(model=model, top_n=None)
    by_str = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    by_bundle = rerank.postprocess_nodes(make_nodes(), query_bundle=QueryBundle(QUERY))
    assert [(r.node.node_id, r.score) for r in by_str] == [(r.node.node_id, r.score) for r in by_bundle]


def test_normalize_false_gives_raw_logits(model: str, core: Reranker) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=None, normalize=False).postprocess_nodes(nodes, query_str=QUERY)
    want = expected(core, embed_texts(nodes), normalize=False)
    check_result(result, nodes, want)
    assert [r.score for r in result] != [s for _, s in expected(core, embed_texts(nodes))]


class ConstantReranker(Reranker):
    """A core whose every score is 0.5: exact ties, which a real model's batched floats seldom give."""

    def score(self, query: str, passages: Sequence[str], *, normalize: bool | None = None) -> list[float]:
        """0.5 for every passage, in input order."""
        return [0.5] * len(passages)

    async def ascore(
        self, query: str, passages: Sequence[str], *, normalize: bool | None = None
    ) -> list[float]:
        """:meth:`score`, for the async path (the core's ``arank`` awaits ``ascore``)."""
        return self.score(query, passages, normalize=normalize)


@pytest.mark.asyncio
async def test_ties_keep_input_order(model: str) -> None:
    nodes = make_nodes()
    rerank = BGERerank(reranker=ConstantReranker(model), top_n=5)
    want = [n.node.node_id for n in nodes[:5]]
    assert [r.node.node_id for r in rerank.postprocess_nodes(nodes, query_str=QUERY)] == want
    assert [r.node.node_id for r in await rerank.apostprocess_nodes(nodes, query_str=QUERY)] == want


def test_input_nodes_are_not_modified(model: str) -> None:
    nodes = make_nodes()
    before = [n.model_dump() for n in nodes]
    inner = [n.node for n in nodes]
    result = BGERerank(model=model, top_n=3, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [n.model_dump() for n in nodes] == before
    assert [n.node for n in nodes] == inner
    assert all(r.node is not n.node for r in result for n in nodes)  # copied where metadata changed


def test_keep_retrieval_score_stores_it_in_metadata_hidden_from_the_llm(model: str) -> None:
    nodes = make_nodes()
    nodes.append(NodeWithScore(node=TextNode(id_="unscored", text=TEXTS[3]), score=None))
    result = BGERerank(model=model, top_n=None, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert len(result) == len(nodes)
    originals = {n.node.node_id: n for n in nodes}
    for out in result:
        source = originals[out.node.node_id]
        if source.score is None:
            assert "retrieval_score" not in out.node.metadata
            assert out.node is source.node
            continue
        assert out.node.metadata == {**source.node.metadata, "retrieval_score": source.score}
        assert type(out.node.metadata["retrieval_score"]) is float
        assert source.node.excluded_llm_metadata_keys == []  # the copy has lists of its own
        assert "retrieval_score" not in out.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "retrieval_score" not in out.node.get_content(metadata_mode=MetadataMode.EMBED)
        assert out.node.get_content(metadata_mode=MetadataMode.LLM) == source.node.get_content(
            metadata_mode=MetadataMode.LLM
        )


def test_without_keep_retrieval_score_the_nodes_are_passed_through(model: str) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=None).postprocess_nodes(nodes, query_str=QUERY)
    originals = {n.node.node_id: n.node for n in nodes}
    assert all(r.node is originals[r.node.node_id] for r in result)


def test_meta_fields_are_prepended_to_the_scored_text(model: str, core: Reranker) -> None:
    nodes = make_nodes()
    nodes[1].node.metadata.pop("title")  # a node lacking the field is scored on its text alone
    rerank = BGERerank(
        model=model,
        top_n=None,
        metadata_mode=MetadataMode.NONE,
        meta_fields_to_embed=["title", "page"],
        meta_separator=" | ",
    )
    result = rerank.postprocess_nodes(nodes, query_str=QUERY)
    texts = [f"Title {i} | {i} | {text}" for i, text in enumerate(TEXTS)]
    texts[1] = f"1 | {TEXTS[1]}"
    check_result(result, nodes, expected(core, texts))


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", [MetadataMode.EMBED, MetadataMode.ALL, MetadataMode.LLM])
async def test_meta_fields_are_scored_once_whatever_the_metadata_mode(model: str, mode: MetadataMode) -> None:
    # Without the rule, EMBED gave "Title 0\ntitle: Title 0\npage: 0\n\n<text>": the title twice.
    recorder = RecordingReranker(model)
    rerank = BGERerank(reranker=recorder, top_n=2, metadata_mode=mode, meta_fields_to_embed=["title"])
    nodes = make_nodes()
    want = [f"Title {i}\n{text}" for i, text in enumerate(TEXTS)]
    rerank.postprocess_nodes(nodes, query_str=QUERY)
    await rerank.apostprocess_nodes(nodes, query_str=QUERY)
    assert recorder.calls == [(QUERY, want), (QUERY, want)]
    BGERerank(reranker=recorder, top_n=2, metadata_mode=mode, meta_fields_to_embed=[]).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert recorder.calls[-1] == (QUERY, TEXTS)  # an empty list: no metadata at all


def test_without_meta_fields_the_metadata_mode_text_is_scored_as_is(model: str) -> None:
    recorder = RecordingReranker(model)
    nodes = make_nodes()
    BGERerank(reranker=recorder, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert recorder.calls[-1][1][0] == f"title: Title 0\npage: 0\n\n{TEXTS[0]}"  # "secret" is excluded
    assert recorder.calls[-1] == (QUERY, embed_texts(nodes))
    BGERerank(reranker=recorder, top_n=2, metadata_mode=MetadataMode.ALL).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert recorder.calls[-1][1][0] == f"title: Title 0\npage: 0\nsecret: x\n\n{TEXTS[0]}"


def test_a_query_engine_scores_meta_fields_once(model: str, core: Reranker) -> None:
    recorder = RecordingReranker(model)
    documents = [
        Document(text=text, id_=f"doc-{i}", metadata={"title": f"T{i}", "source": f"doc-{i}.txt"})
        for i, text in enumerate(TEXTS)
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    rerank = BGERerank(reranker=recorder, top_n=3, meta_fields_to_embed=["title"], meta_separator=" | ")
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[rerank])
    response = engine.query(QUERY)
    ((query, texts),) = recorder.calls
    assert query == QUERY
    by_title = {f"T{i}": text for i, text in enumerate(TEXTS)}
    assert sorted(texts) == sorted(f"{title} | {text}" for title, text in by_title.items())
    scores = core.score(QUERY, texts, normalize=True)
    want = sorted(scores, reverse=True)[:3]
    assert [n.score for n in response.source_nodes] == pytest.approx(want, rel=1e-6)


def test_metadata_mode_none_scores_the_bare_text(model: str, core: Reranker) -> None:
    nodes = make_nodes()
    result = BGERerank(model=model, top_n=None, metadata_mode=MetadataMode.NONE).postprocess_nodes(
        nodes, query_str=QUERY
    )
    check_result(result, nodes, expected(core, TEXTS))


def test_missing_query_is_a_clear_error(model: str, event_log: EventLog) -> None:
    callbacks = CallbackLog()
    rerank = BGERerank(model=model, callback_manager=CallbackManager([callbacks]))
    with pytest.raises(ValueError, match="needs a query"):
        rerank.postprocess_nodes(make_nodes())
    assert event_log.events == []
    assert callbacks.calls == []


# ---------------------------------------------------------------- events


def test_events_wrap_the_work(model: str, event_log: EventLog) -> None:
    callbacks = CallbackLog()
    nodes = make_nodes()
    rerank = BGERerank(model=model, top_n=2, callback_manager=CallbackManager([callbacks]))
    result = rerank.postprocess_nodes(nodes, query_str=QUERY)
    check_balanced(event_log, callbacks, result)
    start = event_log.events[0]
    assert isinstance(start, ReRankStartEvent)
    assert (start.top_n, start.model_name, start.nodes) == (2, model, nodes)
    assert isinstance(start.query, QueryBundle)
    assert start.query.query_str == QUERY
    assert all((e.span_id or "").startswith("BGERerank._postprocess_nodes") for e in event_log.events)
    payload = callbacks.calls[0][1]
    assert payload[EventPayload.QUERY_STR] == QUERY
    assert payload[EventPayload.MODEL_NAME] == model
    assert payload[EventPayload.TOP_K] == 2


def test_empty_input_returns_empty_without_loading(
    own_model: str, fresh_shared: None, event_log: EventLog
) -> None:
    callbacks = CallbackLog()
    rerank = BGERerank(model=own_model, callback_manager=CallbackManager([callbacks]))
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    assert rerank.reranker.is_loaded is False
    check_balanced(event_log, callbacks, [])


@pytest.mark.asyncio
async def test_empty_input_returns_empty_without_loading_async(
    own_model: str, fresh_shared: None, event_log: EventLog
) -> None:
    callbacks = CallbackLog()
    rerank = BGERerank(model=own_model, callback_manager=CallbackManager([callbacks]))
    assert await rerank.apostprocess_nodes([], query_str=QUERY) == []
    assert rerank.reranker.is_loaded is False
    check_balanced(event_log, callbacks, [])


def test_a_failing_model_ends_the_events_and_raises(tmp_path: Path, event_log: EventLog) -> None:
    callbacks = CallbackLog()
    rerank = BGERerank(model=str(tmp_path / "no-such-model"), callback_manager=CallbackManager([callbacks]))
    with pytest.raises(ModelLoadError):
        rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    check_balanced(event_log, callbacks, None)


@pytest.mark.asyncio
async def test_a_failing_model_ends_the_events_and_raises_async(tmp_path: Path, event_log: EventLog) -> None:
    callbacks = CallbackLog()
    rerank = BGERerank(model=str(tmp_path / "no-such-model"), callback_manager=CallbackManager([callbacks]))
    with pytest.raises(ModelLoadError):
        await rerank.apostprocess_nodes(make_nodes(), query_str=QUERY)
    check_balanced(event_log, callbacks, None)


# ---------------------------------------------------------------- async


@pytest.mark.asyncio
async def test_async_matches_sync_inside_its_own_span(model: str, event_log: EventLog) -> None:
    rerank = BGERerank(model=model, top_n=4, keep_retrieval_score=True)
    sync = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    event_log.events.clear()
    result = await rerank.apostprocess_nodes(make_nodes(), query_str=QUERY)
    assert [(r.node.node_id, r.score, r.node.metadata) for r in result] == [
        (r.node.node_id, r.score, r.node.metadata) for r in sync
    ]
    assert [type(e) for e in event_log.events] == [ReRankStartEvent, ReRankEndEvent]
    assert all((e.span_id or "").startswith("BGERerank._apostprocess_nodes") for e in event_log.events)


@pytest.mark.asyncio
async def test_async_does_not_block_the_event_loop(own_model: str, fresh_shared: None) -> None:
    rerank = BGERerank(model=own_model)  # its first call loads the model: long enough to observe
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker has ticked once
    started = ticks
    result = await rerank.apostprocess_nodes(make_nodes(), query_str=QUERY)
    done = True
    await task
    assert len(result) == 5
    assert ticks > started  # the loop ran the ticker while the model loaded and scored


# ---------------------------------------------------------------- a real query engine


@pytest.fixture
def engine_callbacks(monkeypatch: pytest.MonkeyPatch) -> CallbackLog:
    """A callback handler on ``Settings.callback_manager``, which a query engine gives its postprocessors."""
    callbacks = CallbackLog()
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([callbacks]))
    return callbacks


def query_engine(postprocessor: BGERerank) -> BaseQueryEngine:
    """A real vector index over TEXTS with mock embeddings and LLM, retrieving every node."""
    documents = [
        Document(text=text, id_=f"doc-{i}", metadata={"source": f"doc-{i}.txt"})
        for i, text in enumerate(TEXTS)
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    return index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[postprocessor]
    )


def check_engine_response(
    response: Any, log: EventLog, callbacks: CallbackLog, core: Reranker, top_n: int, normalize: bool
) -> None:
    """The response's source nodes are the best ``top_n`` of all indexed nodes by the core's scores."""
    start = log.events[0]
    assert isinstance(start, ReRankStartEvent)
    retrieved = start.nodes
    assert sorted(n.node.metadata["source"] for n in retrieved) == [f"doc-{i}.txt" for i in range(len(TEXTS))]
    want = expected(core, embed_texts(retrieved), normalize=normalize)[:top_n]
    check_result(response.source_nodes, retrieved, want)
    check_balanced(log, callbacks, response.source_nodes)
    assert str(response)  # the mock LLM answered from the reranked context


def test_query_engine_query(
    model: str, core: Reranker, event_log: EventLog, engine_callbacks: CallbackLog
) -> None:
    engine = query_engine(BGERerank(model=model, top_n=3))
    response = engine.query(QUERY)
    check_engine_response(response, event_log, engine_callbacks, core, 3, normalize=True)


@pytest.mark.asyncio
async def test_query_engine_aquery(
    model: str, core: Reranker, event_log: EventLog, engine_callbacks: CallbackLog
) -> None:
    engine = query_engine(BGERerank(model=model, top_n=2, normalize=False))
    response = await engine.aquery(QUERY)
    check_engine_response(response, event_log, engine_callbacks, core, 2, normalize=False)


# ---------------------------------------------------------------- packaging and the example


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Python with ``args`` in a fresh process, offline, from the repository root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )


def test_import_loads_no_torch() -> None:
    code = (
        "import sys; import bge_rerank_integrations.llamaindex; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_missing_llamaindex_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['llama_index'] = None\n"
        "try:\n    import bge_rerank_integrations.llamaindex\n"
        "except ImportError as exc:\n"
        "    assert 'pip install \"bge-rerank-integrations[llamaindex]\"' in str(exc), exc\n"
        "    assert isinstance(exc.__cause__, ImportError)\n"
        "else:\n    raise SystemExit('imported without llama_index')"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_example_runs_offline(model: str, core: Reranker) -> None:
    path = ROOT / "examples" / "llamaindex_example.py"
    spec = importlib.util.spec_from_file_location("llamaindex_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    proc = run_python(str(path), "--model", model, "--top-n", "3", "--query", QUERY)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"query: {QUERY}"
    assert len(lines) == 4
    # What the example prints is the core's ranking of its corpus (as embedded: source, then text).
    want = expected(core, [f"source: doc-{i}.txt\n\n{t}" for i, t in enumerate(example.TEXTS)])[:3]
    for line, (rank, (i, score)) in zip(lines[1:], enumerate(want, start=1), strict=True):
        assert line.startswith(f"{rank}. [doc-{i}.txt] {score:.4f}  ")
