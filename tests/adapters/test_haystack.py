"""BGERanker in real Haystack pipelines, checked against the core's scores on the tiny test model."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.errors import SerializationError
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.document_stores.types import DuplicatePolicy
from haystack.utils import ComponentDevice, Secret
from haystack.utils.device import DeviceMap

from bge_rerank_integrations import Reranker, RerankerConfig
from bge_rerank_integrations.haystack import BGERanker
from haystack_integrations.components.rankers.bge_reranker import BGERanker as NamespacedBGERanker

from .recording import RecordingReranker

REPO = Path(__file__).resolve().parents[2]
TYPE = "haystack_integrations.components.rankers.bge_reranker.ranker.BGERanker"
QUERY = "Which city is the capital of Germany?"
TEXTS = [
    "Paris is the capital of France and its most populous city.",
    "Berlin is the capital of Germany and has about 3.7 million inhabitants.",
    "The quick brown fox jumps over the lazy dog.",
    "Madrid is the capital of Spain, in the centre of the peninsula.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Berlin ist die Hauptstadt Deutschlands.",
    "A cross-encoder reads the query and the passage together.",
]


@pytest.fixture
def docs() -> list[Document]:
    """Documents with distinct ids, meta (falsy values included) and incoming retriever scores."""
    return [
        Document(content=text, meta={"n": i, "flag": False, "title": f"T{i}"}, score=0.5)
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture
def from_pretrained_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every model load through transformers, without changing what it returns."""
    from transformers import AutoModelForSequenceClassification

    original = AutoModelForSequenceClassification.from_pretrained
    calls: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]) if args else str(kwargs.get("pretrained_model_name_or_path")))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    return calls


def expected_ranking(
    core: Reranker, query: str, docs: list[Document], *, normalize: bool = True
) -> list[tuple[str, float]]:
    """``(id, score)`` best first, from the core scoring the documents' contents directly."""
    scores = core.score(query, [d.content or "" for d in docs], normalize=normalize)
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    return [(docs[i].id, scores[i]) for i in order]


def ranking(result: dict[str, list[Document]]) -> list[Any]:
    """``(id, score)`` of a ranker's output, in order."""
    return [(d.id, d.score) for d in result["documents"]]


def assert_same_ranking(got: list[Any], want: list[Any]) -> None:
    """Same ids in the same order, scores equal to within float noise."""
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)


# --- construction, sharing, warm-up ---------------------------------------------------------------


def test_both_import_paths_give_the_same_class() -> None:
    assert BGERanker is NamespacedBGERanker
    assert f"{BGERanker.__module__}.{BGERanker.__name__}" == TYPE


def test_nothing_loads_at_construction_and_equal_settings_share_one_model(
    own_model_dir: Path, from_pretrained_calls: list[str]
) -> None:
    # a folder name of its own: no other test loaded these weights
    first = BGERanker(model=own_model_dir, max_batch_tokens=4321)
    second = BGERanker(model=str(own_model_dir), max_batch_tokens=4321)
    shared = Reranker.shared_from_config(RerankerConfig(model=str(own_model_dir), max_batch_tokens=4321))
    assert not shared.is_loaded
    assert from_pretrained_calls == []

    first.warm_up()
    first.warm_up()  # idempotent
    second.warm_up()
    assert first.reranker is second.reranker is shared
    assert shared.is_loaded
    assert from_pretrained_calls == [str(own_model_dir)]


def test_other_settings_get_another_model(model_dir: Path) -> None:
    a = BGERanker(model=model_dir, max_batch_tokens=4322)
    b = BGERanker(model=model_dir, max_batch_tokens=4323)
    assert a.reranker is not b.reranker


@pytest.mark.asyncio
async def test_warm_up_async_loads_once(own_model_dir: Path, from_pretrained_calls: list[str]) -> None:
    ranker = BGERanker(model=own_model_dir, max_batch_tokens=4324)
    await ranker.warm_up_async()
    await ranker.warm_up_async()
    ranker.warm_up()
    assert ranker.reranker.is_loaded
    assert from_pretrained_calls == [str(own_model_dir)]


def test_a_given_reranker_is_used_as_is(core: Reranker, docs: list[Document]) -> None:
    ranker = BGERanker(reranker=core, top_k=3)
    assert ranker.reranker is core
    assert ranker.model == core.config.model
    assert_same_ranking(ranking(ranker.run(QUERY, docs)), expected_ranking(core, QUERY, docs)[:3])


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"model": "other/model"}, "model"),
        ({"device": ComponentDevice.from_str("cpu")}, "device"),
        ({"dtype": "float32"}, "dtype"),
        ({"max_length": 256}, "max_length"),
        ({"max_batch_tokens": 1024}, "max_batch_tokens"),
    ],
)
def test_a_given_reranker_refuses_model_settings(
    core: Reranker, settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"either reranker or model settings.*{named}"):
        BGERanker(reranker=core, **settings)


def test_a_given_reranker_accepts_its_own_model_name(core: Reranker) -> None:
    assert BGERanker(reranker=core, model=core.config.model).reranker is core


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_fails_at_init(top_k: int) -> None:
    with pytest.raises(ValueError, match=f"top_k must be >= 1, got {top_k}"):
        BGERanker(top_k=top_k)


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"top_k": 2.5}, TypeError, "top_k"),
        ({"scale_score": "yes"}, TypeError, "scale_score"),
        ({"score_threshold": "0.5"}, TypeError, "score_threshold"),
        ({"score_threshold": float("nan")}, ValueError, "score_threshold"),
        ({"max_length": 8}, ValueError, "max_length"),
        ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens"),
        ({"dtype": "float8"}, ValueError, "dtype"),
        ({"reranker": "not a reranker"}, TypeError, "reranker"),
        ({"meta_fields_to_embed": "title"}, TypeError, "meta_fields_to_embed"),
        ({"embedding_separator": None}, TypeError, "embedding_separator"),
    ],
)
def test_bad_settings_fail_at_init_naming_the_parameter(
    settings: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        BGERanker(**settings)


def test_a_device_map_is_refused() -> None:
    device = ComponentDevice.from_multiple(DeviceMap.from_dict({"layer": "cpu"}))
    with pytest.raises(ValueError, match="single device"):
        BGERanker(device=device)


def test_the_token_reaches_the_model_download_and_is_never_shown(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MY_HF_TOKEN", "hf_private")
    ranker = BGERanker(model=model_dir, token=Secret.from_env_var("MY_HF_TOKEN"))
    with caplog.at_level("DEBUG"):
        ranker.warm_up()
    assert ranker.reranker.config.token == "hf_private"
    assert "hf_private" not in repr(ranker.reranker.config)
    assert "hf_private" not in caplog.text
    assert "hf_private" not in str(ranker.to_dict())


# --- run ------------------------------------------------------------------------------------------


def test_run_orders_by_the_core_scores(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    before = copy.deepcopy(docs)
    result = BGERanker(model=model_dir).run(query=QUERY, documents=docs)

    assert set(result) == {"documents"}
    out = result["documents"]
    assert_same_ranking(ranking(result), expected_ranking(core, QUERY, docs))
    assert len(out) == len(docs)
    assert all(type(d.score) is float for d in out)
    by_id = {d.id: d for d in docs}
    for d in out:
        original = by_id[d.id]
        assert (d.content, d.meta) == (original.content, original.meta)
        assert d is not original
        assert d.meta is not original.meta
    assert docs == before  # inputs untouched, incoming scores kept


def test_top_k_at_init_and_at_run(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    want = expected_ranking(core, QUERY, docs)
    ranker = BGERanker(model=model_dir, top_k=3)
    assert_same_ranking(ranking(ranker.run(QUERY, docs)), want[:3])
    assert_same_ranking(ranking(ranker.run(QUERY, docs, top_k=1)), want[:1])
    assert_same_ranking(ranking(ranker.run(QUERY, docs, top_k=100)), want)


@pytest.mark.parametrize("top_k", [0, -3])
def test_top_k_below_one_fails_at_run(model_dir: Path, docs: list[Document], top_k: int) -> None:
    with pytest.raises(ValueError, match=f"top_k must be >= 1, got {top_k}"):
        BGERanker(model=model_dir).run(QUERY, docs, top_k=top_k)


def test_scale_score_false_gives_raw_logits(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    logits = expected_ranking(core, QUERY, docs, normalize=False)
    sigmoids = expected_ranking(core, QUERY, docs, normalize=True)
    assert any(not 0 < s < 1 for _, s in logits)  # the two really differ on this model

    scaled = BGERanker(model=model_dir)  # scale_score=True
    assert_same_ranking(ranking(scaled.run(QUERY, docs, scale_score=False)), logits)  # False counts
    raw = BGERanker(model=model_dir, scale_score=False)
    assert_same_ranking(ranking(raw.run(QUERY, docs)), logits)
    assert_same_ranking(ranking(raw.run(QUERY, docs, scale_score=True)), sigmoids)


def test_score_threshold_at_init_and_zero_at_run(
    model_dir: Path, core: Reranker, docs: list[Document]
) -> None:
    want = expected_ranking(core, QUERY, docs)
    threshold = want[3][1]  # the fourth best score: keeps exactly four (scores are distinct)
    ranker = BGERanker(model=model_dir, score_threshold=threshold)
    assert_same_ranking(ranking(ranker.run(QUERY, docs)), want[:4])
    # 0.0 is a real override: every sigmoid score is above it
    assert_same_ranking(ranking(ranker.run(QUERY, docs, score_threshold=0.0)), want)
    assert ranker.run(QUERY, docs, score_threshold=1.0)["documents"] == []
    # threshold and top_k together: the threshold first, then at most top_k
    assert_same_ranking(ranking(ranker.run(QUERY, docs, top_k=2)), want[:2])


def test_score_threshold_zero_on_logits(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    logits = expected_ranking(core, QUERY, docs, normalize=False)
    ranker = BGERanker(model=model_dir, scale_score=False, score_threshold=-1e9)
    got = ranker.run(QUERY, docs, score_threshold=0.0)
    assert_same_ranking(ranking(got), [(i, s) for i, s in logits if s >= 0.0])


def test_meta_fields_are_put_before_the_content(model_dir: Path, core: Reranker) -> None:
    docs = [
        Document(content="is the capital of Germany.", meta={"title": "Berlin", "year": 0}),
        Document(content="is the capital of France.", meta={"title": "Paris", "year": None}),
        Document(content="is a lazy dog.", meta={}),
        Document(content=None, meta={"title": "Madrid", "year": 2024}),
    ]
    ranker = BGERanker(model=model_dir, meta_fields_to_embed=["title", "year"], embedding_separator=" | ")
    # missing and None values are skipped, 0 is kept, no content scores on the meta alone
    texts = [
        "Berlin | 0 | is the capital of Germany.",
        "Paris | is the capital of France.",
        "is a lazy dog.",
        "Madrid | 2024 | ",
    ]
    scores = core.score(QUERY, texts, normalize=True)
    want = sorted(((d.id, s) for d, s in zip(docs, scores, strict=True)), key=lambda p: -p[1])
    assert_same_ranking(ranking(ranker.run(QUERY, docs)), want)


def test_duplicate_ids_collapse_to_the_best_incoming_score(model_dir: Path) -> None:
    low = Document(id="same", content="Berlin is the capital of Germany.", meta={"v": 1}, score=0.1)
    high = Document(id="same", content="Berlin is the capital of Germany.", meta={"v": 2}, score=0.9)
    other = Document(content="Paris is the capital of France.")
    out = BGERanker(model=model_dir).run(QUERY, [low, other, high, other])["documents"]
    assert sorted(d.id for d in out) == sorted(["same", other.id])
    assert next(d for d in out if d.id == "same").meta == {"v": 2}


def test_empty_documents_return_empty_without_loading(
    own_model_dir: Path, from_pretrained_calls: list[str]
) -> None:
    ranker = BGERanker(model=own_model_dir, max_batch_tokens=4325)
    assert ranker.run(QUERY, []) == {"documents": []}
    assert not ranker.reranker.is_loaded
    assert from_pretrained_calls == []


@pytest.mark.asyncio
async def test_empty_documents_async(model_dir: Path, from_pretrained_calls: list[str]) -> None:
    ranker = BGERanker(model=model_dir, max_batch_tokens=4326)
    assert await ranker.run_async(QUERY, []) == {"documents": []}
    assert from_pretrained_calls == []


def test_missing_or_empty_query_is_a_clear_error(model_dir: Path, docs: list[Document]) -> None:
    ranker = BGERanker(model=model_dir)
    with pytest.raises(TypeError, match="query as a str, got NoneType"):
        ranker.run(None, docs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty query"):
        ranker.run("  ", docs)
    with pytest.raises(TypeError, match="query"):
        ranker.run(documents=docs)  # type: ignore[call-arg]


def test_a_pipeline_without_the_query_names_it(model_dir: Path, docs: list[Document]) -> None:
    pipeline = bm25_pipeline(BGERanker(model=model_dir), docs)
    with pytest.raises(ValueError, match="Missing mandatory input 'query' for component 'ranker'"):
        pipeline.run({"retriever": {"query": QUERY}})


def test_bad_documents_are_named(model_dir: Path, docs: list[Document]) -> None:
    ranker = BGERanker(model=model_dir)
    with pytest.raises(TypeError, match=r"documents\[1\] must be a Document, got str"):
        ranker.run(QUERY, [docs[0], "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list of Document"):
        ranker.run(QUERY, "text")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_run_async_matches_run(model_dir: Path, docs: list[Document]) -> None:
    ranker = BGERanker(model=model_dir, top_k=4)
    got = await ranker.run_async(QUERY, docs, top_k=5, scale_score=False, score_threshold=-1e9)
    assert ranking(got) == ranking(ranker.run(QUERY, docs, top_k=5, scale_score=False, score_threshold=-1e9))
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        await ranker.run_async(QUERY, docs, top_k=0)


def test_run_and_run_async_take_the_same_parameters() -> None:
    import inspect

    assert inspect.signature(BGERanker.run) == inspect.signature(BGERanker.run_async)


# --- serialization --------------------------------------------------------------------------------


# Settings added with the remote backend, long passages and cross-request batching, in to_dict order.
NEW_SETTINGS = (
    "query_max_length",
    "long_passages",
    "window_overlap",
    "max_windows",
    "batch_wait_ms",
    "revision",
    "cache_dir",
    "local_files_only",
    "trust_remote_code",
    "backend",
    "base_url",
    "api_key",
    "request_timeout",
    "max_concurrent_requests",
    "max_texts_per_request",
    "verify_tls",
)
# The sentence-transformers ranker's prompt parameters, at their defaults.
PROMPTS = {"query_prefix": "", "query_suffix": "", "document_prefix": "", "document_suffix": ""}
# Its loading parameters, taken so its saved pipelines load; None when not given.
ST_LOADING = ("batch_size", "model_kwargs", "tokenizer_kwargs", "config_kwargs")


def test_to_dict_defaults() -> None:
    assert BGERanker().to_dict() == {
        "type": TYPE,
        "init_parameters": {
            "model": "BAAI/bge-reranker-v2-m3",
            "device": None,
            "token": {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False},
            "top_k": 10,
            **PROMPTS,
            "scale_score": True,
            "score_threshold": None,
            "meta_fields_to_embed": None,
            "embedding_separator": "\n",
            "max_length": None,
            "max_batch_tokens": None,
            "dtype": None,
            **dict.fromkeys(NEW_SETTINGS),
            **dict.fromkeys(ST_LOADING),
        },
    }


def test_to_dict_with_settings_and_from_dict_round_trip(model_dir: Path) -> None:
    ranker = BGERanker(
        model=model_dir,
        device=ComponentDevice.from_str("cpu"),
        token=Secret.from_env_var("MY_HF_TOKEN"),
        top_k=3,
        query_prefix="query: ",
        query_suffix=" ?",
        document_prefix="passage: ",
        document_suffix=" .",
        scale_score=False,
        score_threshold=0.0,
        meta_fields_to_embed=("title",),
        embedding_separator=" | ",
        max_length=256,
        max_batch_tokens=2048,
        dtype="bf16",
    )
    data = ranker.to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": str(model_dir),
            "device": {"type": "single", "device": "cpu"},
            "token": {"type": "env_var", "env_vars": ["MY_HF_TOKEN"], "strict": True},
            "top_k": 3,
            "query_prefix": "query: ",
            "query_suffix": " ?",
            "document_prefix": "passage: ",
            "document_suffix": " .",
            "scale_score": False,
            "score_threshold": 0.0,
            "meta_fields_to_embed": ["title"],
            "embedding_separator": " | ",
            "max_length": 256,
            "max_batch_tokens": 2048,
            "dtype": "bf16",
            **dict.fromkeys(NEW_SETTINGS),
            **dict.fromkeys(ST_LOADING),
        },
    }
    json.dumps(data)  # plain JSON
    snapshot = copy.deepcopy(data)
    restored = BGERanker.from_dict(data)
    assert data == snapshot  # from_dict does not consume its input
    assert restored.to_dict() == data
    assert restored.device == ComponentDevice.from_str("cpu")
    assert restored.token == Secret.from_env_var("MY_HF_TOKEN")


def test_from_dict_keeps_no_device_as_none() -> None:
    restored = BGERanker.from_dict(BGERanker().to_dict())
    assert restored.device is None
    assert restored.to_dict() == BGERanker().to_dict()


def test_a_plain_token_cannot_be_saved() -> None:
    with pytest.raises(ValueError, match="token"):
        BGERanker(token=Secret.from_token("hf_secret")).to_dict()


def test_a_given_reranker_cannot_be_saved(core: Reranker) -> None:
    with pytest.raises(SerializationError, match="cannot be saved"):
        BGERanker(reranker=core).to_dict()


def test_remote_and_serving_settings_round_trip_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGE_TEST_TEI_KEY", "sk-never-saved")
    ranker = BGERanker(
        model="BAAI/bge-reranker-v2-m3",
        top_k=4,
        query_max_length=100,
        long_passages="truncate",  # windows are local only
        window_overlap=32,
        max_windows=4,
        batch_wait_ms=2.5,
        revision="main",
        cache_dir="/tmp/hf-cache",
        local_files_only=False,  # falsy values are kept, not dropped
        trust_remote_code=False,
        backend="tei",
        base_url="http://127.0.0.1:9",
        api_key=Secret.from_env_var(["BGE_TEST_TEI_KEY", "OTHER_KEY"], strict=False),
        request_timeout=7.5,
        max_concurrent_requests=2,
        max_texts_per_request=16,
        verify_tls=False,
    )
    data = ranker.to_dict()
    assert data == {
        "type": TYPE,
        "init_parameters": {
            "model": "BAAI/bge-reranker-v2-m3",
            "device": None,
            "token": {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False},
            "top_k": 4,
            **PROMPTS,
            "scale_score": True,
            "score_threshold": None,
            "meta_fields_to_embed": None,
            "embedding_separator": "\n",
            "max_length": None,
            "max_batch_tokens": None,
            "dtype": None,
            "query_max_length": 100,
            "long_passages": "truncate",
            "window_overlap": 32,
            "max_windows": 4,
            "batch_wait_ms": 2.5,
            "revision": "main",
            "cache_dir": "/tmp/hf-cache",
            "local_files_only": False,
            "trust_remote_code": False,
            "backend": "tei",
            "base_url": "http://127.0.0.1:9",
            "api_key": {"type": "env_var", "env_vars": ["BGE_TEST_TEI_KEY", "OTHER_KEY"], "strict": False},
            "request_timeout": 7.5,
            "max_concurrent_requests": 2,
            "max_texts_per_request": 16,
            "verify_tls": False,
            **dict.fromkeys(ST_LOADING),
        },
    }
    assert "sk-never-saved" not in json.dumps(data)
    restored = BGERanker.from_dict(copy.deepcopy(data))
    assert restored.to_dict() == data
    assert restored.api_key == Secret.from_env_var(["BGE_TEST_TEI_KEY", "OTHER_KEY"], strict=False)
    assert restored.reranker is ranker.reranker  # equal settings, one shared core
    config = restored.reranker.config
    assert (config.backend, config.base_url, config.api_key_env) == (
        "tei",
        "http://127.0.0.1:9",
        "BGE_TEST_TEI_KEY",
    )
    assert (config.long_passages, config.window_overlap, config.max_windows) == ("truncate", 32, 4)
    assert (config.batch_wait_ms, config.request_timeout, config.verify_tls) == (2.5, 7.5, False)
    assert not restored.reranker.is_loaded


def test_api_key_names_the_first_variable_that_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGE_TEST_KEY_A", raising=False)
    monkeypatch.setenv("BGE_TEST_KEY_B", "sk-b")
    remote = {"model": "some/model", "backend": "infinity", "base_url": "http://127.0.0.1:9"}
    both = Secret.from_env_var(["BGE_TEST_KEY_A", "BGE_TEST_KEY_B"])
    assert BGERanker(**remote, api_key=both).reranker.config.api_key_env == "BGE_TEST_KEY_B"
    monkeypatch.delenv("BGE_TEST_KEY_B")
    # None set: a strict Secret still names its first variable, so the core's error at connect names it
    assert BGERanker(**remote, api_key=both).reranker.config.api_key_env == "BGE_TEST_KEY_A"
    lenient = Secret.from_env_var(["BGE_TEST_KEY_A", "BGE_TEST_KEY_B"], strict=False)
    assert BGERanker(**remote, api_key=lenient).reranker.config.api_key_env is None  # no key sent
    assert BGERanker(**remote).reranker.config.api_key_env is None


def test_api_key_must_be_an_env_var_secret() -> None:
    with pytest.raises(ValueError, match=r"api_key must name environment variables.*Secret.from_env_var"):
        BGERanker(backend="cohere", api_key=Secret.from_token("sk-plain"))
    with pytest.raises(TypeError, match="api_key must be a Secret or None, got str"):
        BGERanker(backend="cohere", api_key="TEI_API_KEY")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"backend": "tei"}, "backend='tei' needs base_url"),
        ({"backend": "triton", "base_url": "http://x"}, "backend must be one of"),
        ({"long_passages": "chunk"}, "long_passages must be"),
        ({"batch_wait_ms": 5000.0}, "batch_wait_ms must be between 0 and 1000"),
        ({"request_timeout": 0.0}, "request_timeout must be > 0"),
    ],
)
def test_bad_serving_settings_fail_at_init(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BGERanker(**settings)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"backend": "tei", "base_url": "http://127.0.0.1:9"}, "backend, base_url"),
        ({"api_key": Secret.from_env_var("SOME_KEY")}, "api_key"),
        ({"batch_wait_ms": 0.0}, "batch_wait_ms"),  # a falsy value is still a given setting
        ({"long_passages": "window"}, "long_passages"),
    ],
)
def test_a_given_reranker_refuses_serving_settings(
    core: Reranker, settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"either reranker or model settings.*{named}"):
        BGERanker(reranker=core, **settings)


# --- pipelines ------------------------------------------------------------------------------------


def bm25_pipeline(ranker: BGERanker, docs: list[Document]) -> Pipeline:
    """InMemoryDocumentStore -> InMemoryBM25Retriever -> ``ranker``."""
    store = InMemoryDocumentStore()
    store.write_documents(docs)
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    pipeline.add_component("ranker", ranker)
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline


def pipeline_input(top_k: int | None = None) -> dict[str, Any]:
    """Inputs of :func:`bm25_pipeline` for ``QUERY``."""
    ranker: dict[str, Any] = {"query": QUERY}
    if top_k is not None:
        ranker["top_k"] = top_k
    return {"retriever": {"query": QUERY}, "ranker": ranker}


def test_pipeline_run(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    pipeline = bm25_pipeline(BGERanker(model=model_dir, top_k=4), docs)
    result = pipeline.run(pipeline_input(), include_outputs_from={"retriever"})
    retrieved = result["retriever"]["documents"]
    assert len(retrieved) > 4  # so top_k=4 really cuts
    out = result["ranker"]["documents"]
    assert_same_ranking(ranking(result["ranker"]), expected_ranking(core, QUERY, retrieved)[:4])
    by_id = {d.id: d for d in docs}
    assert all(d.meta == by_id[d.id].meta and d.content == by_id[d.id].content for d in out)
    # a second run warms up again (idempotently) and gives the same answer
    assert ranking(pipeline.run(pipeline_input())["ranker"]) == ranking(result["ranker"])


@pytest.mark.asyncio
async def test_pipeline_run_async(model_dir: Path, core: Reranker, docs: list[Document]) -> None:
    pipeline = bm25_pipeline(BGERanker(model=model_dir, top_k=4), docs)
    result = await pipeline.run_async(pipeline_input(top_k=2), include_outputs_from={"retriever"})
    retrieved = result["retriever"]["documents"]
    assert_same_ranking(ranking(result["ranker"]), expected_ranking(core, QUERY, retrieved)[:2])


_LOAD_AND_RUN = """
import json, sys
from haystack import Document, Pipeline

payload = json.load(sys.stdin)
pipeline = Pipeline.loads(payload["yaml"])
store = pipeline.get_component("retriever").document_store
store.write_documents([Document.from_dict(d) for d in payload["documents"]])
result = pipeline.run({"retriever": {"query": payload["query"]}, "ranker": {"query": payload["query"]}})
ranker = pipeline.get_component("ranker")
print(json.dumps({
    "class": f"{type(ranker).__module__}.{type(ranker).__name__}",
    "ranked": [[d.id, d.score, d.meta] for d in result["ranker"]["documents"]],
}))
"""


def fresh_python_env() -> dict[str, str]:
    """The environment of a fresh interpreter: offline, no telemetry, no widened Haystack allowlist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAYSTACK_")}
    env |= {"HAYSTACK_TELEMETRY_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env


@pytest.mark.slow
def test_yaml_round_trip_in_a_fresh_process(model_dir: Path, docs: list[Document]) -> None:
    ranker = BGERanker(
        model=model_dir,
        top_k=3,
        meta_fields_to_embed=["title"],
        scale_score=False,
        long_passages="window",
        batch_wait_ms=1.0,
        api_key=Secret.from_env_var("BGE_TEST_UNUSED_KEY", strict=False),
    )
    pipeline = bm25_pipeline(ranker, docs)
    want = pipeline.run(pipeline_input())["ranker"]["documents"]
    yaml = pipeline.dumps()
    assert "long_passages: window" in yaml
    assert f"type: {TYPE}" in yaml
    assert Pipeline.loads(yaml).to_dict() == pipeline.to_dict()

    payload = {"yaml": yaml, "query": QUERY, "documents": [d.to_dict() for d in docs]}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=fresh_python_env(),
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"] == TYPE
    assert [i for i, _, _ in got["ranked"]] == [d.id for d in want]
    assert [s for _, s, _ in got["ranked"]] == pytest.approx([d.score for d in want], abs=1e-6)
    assert [m for _, _, m in got["ranked"]] == [d.meta for d in want]


@pytest.mark.slow
def test_example_runs_offline_on_a_local_model(model_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "haystack_example.py"), "--model", str(model_dir)],
        capture_output=True,
        text=True,
        env=fresh_python_env(),
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "query: What do giant pandas eat?"
    assert [line.split(".", 1)[0] for line in lines[1:4]] == ["1", "2", "3"]  # --top-n default 3
    assert lines[4] == "reloaded from YAML: same ranking = True"


# --- imports --------------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=fresh_python_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_importing_the_package_does_not_import_haystack() -> None:
    proc = run_python("import sys, bge_rerank_integrations; print('haystack' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_without_haystack_the_error_names_the_extra() -> None:
    code = """
import sys
sys.modules["haystack"] = None  # as if Haystack were not installed
try:
    import bge_rerank_integrations.haystack
except ImportError as exc:
    print(exc)
    print(type(exc.__cause__).__name__)
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    message, cause = proc.stdout.strip().splitlines()
    assert 'pip install "bge-rerank-integrations[haystack]"' in message
    assert cause in {"ImportError", "ModuleNotFoundError"}


# --- output documents own their meta ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_returned_meta_is_a_deep_copy(model_dir: Path) -> None:
    docs = [
        Document(content=text, meta={"source": {"path": f"f{i}.txt", "tags": ["a"]}, "n": i})
        for i, text in enumerate(TEXTS[:4])
    ]
    before = copy.deepcopy(docs)
    ranker = BGERanker(model=model_dir)
    for result in (ranker.run(QUERY, docs), await ranker.run_async(QUERY, docs)):
        out = result["documents"]
        assert len(out) == len(docs)
        for doc in out:
            doc.meta["source"]["tags"].append("changed downstream")
            doc.meta["source"]["path"] = "elsewhere"
        assert docs == before  # the caller's nested meta is untouched
        assert out[0].meta["source"]["tags"] == ["a", "changed downstream"]


# --- the sentence-transformers ranker's prompts, and its saved pipelines ----------------------------


@pytest.mark.asyncio
async def test_prefixes_and_suffixes_change_the_scored_text_as_documented(model_dir: Path) -> None:
    recorder = RecordingReranker(str(model_dir))
    ranker = BGERanker(
        reranker=recorder,
        query_prefix="Instruct: find the capital\nQuery: ",
        query_suffix=" (answer briefly)",
        document_prefix="passage: ",
        document_suffix=" [end]",
        meta_fields_to_embed=["title"],
        embedding_separator=" | ",
    )
    docs = [
        Document(content="Berlin is the capital of Germany.", meta={"title": "Berlin"}),
        Document(content="No title.", meta={"title": None}),
        Document(content=None, meta={"title": "Only a title"}),
    ]
    want = (
        f"Instruct: find the capital\nQuery: {QUERY} (answer briefly)",
        [
            "passage: Berlin | Berlin is the capital of Germany. [end]",
            "passage: No title. [end]",
            "passage: Only a title |  [end]",
        ],
    )
    ranker.run(QUERY, docs)
    await ranker.run_async(QUERY, docs)
    assert recorder.calls == [want, want]
    with pytest.raises(ValueError, match="non-empty query"):
        ranker.run("  ", docs)  # the query itself must say something, whatever the prompts


ST_TYPE = (
    "haystack_integrations.components.rankers.sentence_transformers."
    "sentence_transformers_similarity.SentenceTransformersSimilarityRanker"
)


def sentence_transformers_ranker_dict(model: str) -> dict[str, Any]:
    """``SentenceTransformersSimilarityRanker.to_dict()``, every init parameter as that ranker saves it."""
    return {
        "type": ST_TYPE,
        "init_parameters": {
            "device": {"type": "single", "device": "cpu"},  # it saves the device it resolved
            "model": model,
            "token": {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False},
            "top_k": 3,
            "query_prefix": "Represent this question: ",
            "query_suffix": " ?",
            "document_prefix": "passage: ",
            "document_suffix": "",
            "meta_fields_to_embed": ["title"],
            "embedding_separator": "\n",
            "scale_score": True,
            "score_threshold": None,
            "trust_remote_code": False,
            "model_kwargs": None,
            "tokenizer_kwargs": None,
            "config_kwargs": None,
            "backend": "torch",
            "batch_size": 16,
        },
    }


def test_a_saved_sentence_transformers_pipeline_moves_by_changing_the_type_line(
    model_dir: Path, core: Reranker, docs: list[Document]
) -> None:
    from haystack.marshal import YamlMarshaller

    # The file a user has: our BM25 pipeline's layout, with the sentence-transformers ranker in it.
    saved = bm25_pipeline(BGERanker(model=model_dir), docs).to_dict()
    saved["components"]["ranker"] = sentence_transformers_ranker_dict(str(model_dir))
    st_yaml = YamlMarshaller().marshal(saved)
    assert f"type: {ST_TYPE}" in st_yaml
    moved = st_yaml.replace(f"type: {ST_TYPE}", f"type: {TYPE}")
    changed = [(a, b) for a, b in zip(st_yaml.splitlines(), moved.splitlines(), strict=True) if a != b]
    assert len(changed) == 1  # the type line, and nothing else

    pipeline = Pipeline.loads(moved)
    ranker = pipeline.get_component("ranker")
    assert isinstance(ranker, BGERanker)
    assert ranker.device == ComponentDevice.from_str("cpu")
    assert ranker.reranker.config.backend == "local"
    # (the loaded store may share the saved one's in-memory index, so overwrite rather than add)
    pipeline.get_component("retriever").document_store.write_documents(docs, DuplicatePolicy.OVERWRITE)
    result = pipeline.run(pipeline_input(), include_outputs_from={"retriever"})
    retrieved = result["retriever"]["documents"]
    texts = [f"passage: {d.meta['title']}\n{d.content}" for d in retrieved]
    scores = core.score(f"Represent this question: {QUERY} ?", texts, normalize=True)
    want = sorted(((d.id, s) for d, s in zip(retrieved, scores, strict=True)), key=lambda p: -p[1])[:3]
    assert_same_ranking(ranking(result["ranker"]), want)
    plain = expected_ranking(core, QUERY, retrieved)[:3]
    assert [s for _, s in plain] != pytest.approx([s for _, s in want], abs=1e-6)  # the prompts counted
    # saved again, it keeps what it was given and loads the same
    data = ranker.to_dict()["init_parameters"]
    assert {k: data[k] for k in sentence_transformers_ranker_dict("")["init_parameters"]} == {
        **sentence_transformers_ranker_dict(str(model_dir))["init_parameters"]
    }
    assert Pipeline.loads(pipeline.dumps()).to_dict() == pipeline.to_dict()


def test_torch_backend_is_the_local_one(model_dir: Path) -> None:
    assert BGERanker(model=model_dir, backend="torch").reranker is BGERanker(model=model_dir).reranker


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"query_prefix": None}, TypeError, "query_prefix must be a str, got NoneType"),
        ({"query_suffix": 1}, TypeError, "query_suffix must be a str, got int"),
        ({"document_prefix": b"x"}, TypeError, "document_prefix must be a str, got bytes"),
        ({"document_suffix": ["x"]}, TypeError, "document_suffix must be a str, got list"),
        ({"backend": "onnx"}, ValueError, "backend='onnx' is a sentence-transformers backend"),
        ({"backend": "openvino"}, ValueError, "backend='openvino' is a sentence-transformers backend"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": "16"}, TypeError, "batch_size must be an int or None, got str"),
        ({"model_kwargs": {"torch_dtype": "float16"}}, ValueError, "model_kwargs is a sentence-transformers"),
        ({"tokenizer_kwargs": {"model_max_length": 8}}, ValueError, "tokenizer_kwargs"),
        ({"config_kwargs": {"num_labels": 1}}, ValueError, "config_kwargs"),
    ],
)
def test_bad_sentence_transformers_options_are_named(
    settings: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        BGERanker(**settings)


def test_empty_loading_kwargs_and_a_batch_size_are_taken_and_saved() -> None:
    ranker = BGERanker(batch_size=32, model_kwargs={}, tokenizer_kwargs=None, config_kwargs={})
    data = ranker.to_dict()["init_parameters"]
    assert (data["batch_size"], data["model_kwargs"], data["tokenizer_kwargs"], data["config_kwargs"]) == (
        32,
        {},
        None,
        {},
    )
    assert BGERanker.from_dict(ranker.to_dict()).to_dict() == ranker.to_dict()


# --- device given as a string -----------------------------------------------------------------------


def test_a_device_string_is_taken_as_a_component_device(
    model_dir: Path, core: Reranker, docs: list[Document]
) -> None:
    ranker = BGERanker(model=model_dir, device="cpu", top_k=3)
    assert ranker.device == ComponentDevice.from_str("cpu")
    assert ranker.to_dict()["init_parameters"]["device"] == {"type": "single", "device": "cpu"}
    assert ranker.reranker.config.device == "cpu"
    result = bm25_pipeline(ranker, docs).run(pipeline_input(), include_outputs_from={"retriever"})
    want = expected_ranking(core, QUERY, result["retriever"]["documents"])[:3]
    assert_same_ranking(ranking(result["ranker"]), want)


def test_cuda_as_a_string_is_accepted_at_init_and_loads_nothing(model_dir: Path) -> None:
    ranker = BGERanker(model=model_dir, device="cuda", max_batch_tokens=4327)  # settings no other test uses
    assert ranker.device == ComponentDevice.from_str("cuda")
    data = ranker.to_dict()
    assert data["init_parameters"]["device"] == {"type": "single", "device": "cuda"}
    restored = BGERanker.from_dict(data)
    assert restored.device == ComponentDevice.from_str("cuda")
    assert restored.reranker is ranker.reranker
    assert ranker.reranker.config.device == "cuda"
    assert not ranker.reranker.is_loaded


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("tpu", ValueError, "device must name a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got 'tpu'"),
        ("", ValueError, "device must name a device"),
        (
            0,
            TypeError,
            "device must be a ComponentDevice, a device string such as 'cuda:0', or None, got int",
        ),
        (["cpu"], TypeError, "device must be a ComponentDevice.*got list"),
    ],
)
def test_a_bad_device_is_named(device: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BGERanker(device=device)
