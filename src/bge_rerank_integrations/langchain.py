"""LangChain adapters: a rerank document compressor and a cross-encoder, both on the shared scoring core.

:class:`BGERerankCompressor` drops into ``ContextualCompressionRetriever`` (LangChain's rerank
compressor idiom, like ``CohereRerank``); :class:`BGECrossEncoder` plugs into ``CrossEncoderReranker``.
Both only turn documents into text, call :class:`~bge_rerank_integrations.reranker.Reranker` and
rebuild the documents; adapters built with the same model settings share one loaded model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
except ImportError as exc:
    raise ImportError(
        "bge_rerank_integrations.langchain needs langchain-core: "
        'pip install "bge-rerank-integrations[langchain]"'
    ) from exc

from bge_rerank_integrations.adapter_support import check_top, resolve_reranker, text_with_meta
from bge_rerank_integrations.config import DEFAULT_MODEL, DType, RerankerConfig
from bge_rerank_integrations.reranker import Reranker, rank_scores

__all__ = ["BGECrossEncoder", "BGERerankCompressor"]

_DEFAULTS = RerankerConfig()

# The RerankerConfig fields an adapter exposes as its own (``normalize`` is a per-call choice instead,
# so a compressor wanting raw logits shares the model with one wanting 0..1 scores).
_SETTINGS = (
    "model",
    "device",
    "dtype",
    "max_length",
    "query_max_length",
    "max_batch_tokens",
    "revision",
    "cache_dir",
    "local_files_only",
    "trust_remote_code",
)


class _BGESettings(BaseModel):
    """Model settings shared by both adapters, resolved to one (process-wide shared) core reranker."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(default=DEFAULT_MODEL, frozen=True)
    """Hugging Face model id or local folder of the cross-encoder."""
    device: str | None = Field(default=_DEFAULTS.device, frozen=True)
    """Torch device such as ``"cuda:1"``; ``None`` picks cuda, then mps, then cpu."""
    dtype: DType = Field(default=_DEFAULTS.dtype, frozen=True)
    """``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    max_length: int = Field(default=_DEFAULTS.max_length, frozen=True)
    """Tokens of a whole (query, passage) pair, special tokens included; longer passages are cut."""
    query_max_length: int | None = Field(default=None, frozen=True)
    """Tokens kept of the query; ``None`` means ``max_length * 3 // 4``, as the reference does."""
    max_batch_tokens: int = Field(default=_DEFAULTS.max_batch_tokens, frozen=True)
    """Padded tokens per forward pass (batch size times its longest pair): lower it if memory is short."""
    revision: str | None = Field(default=_DEFAULTS.revision, frozen=True)
    """Hub revision (branch, tag or commit) of ``model``."""
    cache_dir: str | None = Field(default=_DEFAULTS.cache_dir, frozen=True)
    """Hub cache folder; ``None`` uses the Hugging Face default."""
    local_files_only: bool = Field(default=_DEFAULTS.local_files_only, frozen=True)
    """Load only from the local cache or folder, never from the Hub."""
    trust_remote_code: bool = Field(default=_DEFAULTS.trust_remote_code, frozen=True)
    """Allow model code from the Hub (not needed for bge-reranker-v2-m3)."""
    normalize: bool = True
    """Scores as the sigmoid of the logit, in 0..1 (default); ``False`` gives the raw logits."""

    _reranker: Reranker = PrivateAttr()

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Resolve the core reranker (shared per settings, or the one given); loads nothing.

        The settings fields always report the core's resolved configuration (``query_max_length=None``
        reads back as ``max_length * 3 // 4``, ``dtype="fp16"`` as ``"float16"``).

        Args:
            reranker: a core reranker to use instead of the shared one for the model settings.
            **data: the fields of this class.

        Raises:
            ValueError: a setting is out of range, or both ``reranker`` and model settings are given.
            TypeError: ``reranker`` is not a :class:`Reranker`, or a setting has the wrong type.
        """
        given = {
            name: os.fspath(value) if isinstance(value, os.PathLike) else value
            for name in _SETTINGS
            if (value := data.pop(name, None)) is not None
        }
        if reranker is not None and given:
            raise ValueError(
                "pass either reranker or model settings, not both: got reranker and "
                + ", ".join(sorted(given))
            )
        core = resolve_reranker(reranker, **given)
        super().__init__(**data, **{name: getattr(core.config, name) for name in _SETTINGS})
        self._reranker = core

    @property
    def reranker(self) -> Reranker:
        """The core reranker doing the scoring (``.load()`` it to warm up before the first query)."""
        return self._reranker


class BGERerankCompressor(_BGESettings, BaseDocumentCompressor):
    """Rerank retrieved documents with bge-reranker-v2-m3 and keep the best ``top_n``.

    Returns new documents, best first, each with its ``id``, a copy of its metadata and
    ``metadata["relevance_score"]``; the caller's documents are left untouched.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> compressor = BGERerankCompressor(top_n=3)  # the model loads on the first query
        >>> retriever = ContextualCompressionRetriever(
        ...     base_compressor=compressor, base_retriever=vectorstore.as_retriever(search_kwargs={"k": 20})
        ... )
        >>> retriever.invoke("what is a panda?")[0].metadata["relevance_score"]
        0.998
    """

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


class BGECrossEncoder(_BGESettings, BaseCrossEncoder):
    """bge-reranker-v2-m3 as a LangChain ``BaseCrossEncoder``, for ``CrossEncoderReranker``.

    Example:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> compressor = CrossEncoderReranker(model=BGECrossEncoder(), top_n=3)
        >>> BGECrossEncoder().score([("what is a panda?", "The giant panda is a bear.")])
        [0.998]
    """

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Store the fields, or take a ready ``reranker`` instead of model settings; loads nothing."""
        super().__init__(reranker=reranker, **data)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order (0..1 unless ``normalize=False``)."""
        return self._reranker.score_pairs(text_pairs, normalize=self.normalize)
