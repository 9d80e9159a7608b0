"""LangChain adapters: a rerank document compressor and a cross-encoder, both on the shared scoring core.

:class:`BGERerankCompressor` drops into ``ContextualCompressionRetriever`` (LangChain's rerank
compressor idiom, like ``CohereRerank``); :class:`BGECrossEncoder` plugs into ``CrossEncoderReranker``.
Both only turn documents into text, call :class:`~bge_rerank_integrations.reranker.Reranker` and
rebuild the documents; adapters built with the same model settings share one loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import field_validator
except ImportError as exc:
    raise ImportError(
        "bge_rerank_integrations.langchain needs langchain-core: "
        'pip install "bge-rerank-integrations[langchain]"'
    ) from exc

from bge_rerank_integrations.adapter_support import check_top, text_with_meta
from bge_rerank_integrations.pydantic_settings import RerankerSettings
from bge_rerank_integrations.reranker import Reranker, rank_scores

__all__ = ["BGECrossEncoder", "BGERerankCompressor"]


class BGERerankCompressor(RerankerSettings, BaseDocumentCompressor):
    """Rerank retrieved documents with bge-reranker-v2-m3 and keep the best ``top_n``.

    Returns new documents, best first, each with its ``id``, a copy of its metadata and
    ``metadata["relevance_score"]``; the caller's documents are left untouched. With
    ``backend="tei"`` (or ``"vllm"``, ``"infinity"``, ``"cohere"``) and ``base_url``, the scores come
    from a serving engine's ``/rerank`` instead, on the same scale.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> compressor = BGERerankCompressor(top_n=3)  # the model loads on the first query
        >>> retriever = ContextualCompressionRetriever(
        ...     base_compressor=compressor, base_retriever=vectorstore.as_retriever(search_kwargs={"k": 20})
        ... )
        >>> retriever.invoke("what is a panda?")[0].metadata["relevance_score"]
        0.998
        >>> remote = BGERerankCompressor(top_n=3, backend="tei", base_url="http://tei:8080")
    """

    normalize: bool = True
    """Scores as the sigmoid of the logit, in 0..1 (default); ``False`` gives the raw logits."""
    top_n: int | None = 3
    """How many documents to return, best first; ``None`` returns them all, reranked."""
    metadata_fields: Sequence[str] | None = None
    """Metadata keys whose values are put before the page content (one per line) in the scored text."""

    # Restated in each public class: type checkers otherwise synthesise a fields-only __init__.
    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Store the fields, or take a ready ``reranker`` instead of model settings; loads nothing."""
        super().__init__(reranker=reranker, **data)

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: object) -> int | None:
        return check_top("top_n", value)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Score ``documents`` against ``query`` and return the best ``top_n`` as new documents.

        An empty ``documents`` returns ``[]`` without loading the model.

        Raises:
            TypeError: ``query`` is not a ``str``.
        """
        scores = self._reranker.score(query, self._texts(documents), normalize=self.normalize)
        return self._reranked(documents, scores)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents` with the scoring off the event loop (the core's ``ascore``)."""
        scores = await self._reranker.ascore(query, self._texts(documents), normalize=self.normalize)
        return self._reranked(documents, scores)

    def _texts(self, documents: Sequence[Document]) -> list[str]:
        return [text_with_meta(d.page_content, d.metadata, self.metadata_fields) for d in documents]

    def _reranked(self, documents: Sequence[Document], scores: list[float]) -> list[Document]:
        return [
            documents[r.index].model_copy(
                update={"metadata": {**documents[r.index].metadata, "relevance_score": r.score}}
            )
            for r in rank_scores(scores, self.top_n)
        ]


class BGECrossEncoder(RerankerSettings, BaseCrossEncoder):
    """bge-reranker-v2-m3 as a LangChain ``BaseCrossEncoder``, for ``CrossEncoderReranker``.

    Example:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> compressor = CrossEncoderReranker(model=BGECrossEncoder(), top_n=3)
        >>> BGECrossEncoder().score([("what is a panda?", "The giant panda is a bear.")])
        [0.998]
    """

    normalize: bool = True
    """Scores as the sigmoid of the logit, in 0..1 (default); ``False`` gives the raw logits."""

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Store the fields, or take a ready ``reranker`` instead of model settings; loads nothing."""
        super().__init__(reranker=reranker, **data)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order (0..1 unless ``normalize=False``)."""
        return self._reranker.score_pairs(text_pairs, normalize=self.normalize)
