"""The decoder kinds through the ``Reranker`` and the three frameworks: FlagEmbedding's scores, the
core's ranking, the ``trust_remote_code`` rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.reranker import sigmoid

from .pairs import all_pairs
from .reference import REFERENCE_WARNINGS, flag_reranker

pytestmark = REFERENCE_WARNINGS

KINDS = ["v2-gemma", "v2-minicpm-layerwise", "v2.5-gemma2-lightweight"]
PARITY = 1e-4
QUERY = "What do giant pandas eat?"
TEXTS = [
    "Giant pandas eat bamboo almost exclusively, up to 38 kg a day.",
    "The Eiffel Tower is in Paris.",
    "Pandas are bears native to China; their diet is mostly bamboo shoots and leaves.",
    "Python is a programming language.",
    "Red pandas also eat bamboo, but they are not bears.",
]


@pytest.mark.parametrize("kind", KINDS)
def test_reranker_scores_equal_flagembeddings(kind: str, decoder_dirs: dict[str, Path]) -> None:
    pairs = all_pairs()
    expected = flag_reranker(kind, decoder_dirs[kind], max_length=96).compute_score(pairs)
    with Reranker(decoder_dirs[kind], trust_remote_code=True, max_length=96, device="cpu") as rr:
        assert rr.score_pairs(pairs) == pytest.approx(expected, abs=PARITY)
        assert rr.score_pairs(pairs, normalize=True) == pytest.approx(
            [sigmoid(s) for s in expected], abs=PARITY
        )


@pytest.mark.parametrize("kind", ["v2-minicpm-layerwise", "v2.5-gemma2-lightweight"])
def test_without_trust_remote_code_the_error_says_to_pass_it(
    kind: str, decoder_dirs: dict[str, Path]
) -> None:
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        Reranker(decoder_dirs[kind], device="cpu").load()


def expected_order(kind: str, folder: Path) -> list[int]:
    with Reranker(folder, trust_remote_code=True, device="cpu") as rr:
        return [r.index for r in rr.rank(QUERY, TEXTS, top_n=3)]


@pytest.mark.parametrize("kind", KINDS)
def test_llamaindex_query_engine(kind: str, decoder_dirs: dict[str, Path]) -> None:
    from llama_index.core import Document, MockEmbedding, VectorStoreIndex
    from llama_index.core.llms import MockLLM

    from bge_rerank_integrations.llamaindex import BGERerank

    documents = [Document(text=t, id_=f"doc-{i}") for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    rerank = BGERerank(model=str(decoder_dirs[kind]), trust_remote_code=True, device="cpu", top_n=3)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[rerank])
    response = engine.query(QUERY)
    got = [TEXTS.index(n.node.get_content()) for n in response.source_nodes]
    assert got == expected_order(kind, decoder_dirs[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_langchain_contextual_compression_retriever(kind: str, decoder_dirs: dict[str, Path]) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from bge_rerank_integrations.langchain import BGERerankCompressor

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_texts(TEXTS, ids=[f"doc-{i}" for i in range(len(TEXTS))])
    compressor = BGERerankCompressor(
        model=str(decoder_dirs[kind]), trust_remote_code=True, device="cpu", top_n=3
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": len(TEXTS)})
    )
    got = [TEXTS.index(d.page_content) for d in retriever.invoke(QUERY)]
    assert got == expected_order(kind, decoder_dirs[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_haystack_pipeline_yaml_round_trip(kind: str, decoder_dirs: dict[str, Path]) -> None:
    from haystack import Document, Pipeline

    from haystack_integrations.components.rankers.bge_reranker import BGERanker

    pipeline = Pipeline()
    pipeline.add_component(
        "ranker", BGERanker(model=str(decoder_dirs[kind]), trust_remote_code=True, device="cpu", top_k=3)
    )
    restored = Pipeline.loads(pipeline.dumps())
    docs = [Document(content=t, id=f"doc-{i}") for i, t in enumerate(TEXTS)]
    out = restored.run({"ranker": {"query": QUERY, "documents": docs}})
    got = [int(d.id.removeprefix("doc-")) for d in out["ranker"]["documents"]]
    assert got == expected_order(kind, decoder_dirs[kind])


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("v2-gemma", {"prompt": "Does B answer A? Yes or No."}),
        ("v2-minicpm-layerwise", {"cutoff_layers": [3]}),
        ("v2.5-gemma2-lightweight", {"cutoff_layers": [3], "compress_ratio": 2, "compress_layers": [1]}),
    ],
)
def test_kind_options_per_call_score_as_flagembedding_built_with_them(
    kind: str, options: dict[str, Any], decoder_dirs: dict[str, Path]
) -> None:
    pairs = all_pairs()[:30]
    layout = {"max_length": 96, **({"prompt": options["prompt"]} if "prompt" in options else {})}
    forward = {k: v for k, v in options.items() if k != "prompt"}
    expected = flag_reranker(kind, decoder_dirs[kind], **layout).compute_score(pairs, **forward)
    with Reranker(decoder_dirs[kind], trust_remote_code=True, max_length=96, device="cpu") as rr:
        default = rr.score_pairs(pairs)
        assert rr.score_pairs(pairs, **options) == pytest.approx(expected, abs=PARITY)
        assert default != pytest.approx(expected, abs=1e-3)  # the option made a difference
        assert rr.score_pairs(pairs) == default  # and stayed with its call


def test_an_option_of_another_kind_is_refused_through_the_reranker(decoder_dirs: dict[str, Path]) -> None:
    with Reranker(decoder_dirs["v2-gemma"], device="cpu") as rr:
        with pytest.raises(ValueError, match="cutoff_layers: the v2-gemma reranker has no such option"):
            rr.score(QUERY, TEXTS, cutoff_layers=1)
        with pytest.raises(ValueError, match=r"cutoff_layers=\[2, 3\]"):
            Reranker(decoder_dirs["v2-minicpm-layerwise"], trust_remote_code=True, device="cpu").score(
                QUERY, TEXTS, cutoff_layers=[2, 3]
            )
        assert len(rr.score(QUERY, TEXTS)) == len(TEXTS)  # the reranker still works after a refusal
