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
    from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
except ImportError as exc:
    raise ImportError(
        "bge_rerank_integrations.langchain needs langchain-core: "
        'pip install "bge-rerank-integrations[langchain]"'
    ) from exc

from bge_rerank_integrations.adapter_support import (
    MODEL_SETTINGS,
    adapter_reranker,
    check_top,
    text_with_meta,
)
from bge_rerank_integrations.config import DEFAULT_MODEL, BackendName, DType, LongPassages, RerankerConfig
from bge_rerank_integrations.reranker import Reranker, rank_scores

__all__ = ["BGECrossEncoder", "BGERerankCompressor"]

_DEFAULTS = RerankerConfig()


class _BGESettings(BaseModel):
    """Model settings shared by both adapters, resolved to one (process-wide shared) core reranker.

    The fields are the core's :data:`~bge_rerank_integrations.adapter_support.MODEL_SETTINGS`, with
    the core's defaults; ``normalize`` is this adapter's own, per-call choice.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    model: str = Field(default=DEFAULT_MODEL, frozen=True)
    """Hugging Face model id or local folder of the cross-encoder (the model name a server serves)."""
    device: str | tuple[str, ...] | None = Field(default=None, frozen=True)
    """Torch device such as ``"cuda:1"``; ``None`` picks cuda, then mps, then cpu; a list of devices
    runs one model replica per device, fed by the same batching queue."""
    dtype: DType = Field(default=_DEFAULTS.dtype, frozen=True)
    """``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
    max_length: int = Field(default=_DEFAULTS.max_length, frozen=True)
    """Tokens of a whole (query, passage) pair, special tokens included; longer passages are cut."""
    query_max_length: int | None = Field(default=None, frozen=True)
    """Tokens kept of the query; ``None`` means ``max_length * 3 // 4``, as the reference does."""
    long_passages: LongPassages = Field(default=_DEFAULTS.long_passages, frozen=True)
    """``"truncate"`` (the reference's rule) or ``"window"``: score overlapping windows of a long
    passage and keep the best, so text past ``max_length`` counts (one pair per window)."""
    window_overlap: int | None = Field(default=None, frozen=True)
    """Tokens shared by consecutive windows in ``"window"`` mode; ``None`` means ``max_length // 8``."""
    max_windows: int = Field(default=_DEFAULTS.max_windows, frozen=True)
    """Windows per passage at most in ``"window"`` mode, from its start."""
    max_batch_tokens: int = Field(default=_DEFAULTS.max_batch_tokens, frozen=True)
    """Padded tokens per forward pass (batch size times its longest pair): lower it if memory is short."""
    batch_wait_ms: float = Field(default=_DEFAULTS.batch_wait_ms, frozen=True)
    """How long a batch waits for more concurrent requests (0 batches only what is already waiting)."""
    revision: str | None = Field(default=_DEFAULTS.revision, frozen=True)
    """Hub revision (branch, tag or commit) of ``model``."""
    cache_dir: str | None = Field(default=_DEFAULTS.cache_dir, frozen=True)
    """Hub cache folder; ``None`` uses the Hugging Face default."""
    local_files_only: bool = Field(default=_DEFAULTS.local_files_only, frozen=True)
    """Load only from the local cache or folder, never from the Hub."""
    trust_remote_code: bool = Field(default=_DEFAULTS.trust_remote_code, frozen=True)
    """Allow model code from the Hub (not needed for bge-reranker-v2-m3)."""
    backend: BackendName = Field(default=_DEFAULTS.backend, frozen=True)
    """``"local"`` (torch in this process) or a serving engine's ``/rerank``: ``"tei"``, ``"vllm"``,
    ``"infinity"`` or ``"cohere"``."""
    base_url: str | None = Field(default=_DEFAULTS.base_url, frozen=True)
    """Root URL of the serving engine (needed by every remote backend but ``"cohere"``)."""
    api_key_env: str | None = Field(default=_DEFAULTS.api_key_env, frozen=True)
    """Name of the environment variable holding the serving engine's API key (never the key itself)."""
    request_timeout: float = Field(default=_DEFAULTS.request_timeout, frozen=True)
    """Seconds before a remote request is abandoned (and retried)."""
    max_concurrent_requests: int = Field(default=_DEFAULTS.max_concurrent_requests, frozen=True)
    """Remote requests in flight at once for one call."""
    max_texts_per_request: int | None = Field(default=_DEFAULTS.max_texts_per_request, frozen=True)
    """Passages per remote request; ``None`` uses the engine's default limit (TEI: 32)."""
    verify_tls: bool = Field(default=_DEFAULTS.verify_tls, frozen=True)
    """Verify the serving engine's TLS certificate."""
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
        core = adapter_reranker({name: data.pop(name, None) for name in MODEL_SETTINGS}, reranker)
        super().__init__(**data, **{name: getattr(core.config, name) for name in MODEL_SETTINGS})
        self._reranker = core

    @property
    def reranker(self) -> Reranker:
        """The core reranker doing the scoring (``.load()`` it to warm up before the first query)."""
        return self._reranker


class BGERerankCompressor(_BGESettings, BaseDocumentCompressor):
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
