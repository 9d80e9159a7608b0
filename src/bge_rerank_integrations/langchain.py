"""LangChain adapters: a rerank document compressor and a cross-encoder, both on the shared scoring core.

:class:`BGERerankCompressor` drops into ``ContextualCompressionRetriever`` (LangChain's rerank
compressor idiom, like ``CohereRerank``); :class:`BGECrossEncoder` plugs into ``CrossEncoderReranker``.
Both only turn documents into text, call :class:`~bge_rerank_integrations.reranker.Reranker` and
rebuild the documents; adapters built with the same model settings share one loaded model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, field_validator
except ImportError as exc:
    raise ImportError(
        "bge_rerank_integrations.langchain needs langchain-core: "
        'pip install "bge-rerank-integrations[langchain]"'
    ) from exc

from bge_rerank_integrations.adapter_support import check_top, text_with_meta
from bge_rerank_integrations.pydantic_settings import RerankerSettings
from bge_rerank_integrations.reranker import Reranker, RerankResult

__all__ = ["BGECrossEncoder", "BGERerankCompressor"]

RerankDocument = str | Mapping[str, Any] | Document
"""What :meth:`BGERerankCompressor.rerank` ranks: plain text, a dict of fields, or a LangChain document."""


_INSTANCE_TOP_N = -1
"""``rerank(top_n=...)``'s default, as in ``CohereRerank``: below 1 means the instance's ``top_n``."""


class BGERerankCompressor(RerankerSettings, BaseDocumentCompressor):
    """Rerank retrieved documents with bge-reranker-v2-m3 and keep the best ``top_n``.

    Returns new documents, best first, each with its ``id``, a deep copy of its metadata and
    ``metadata["relevance_score"]``; the caller's documents are left untouched. With
    ``backend="tei"`` (or ``"vllm"``, ``"infinity"``, ``"cohere"``) and ``base_url``, the scores come
    from a serving engine's ``/rerank`` instead, on the same scale.

    Like ``CohereRerank``, it also has :meth:`rerank` (and :meth:`arerank`), which ranks plain
    strings, dicts or documents and returns ``[{"index": i, "relevance_score": s}, ...]``.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> compressor = BGERerankCompressor(top_n=3)  # the model loads on the first query
        >>> retriever = ContextualCompressionRetriever(
        ...     base_compressor=compressor, base_retriever=vectorstore.as_retriever(search_kwargs={"k": 20})
        ... )
        >>> retriever.invoke("what is a panda?")[0].metadata["relevance_score"]
        0.998
        >>> compressor.rerank(["pandas eat bamboo", "hello"], "what do pandas eat?")
        [{'index': 0, 'relevance_score': 0.997}, {'index': 1, 'relevance_score': 0.001}]
        >>> remote = BGERerankCompressor(top_n=3, backend="tei", base_url="http://tei:8080")
    """

    # Assigned options (``compressor.top_n = 0``) are checked like constructor arguments; the model
    # settings stay frozen.
    model_config = ConfigDict(validate_assignment=True)

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
            TypeError: ``query`` is not a ``str``, or a document is not a ``Document``.
            ValueError: ``top_n`` was set below 1 after construction (``model_copy(update=...)``).
        """
        texts = self._texts(_check_documents(documents), None)
        ranked = self._reranker.rank(query, texts, top_n=self._top_n(self.top_n), normalize=self.normalize)
        return _rebuilt(documents, ranked)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents` with the scoring off the event loop (the core's ``arank``)."""
        texts = self._texts(_check_documents(documents), None)
        ranked = await self._reranker.arank(
            query, texts, top_n=self._top_n(self.top_n), normalize=self.normalize
        )
        return _rebuilt(documents, ranked)

    def rerank(
        self,
        documents: Sequence[RerankDocument],
        query: str,
        *,
        rank_fields: Sequence[str] | None = None,
        top_n: int | None = _INSTANCE_TOP_N,
    ) -> list[dict[str, Any]]:
        """Rank ``documents`` against ``query``: ``[{"index": i, "relevance_score": s}, ...]``, best first.

        The call ``CohereRerank.rerank`` takes, so code written for it runs unchanged. ``index`` is the
        position in ``documents``; ``relevance_score`` is a plain float (0..1 unless
        ``normalize=False``); ties keep input order. What is scored for each document:

        - a ``str``: the string itself;
        - a ``dict``: one ``key: value`` line per field, in ``rank_fields`` order (every key, in the
          dict's order, when ``rank_fields`` is ``None`` or empty); a missing key or a ``None``
          value is left out, a non-string value is written as JSON; a dict with none of the
          fields is scored as an empty text;
        - a ``Document``: as :meth:`compress_documents` scores it (``metadata_fields`` values, then
          the page content); ``rank_fields`` does not apply to it.

        Args:
            documents: the texts to rank; an empty sequence returns ``[]`` without loading the model.
            query: the query to rank against.
            rank_fields: the dict keys to score, in this order.
            top_n: most results to return; ``None`` returns all; not given, or below 1 (Cohere's
                ``-1`` default), the instance's ``top_n``.

        Raises:
            TypeError: ``query`` is not a ``str``, a document is of another type, or ``rank_fields``
                is a bare string.
            ValueError: the instance's ``top_n`` was set below 1 after construction.
        """
        texts = self._texts(documents, rank_fields)
        ranked = self._reranker.rank(query, texts, top_n=self._top_n(top_n), normalize=self.normalize)
        return _as_dicts(ranked)

    async def arerank(
        self,
        documents: Sequence[RerankDocument],
        query: str,
        *,
        rank_fields: Sequence[str] | None = None,
        top_n: int | None = _INSTANCE_TOP_N,
    ) -> list[dict[str, Any]]:
        """:meth:`rerank` without blocking the event loop (the core's ``arank``)."""
        texts = self._texts(documents, rank_fields)
        ranked = await self._reranker.arank(query, texts, top_n=self._top_n(top_n), normalize=self.normalize)
        return _as_dicts(ranked)

    def _top_n(self, top_n: int | None) -> int | None:
        """The ``top_n`` of one call: ``top_n``, or the instance's when it is below 1 (Cohere's rule)."""
        if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n < 1:
            top_n = self.top_n
        # The instance's top_n is checked on construction and assignment; this also catches
        # model_copy(update=...), which skips validation.
        return check_top("top_n", top_n)

    def _texts(self, documents: object, rank_fields: object) -> list[str]:
        """The scored text of each document (the rules are in :meth:`rerank`'s docstring)."""
        if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
            raise TypeError(f"documents must be a sequence, got {type(documents).__name__}")
        fields = _check_rank_fields(rank_fields)
        texts = []
        for i, doc in enumerate(documents):
            if isinstance(doc, str):
                texts.append(doc)
            elif isinstance(doc, Document):
                texts.append(text_with_meta(doc.page_content, doc.metadata, self.metadata_fields))
            elif isinstance(doc, Mapping):
                texts.append(_fields_text(doc, fields))
            else:
                kind = type(doc).__name__
                raise TypeError(f"documents[{i}] must be a str, a dict or a Document, got {kind}")
        return texts


def _check_documents(documents: Sequence[Document]) -> Sequence[Document]:
    """``documents`` if it is a sequence of ``Document`` (what ``compress_documents`` takes)."""
    if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence of Document, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] must be a Document, got {type(doc).__name__}")
    return documents


def _check_rank_fields(rank_fields: object) -> list[str] | None:
    """The distinct ``rank_fields`` in order, or ``None`` for every key (``None`` or empty)."""
    if rank_fields is None:
        return None
    if isinstance(rank_fields, str | bytes) or not isinstance(rank_fields, Sequence):
        raise TypeError(f"rank_fields must be a list of keys or None, got {rank_fields!r:.80}")
    for i, key in enumerate(rank_fields):
        if not isinstance(key, str):
            raise TypeError(f"rank_fields[{i}] must be a str, got {type(key).__name__}")
    return list(dict.fromkeys(rank_fields)) or None


def _fields_text(document: Mapping[Any, Any], fields: list[str] | None) -> str:
    """``key: value`` lines of the chosen fields (all if ``fields`` is ``None``), present and not ``None``."""
    keys = list(document) if fields is None else [k for k in fields if k in document]
    return "\n".join(f"{k}: {_value_text(document[k])}" for k in keys if document[k] is not None)


def _value_text(value: object) -> str:
    """A string as it is; anything else as JSON (``true``, ``3``, ``["a", "b"]``), readable by the model."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _as_dicts(ranked: list[RerankResult]) -> list[dict[str, Any]]:
    return [{"index": r.index, "relevance_score": r.score} for r in ranked]


def _rebuilt(documents: Sequence[Document], ranked: list[RerankResult]) -> list[Document]:
    """New documents in ``ranked`` order, each with a deep copy of its metadata and its score."""
    out = []
    for result in ranked:
        source = documents[result.index]
        metadata = copy.deepcopy(source.metadata)  # nested values too: the output never aliases the input
        metadata["relevance_score"] = result.score
        out.append(source.model_copy(update={"metadata": metadata}))
    return out


class BGECrossEncoder(RerankerSettings, BaseCrossEncoder):
    """bge-reranker-v2-m3 as a LangChain ``BaseCrossEncoder``, for ``CrossEncoderReranker``.

    Example:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> compressor = CrossEncoderReranker(model=BGECrossEncoder(), top_n=3)
        >>> BGECrossEncoder().score([("what is a panda?", "The giant panda is a bear.")])
        [0.998]
    """

    model_config = ConfigDict(validate_assignment=True)  # ``encoder.normalize = ...`` is checked too

    normalize: bool = True
    """Scores as the sigmoid of the logit, in 0..1 (default); ``False`` gives the raw logits."""

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Store the fields, or take a ready ``reranker`` instead of model settings; loads nothing."""
        super().__init__(reranker=reranker, **data)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order (0..1 unless ``normalize=False``)."""
        return self._reranker.score_pairs(text_pairs, normalize=self.normalize)
