"""The LangChain adapters end to end: a real ContextualCompressionRetriever over an in-memory store."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import transformers
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.langchain import BGECrossEncoder, BGERerankCompressor
from bge_rerank_integrations.reranker import sigmoid

from .corpus import QUERY, TEXTS
from .recording import RecordingReranker

ROOT = Path(__file__).resolve().parents[2]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]
METADATAS = [{"source": f"file-{i}.txt", "title": f"Title {i}", "rank_in_file": 0} for i in range(len(TEXTS))]


def base_retriever(k: int = len(TEXTS)) -> BaseRetriever:
    """A real vector-store retriever over TEXTS with fake (deterministic) embeddings."""
    store = InMemoryVectorStore.from_texts(
        TEXTS, DeterministicFakeEmbedding(size=16), metadatas=copy.deepcopy(METADATAS), ids=IDS
    )
    return store.as_retriever(search_kwargs={"k": k})


def expected_ranking(core: Reranker, query: str, docs: Sequence[Document], **kwargs: Any) -> list[str]:
    """Ids of ``docs`` best first by the core's scores (stable on ties)."""
    return [docs[r.index].id or "" for r in core.rank(query, [d.page_content for d in docs], **kwargs)]


def check_reranked(result: Sequence[Document], retrieved: Sequence[Document], core: Reranker) -> None:
    """``result`` is ``retrieved`` in the core's order, each with its id, metadata and a 0..1 float score."""
    by_id = {d.id: d for d in retrieved}
    scores = dict(zip(IDS, core.score(QUERY, TEXTS, normalize=True), strict=True))
    assert [d.id for d in result] == expected_ranking(core, QUERY, retrieved)[: len(result)]
    for doc in result:
        score = doc.metadata["relevance_score"]
        assert type(score) is float
        assert 0.0 <= score <= 1.0
        assert score == pytest.approx(scores[doc.id or ""], rel=1e-6, abs=1e-7)
        assert doc.page_content == by_id[doc.id].page_content
        assert doc.metadata == {**by_id[doc.id].metadata, "relevance_score": score}
    assert [d.metadata["relevance_score"] for d in result] == sorted(
        (d.metadata["relevance_score"] for d in result), reverse=True
    )


def make_docs() -> list[Document]:
    return [
        Document(page_content=t, id=i, metadata=copy.deepcopy(m))
        for t, i, m in zip(TEXTS, IDS, METADATAS, strict=True)
    ]


# --- through ContextualCompressionRetriever ---------------------------------------------------


def test_invoke_reranks_like_the_core(model: str, core: Reranker) -> None:
    base = base_retriever(k=6)
    retriever = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(model=model, top_n=None), base_retriever=base
    )
    result = retriever.invoke(QUERY)
    retrieved = base.invoke(QUERY)
    assert len(result) == len(retrieved) == 6
    assert sorted(d.id or "" for d in result) == sorted(d.id or "" for d in retrieved)
    check_reranked(result, retrieved, core)


@pytest.mark.asyncio
async def test_ainvoke_reranks_like_the_core(model: str, core: Reranker) -> None:
    base = base_retriever()
    retriever = ContextualCompressionRetriever(
        base_compressor=BGERerankCompressor(model=model, top_n=5), base_retriever=base
    )
    result = await retriever.ainvoke(QUERY)
    assert len(result) == 5
    check_reranked(result, await base.ainvoke(QUERY), core)


@pytest.mark.asyncio
async def test_async_and_sync_agree(model: str) -> None:
    compressor = BGERerankCompressor(model=model, top_n=None)
    docs = make_docs()
    assert await compressor.acompress_documents(docs, QUERY) == compressor.compress_documents(docs, QUERY)


@pytest.mark.parametrize(("top_n", "count"), [(None, 8), (1, 1), (3, 3), (8, 8), (50, 8)])
def test_top_n(model: str, core: Reranker, top_n: int | None, count: int) -> None:
    docs = make_docs()
    result = BGERerankCompressor(model=model, top_n=top_n).compress_documents(docs, QUERY)
    assert [d.id for d in result] == expected_ranking(core, QUERY, docs)[:count]


def test_top_n_defaults_to_three(model: str) -> None:
    compressor = BGERerankCompressor(model=model)
    assert compressor.top_n == 3
    assert len(compressor.compress_documents(make_docs(), QUERY)) == 3


def test_raw_logits_option(model: str, core: Reranker) -> None:
    docs = make_docs()
    raw = BGERerankCompressor(model=model, top_n=None, normalize=False).compress_documents(docs, QUERY)
    normalized = BGERerankCompressor(model=model, top_n=None).compress_documents(docs, QUERY)
    logits = dict(zip(IDS, core.score(QUERY, TEXTS, normalize=False), strict=True))
    assert [d.id for d in raw] == [d.id for d in normalized]
    for r, n in zip(raw, normalized, strict=True):
        assert type(r.metadata["relevance_score"]) is float
        assert r.metadata["relevance_score"] == pytest.approx(logits[r.id or ""], rel=1e-6, abs=1e-6)
        assert sigmoid(r.metadata["relevance_score"]) == pytest.approx(n.metadata["relevance_score"])


def test_metadata_fields_are_scored_before_the_content(model: str, core: Reranker) -> None:
    docs = make_docs()
    del docs[2].metadata["title"]  # a document without the field is scored on its content alone
    docs[5].metadata["title"] = None
    result = BGERerankCompressor(
        model=model, top_n=None, metadata_fields=["title", "rank_in_file"]
    ).compress_documents(docs, QUERY)
    texts = [
        "\n".join(
            [
                *(str(d.metadata[f]) for f in ("title", "rank_in_file") if d.metadata.get(f) is not None),
                d.page_content,
            ]
        )
        for d in docs
    ]
    assert texts[0] == f"Title 0\n0\n{TEXTS[0]}"  # falsy 0 is kept
    assert texts[2] == f"0\n{TEXTS[2]}"
    expected = core.score(QUERY, texts, normalize=True)
    assert [d.id for d in result] == [docs[r.index].id for r in core.rank(QUERY, texts)]
    for doc in result:
        assert doc.metadata["relevance_score"] == pytest.approx(expected[IDS.index(doc.id or "")], rel=1e-6)
        assert doc.page_content == TEXTS[IDS.index(doc.id or "")]  # the scored text is not returned


def test_documents_are_new_and_inputs_untouched(model: str) -> None:
    docs = make_docs()
    before = copy.deepcopy(docs)
    result = BGERerankCompressor(model=model, top_n=None).compress_documents(docs, QUERY)
    assert docs == before
    assert all("relevance_score" not in d.metadata for d in docs)
    originals = {id(d) for d in docs} | {id(d.metadata) for d in docs}
    assert all(id(d) not in originals and id(d.metadata) not in originals for d in result)
    assert [type(d) for d in result] == [Document] * len(docs)


def test_duplicates_kept_and_ties_stable(model: str) -> None:
    twin = "Bamboo makes up almost all of a giant panda's diet."
    docs = [
        Document(page_content=twin, id="first"),
        Document(page_content="The Eiffel Tower is in Paris.", id="other"),
        Document(page_content=twin, id="second"),
        Document(page_content=twin, id="third"),
    ]
    result = BGERerankCompressor(model=model, top_n=None).compress_documents(docs, QUERY)
    assert sorted(d.id or "" for d in result) == sorted(d.id or "" for d in docs)
    twins = [d.id for d in result if d.page_content == twin]
    assert twins == ["first", "second", "third"]
    assert len({d.metadata["relevance_score"] for d in result if d.page_content == twin}) == 1


def test_documents_without_id(model: str) -> None:
    docs = [Document(page_content=t) for t in TEXTS[:3]]
    result = BGERerankCompressor(model=model).compress_documents(docs, QUERY)
    assert [d.id for d in result] == [None, None, None]
    assert sorted(d.page_content for d in result) == sorted(TEXTS[:3])


@pytest.mark.asyncio
async def test_empty_input_returns_empty_without_loading(own_model: str) -> None:
    compressor = BGERerankCompressor(model=own_model, max_batch_tokens=1111)  # settings no other test uses
    assert compressor.compress_documents([], QUERY) == []
    assert await compressor.acompress_documents([], QUERY) == []
    assert BGECrossEncoder(model=own_model, max_batch_tokens=1111).score([]) == []
    assert not compressor.reranker.is_loaded


@pytest.mark.asyncio
@pytest.mark.parametrize("query", [None, 3, b"bytes", ["a list"]])
async def test_query_must_be_a_string(model: str, query: Any) -> None:
    compressor = BGERerankCompressor(model=model)
    for docs in (make_docs(), []):
        with pytest.raises(TypeError, match="query must be a str"):
            compressor.compress_documents(docs, query)
        with pytest.raises(TypeError, match="query must be a str"):
            await compressor.acompress_documents(docs, query)


def test_query_is_required(model: str) -> None:
    with pytest.raises(TypeError, match="query"):
        BGERerankCompressor(model=model).compress_documents(make_docs())  # type: ignore[call-arg]


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_fails_at_construction(top_n: int) -> None:
    with pytest.raises(ValueError, match=f"top_n must be >= 1, got {top_n}"):
        BGERerankCompressor(top_n=top_n)


@pytest.mark.parametrize("top_n", [True, 2.5, "3"])
def test_top_n_must_be_an_int(top_n: Any) -> None:
    with pytest.raises(TypeError, match="top_n must be an int or None"):
        BGERerankCompressor(top_n=top_n)


def test_unknown_argument_is_refused() -> None:
    with pytest.raises(ValidationError, match="top_k"):
        BGERerankCompressor(top_k=3)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"max_length": 8}, ValueError, "max_length must be >= 16, got 8"),
        ({"dtype": "int4"}, ValueError, "dtype must be one of"),
        ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens must be >= 1, got 0"),
        ({"max_length": 64, "query_max_length": 64}, ValueError, "query_max_length must leave room"),
        ({"model": ""}, ValueError, "model must be a non-empty"),
    ],
)
@pytest.mark.parametrize("cls", [BGERerankCompressor, BGECrossEncoder])
def test_bad_model_settings_fail_at_construction(
    cls: type[BGERerankCompressor | BGECrossEncoder],
    settings: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        cls(**settings)


def test_model_settings_cannot_change_after_construction(model: str) -> None:
    compressor = BGERerankCompressor(model=model)
    with pytest.raises(ValidationError, match="frozen"):
        compressor.max_length = 1024
    compressor.top_n = 1  # per-call options can
    compressor.normalize = False
    assert len(compressor.compress_documents(make_docs(), QUERY)) == 1


def test_construction_loads_nothing(own_model: str) -> None:
    assert not BGERerankCompressor(model=own_model, max_batch_tokens=2222).reranker.is_loaded
    assert not BGECrossEncoder(model=own_model, max_batch_tokens=2222).reranker.is_loaded


def test_settings_read_back_resolved(model: str) -> None:
    compressor = BGERerankCompressor(model=model, dtype="fp32", max_length=256)
    assert (compressor.dtype, compressor.max_length, compressor.query_max_length) == ("float32", 256, None)
    assert compressor.reranker is BGERerankCompressor(model=model, dtype="float32", max_length=256).reranker


def test_a_path_is_accepted_as_model(model_dir: Path) -> None:
    compressor = BGERerankCompressor(model=model_dir, cache_dir=model_dir.parent)
    assert (compressor.model, compressor.cache_dir) == (str(model_dir), str(model_dir.parent))
    compressor = BGERerankCompressor(model=model_dir)
    assert compressor.model == str(model_dir)
    assert compressor.reranker is BGERerankCompressor(model=str(model_dir)).reranker


# --- one model per process -----------------------------------------------------------------------


def test_same_settings_share_one_model_loaded_once(
    own_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(own_model_dir)  # a folder of its own: no other test loaded these weights
    calls: list[object] = []
    original = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    settings: dict[str, Any] = {"model": model, "max_batch_tokens": 3333}  # settings no other test uses
    first = BGERerankCompressor(**settings)
    second = BGERerankCompressor(**settings, top_n=1, normalize=False)  # per-call options do not split
    encoder = BGECrossEncoder(**settings)
    other = BGERerankCompressor(model=model, max_batch_tokens=4444)
    assert first.reranker is second.reranker is encoder.reranker
    assert other.reranker is not first.reranker
    assert not first.reranker.is_loaded
    assert calls == []

    first.compress_documents(make_docs(), QUERY)
    second.compress_documents(make_docs(), QUERY)
    encoder.score([(QUERY, TEXTS[0])])
    assert first.reranker.is_loaded
    assert len(calls) == 1
    # another batch budget is a scoring option: the same weights and queue, its own budget per call
    assert other.reranker.is_loaded
    other.compress_documents(make_docs(), QUERY)
    assert len(calls) == 1


def test_a_given_reranker_is_used_and_reported(model: str) -> None:
    reranker = Reranker(model, max_length=256, max_batch_tokens=5555)
    compressor = BGERerankCompressor(reranker=reranker, top_n=2)
    encoder = BGECrossEncoder(reranker=reranker, normalize=False, device=None)  # None is "not given"
    assert compressor.reranker is reranker
    assert encoder.reranker is reranker
    assert (compressor.model, compressor.max_length, compressor.query_max_length) == (model, 256, None)
    assert compressor.max_batch_tokens == 5555
    assert compressor.reranker is not BGERerankCompressor(model=model, max_length=256).reranker


def test_reranker_and_settings_are_exclusive(model: str) -> None:
    with pytest.raises(
        ValueError, match=r"either reranker or model settings, not both: got reranker and max_length, model"
    ):
        BGERerankCompressor(reranker=Reranker(model), model=model, max_length=256)
    with pytest.raises(TypeError, match="reranker must be a Reranker, got str"):
        BGERerankCompressor(reranker=model)  # type: ignore[arg-type]


# --- BGECrossEncoder ------------------------------------------------------------------------------


def test_cross_encoder_scores_pairs_like_the_core(model: str, core: Reranker) -> None:
    pairs = [(QUERY, t) for t in TEXTS] + [("another query", TEXTS[0])]
    scores = BGECrossEncoder(model=model).score(pairs)
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx(core.score_pairs(pairs, normalize=True), rel=1e-6)
    raw = BGECrossEncoder(model=model, normalize=False).score(pairs)
    assert raw == pytest.approx(core.score_pairs(pairs, normalize=False), rel=1e-6, abs=1e-6)


def test_cross_encoder_in_cross_encoder_reranker(model: str, core: Reranker) -> None:
    base = base_retriever()
    retriever = ContextualCompressionRetriever(
        base_compressor=CrossEncoderReranker(model=BGECrossEncoder(model=model), top_n=4), base_retriever=base
    )
    result = retriever.invoke(QUERY)
    assert [d.id for d in result] == expected_ranking(core, QUERY, base.invoke(QUERY))[:4]
    compressor = BGERerankCompressor(model=model, top_n=4)
    assert [d.id for d in result] == [d.id for d in compressor.compress_documents(base.invoke(QUERY), QUERY)]


def test_cross_encoder_rejects_malformed_pairs(model: str) -> None:
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, passage\) pair"):
        BGECrossEncoder(model=model).score([("only one",)])  # type: ignore[list-item]


# --- packaging ----------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_loads_neither_torch_nor_transformers() -> None:
    proc = run_python(
        "import sys\n"
        "from bge_rerank_integrations.langchain import BGECrossEncoder, BGERerankCompressor\n"
        "BGERerankCompressor(); BGECrossEncoder()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_missing_langchain_names_the_extra() -> None:
    proc = run_python(
        "import sys\nsys.modules['langchain_core'] = None\nimport bge_rerank_integrations.langchain\n"
    )
    assert proc.returncode != 0
    assert 'pip install "bge-rerank-integrations[langchain]"' in proc.stderr
    assert "The above exception was the direct cause" in proc.stderr  # raised `from` the original


def test_example_runs_offline(model: str, core: Reranker) -> None:
    path = ROOT / "examples" / "langchain_example.py"
    spec = importlib.util.spec_from_file_location("langchain_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    proc = subprocess.run(
        [sys.executable, str(path), "--model", model, "--query", QUERY],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"query: {QUERY}"
    best = [r.index for r in core.rank(QUERY, example.TEXTS, top_n=3)]
    assert [line.split("]")[0].split("[")[1] for line in lines[1:]] == [f"doc-{i}" for i in best]


# --- options assigned after construction --------------------------------------------------------


def test_top_n_assigned_after_construction_is_checked(model: str) -> None:
    compressor = BGERerankCompressor(model=model, top_n=3)
    with pytest.raises(ValidationError, match="top_n must be >= 1, got -1"):
        compressor.top_n = -1
    with pytest.raises(TypeError, match="top_n must be an int or None, got float"):
        compressor.top_n = 2.5  # type: ignore[assignment]
    assert compressor.top_n == 3  # a refused assignment changes nothing
    compressor.top_n = None
    assert len(compressor.compress_documents(make_docs(), QUERY)) == len(TEXTS)
    encoder = BGECrossEncoder(model=model)
    with pytest.raises(ValidationError, match="normalize"):
        encoder.normalize = "sometimes"  # type: ignore[assignment]


@pytest.mark.asyncio
@pytest.mark.parametrize("top_n", [0, -1])
async def test_top_n_copied_in_unchecked_fails_at_call_time(model: str, top_n: int) -> None:
    # model_copy(update=...) skips pydantic validation; the call must not return 7 of 8 documents, or none
    compressor = BGERerankCompressor(model=model).model_copy(update={"top_n": top_n})
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever())
    message = f"top_n must be >= 1, got {top_n}"
    with pytest.raises(ValueError, match=message):
        retriever.invoke(QUERY)
    with pytest.raises(ValueError, match=message):
        await retriever.ainvoke(QUERY)
    with pytest.raises(ValueError, match=message):
        compressor.rerank(TEXTS, QUERY)
    with pytest.raises(ValueError, match=message):
        await compressor.arerank(TEXTS, QUERY)
    assert len(compressor.rerank(TEXTS, QUERY, top_n=2)) == 2  # an explicit top_n is used instead


# --- rerank(), as CohereRerank has it ------------------------------------------------------------


def cohere_style_top_docs(
    reranker: Any, docs: Sequence[Any], query: str, *, rank_fields: Sequence[str] | None = None
) -> list[tuple[Any, float]]:
    """Code written against ``CohereRerank.rerank`` (its calls and result keys), run on any reranker."""
    response = reranker.rerank(docs, query, rank_fields=rank_fields, top_n=2)
    return [(docs[r["index"]], r["relevance_score"]) for r in response]


def test_rerank_strings_like_the_core(model: str, core: Reranker) -> None:
    compressor = BGERerankCompressor(model=model)  # top_n=3
    result = compressor.rerank(TEXTS, QUERY)
    want = core.rank(QUERY, TEXTS, normalize=True)
    assert [set(r) for r in result] == [{"index", "relevance_score"}] * 3  # the instance's top_n
    assert [r["index"] for r in result] == [w.index for w in want[:3]]
    assert all(type(r["index"]) is int and type(r["relevance_score"]) is float for r in result)
    assert [r["relevance_score"] for r in result] == pytest.approx([w.score for w in want[:3]], rel=1e-6)
    assert [r["index"] for r in compressor.rerank(TEXTS, QUERY, top_n=None)] == [w.index for w in want]
    assert len(compressor.rerank(TEXTS, QUERY, top_n=5)) == 5
    # Cohere's convention: its default -1, and any top_n below 1, mean the instance's top_n.
    assert compressor.rerank(TEXTS, QUERY, top_n=-1) == result
    assert compressor.rerank(TEXTS, QUERY, top_n=0) == result
    raw = BGERerankCompressor(model=model, normalize=False).rerank(TEXTS, QUERY, top_n=1)
    assert raw[0]["relevance_score"] == pytest.approx(core.score(QUERY, TEXTS)[want[0].index], rel=1e-6)


def test_code_written_for_cohere_rerank_runs_unchanged(model: str, core: Reranker) -> None:
    docs = [
        {"content": "This document is about Penguins.", "subject": "Physics"},
        {"content": "This document is about Physics.", "subject": "Penguins"},
        {"content": "Emperor penguins breed in the Antarctic winter.", "subject": "Birds"},
    ]
    got = cohere_style_top_docs(BGERerankCompressor(model=model), docs, "penguins", rank_fields=["content"])
    texts = [f"content: {d['content']}" for d in docs]
    want = core.rank("penguins", texts, top_n=2, normalize=True)
    assert [d for d, _ in got] == [docs[w.index] for w in want]
    assert [s for _, s in got] == pytest.approx([w.score for w in want], rel=1e-6)
    documents = [Document(page_content=d["content"]) for d in docs]  # Cohere's tests rank Documents too
    got_docs = cohere_style_top_docs(BGERerankCompressor(model=model), documents, "penguins")
    assert [d.page_content for d, _ in got_docs] == [
        documents[w.index].page_content
        for w in core.rank("penguins", [d["content"] for d in docs], top_n=2, normalize=True)
    ]


@pytest.mark.asyncio
async def test_rerank_scores_dicts_strings_and_documents_as_documented(model: str) -> None:
    recorder = RecordingReranker(model)
    compressor = BGERerankCompressor(reranker=recorder, top_n=None, metadata_fields=["title"])
    docs: list[Any] = [
        {"title": "Pandas", "body": "They eat bamboo.", "year": 2024, "tags": ["bear", "熊猫"], "note": None},
        {"body": "No title here.", "flag": False},
        "A plain string is scored as it is.",
        Document(page_content="A document.", metadata={"title": "Doc title", "body": "not scored"}),
        {"other": "none of the fields"},
    ]
    compressor.rerank(docs, QUERY)  # every key, in the dict's order; None values left out
    assert recorder.calls[-1] == (
        QUERY,
        [
            'title: Pandas\nbody: They eat bamboo.\nyear: 2024\ntags: ["bear", "熊猫"]',
            "body: No title here.\nflag: false",
            "A plain string is scored as it is.",
            "Doc title\nA document.",  # a Document as compress_documents scores it: metadata_fields
            "other: none of the fields",
        ],
    )
    fields_texts = [
        "body: They eat bamboo.\ntitle: Pandas",
        "body: No title here.",
        "A plain string is scored as it is.",
        "Doc title\nA document.",  # rank_fields do not apply to a Document
        "",  # a dict with none of the fields is scored as an empty text, not dropped
    ]
    result = compressor.rerank(docs, QUERY, rank_fields=["body", "missing", "title", "body"])
    assert recorder.calls[-1] == (QUERY, fields_texts)
    assert sorted(r["index"] for r in result) == list(range(len(docs)))
    assert await compressor.arerank(docs, QUERY, rank_fields=["body", "title"]) == result
    assert recorder.calls[-1] == (QUERY, fields_texts)
    compressor.rerank(docs, QUERY, rank_fields=[])  # empty means every key, as with CohereRerank
    assert recorder.calls[-1][1][0].startswith("title: Pandas\nbody:")


def test_rerank_and_compress_documents_agree(model: str) -> None:
    compressor = BGERerankCompressor(model=model, top_n=4, metadata_fields=["title"])
    docs = make_docs()
    compressed = compressor.compress_documents(docs, QUERY)
    ranked = compressor.rerank(docs, QUERY)
    assert [d.id for d in compressed] == [docs[r["index"]].id for r in ranked]
    assert [d.metadata["relevance_score"] for d in compressed] == [r["relevance_score"] for r in ranked]


@pytest.mark.asyncio
async def test_rerank_of_nothing_loads_nothing(own_model: str) -> None:
    compressor = BGERerankCompressor(model=own_model, max_batch_tokens=1112)  # settings no other test uses
    assert compressor.rerank([], QUERY) == []
    assert await compressor.arerank([], QUERY, rank_fields=["content"]) == []
    assert not compressor.reranker.is_loaded


@pytest.mark.parametrize(
    ("documents", "kwargs", "error", "message"),
    [
        ([TEXTS[0], 3], {}, TypeError, r"documents\[1\] must be a str, a dict or a Document, got int"),
        ([None], {}, TypeError, r"documents\[0\] must be a str, a dict or a Document, got NoneType"),
        ("one string", {}, TypeError, "documents must be a sequence, got str"),
        ([TEXTS[0]], {"rank_fields": "content"}, TypeError, "rank_fields must be a list of keys"),
        ([TEXTS[0]], {"rank_fields": ["content", 1]}, TypeError, r"rank_fields\[1\] must be a str"),
        ([TEXTS[0]], {"top_n": "2"}, TypeError, "top_n must be an int or None"),
    ],
)
def test_rerank_bad_input_is_named(
    model: str, documents: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BGERerankCompressor(model=model).rerank(documents, QUERY, **kwargs)


def test_rerank_query_must_be_a_string(model: str) -> None:
    with pytest.raises(TypeError, match="query must be a str"):
        BGERerankCompressor(model=model).rerank(TEXTS, None)  # type: ignore[arg-type]


def test_compress_documents_names_a_non_document(model: str) -> None:
    with pytest.raises(TypeError, match=r"documents\[1\] must be a Document, got str"):
        BGERerankCompressor(model=model).compress_documents([make_docs()[0], "text"], QUERY)  # type: ignore[list-item]


# --- metadata is deep-copied ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_returned_metadata_is_a_deep_copy(model: str) -> None:
    docs = [
        Document(
            page_content=t, id=f"n{i}", metadata={"source": {"path": f"f{i}.txt", "tags": ["a"]}, "n": i}
        )
        for i, t in enumerate(TEXTS[:4])
    ]
    before = copy.deepcopy(docs)
    compressor = BGERerankCompressor(model=model, top_n=None)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=ListRetriever(docs=docs)
    )
    for result in (retriever.invoke(QUERY), await retriever.ainvoke(QUERY)):
        assert len(result) == len(docs)
        for out in result:
            out.metadata["source"]["tags"].append("changed downstream")
            out.metadata["source"]["path"] = "elsewhere"
        assert docs == before  # the caller's nested metadata is untouched
        assert result[0].metadata["source"]["tags"] == ["a", "changed downstream"]


class ListRetriever(BaseRetriever):
    """A retriever that returns the caller's own document objects, as a custom retriever may."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return self.docs


# --- packaging of the extra ----------------------------------------------------------------------


def test_the_langchain_extra_provides_every_langchain_module_the_docs_import() -> None:
    import importlib.metadata
    import re
    import tomllib

    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {Requirement(r).name for r in extra["langchain"]}
    sources = [ROOT / "README.md", ROOT / "examples" / "langchain_example.py"]
    modules = {m for path in sources for m in re.findall(r"^\s*from (langchain_\w+)", path.read_text(), re.M)}
    assert "langchain_classic" in modules  # ContextualCompressionRetriever lives there
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(modules):
        assert {d.lower() for d in distributions[module]} & names, f"{module} is not in the langchain extra"
    for name in names:  # and what is installed here satisfies the declared ranges
        requirement = next(Requirement(r) for r in extra["langchain"] if Requirement(r).name == name)
        assert requirement.specifier.contains(importlib.metadata.version(name))
