"""LlamaIndex node postprocessor: rerank retrieved nodes with bge-reranker-v2-m3 on the shared core.

:class:`BGERerank` drops into a query engine's ``node_postprocessors`` where ``SentenceTransformerRerank``
or ``CohereRerank`` would go. It only reads each node's text, calls
:class:`~bge_rerank_integrations.reranker.Reranker` and returns new nodes in score order; the caller's
nodes are never changed. Postprocessors built with the same model settings share one loaded model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload

    # The documented path; it re-exports llama-index-instrumentation's without marking it exported.
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:
    raise ImportError(
        "bge_rerank_integrations.llamaindex needs llama-index-core: "
        'pip install "bge-rerank-integrations[llamaindex]"'
    ) from exc

from bge_rerank_integrations.adapter_support import check_top, text_with_meta
from bge_rerank_integrations.pydantic_settings import RerankerSettings
from bge_rerank_integrations.reranker import Reranker, RerankResult

__all__ = ["BGERerank"]

_dispatcher = get_dispatcher(__name__)

# Where keep_retrieval_score=True keeps a node's retrieval score (the key other rerankers use).
_RETRIEVAL_SCORE_KEY = "retrieval_score"


class BGERerank(RerankerSettings, BaseNodePostprocessor):
    """Rerank retrieved nodes with a cross-encoder (bge-reranker-v2-m3), best first, keeping ``top_n``.

    Give either model settings (``model``, ``device``, ``dtype``, ...; the defaults suit
    bge-reranker-v2-m3) or a ready ``reranker``. Construction is cheap: the model loads on first
    use (or on ``rerank.reranker.load()``), and postprocessors with equal settings share it. With
    ``backend="tei"`` (or ``"vllm"``, ``"infinity"``, ``"cohere"``) and ``base_url``, the scores come
    from a serving engine's ``/rerank`` instead, on the same scale; nothing else changes.

    The scored text of a node, each piece of it once:

    - ``meta_fields_to_embed`` not given (``None``): ``node.get_content(metadata_mode=metadata_mode)``,
      the text LlamaIndex embeds by default (its ``key: value`` metadata lines, then the content);
    - ``meta_fields_to_embed`` given: the values of those fields (missing and ``None`` left out), then
      the node's bare content (``MetadataMode.NONE``), joined by ``meta_separator``; ``metadata_mode``
      is not used, so no field also comes through the node's own metadata text.

    The result holds new ``NodeWithScore`` objects whose ``score`` is a plain float (a sigmoid in
    0..1, or the raw logit with ``normalize=False``), in score order, ties in input order. Node ids
    and metadata are kept; input nodes are not modified.

    Example:
        >>> from bge_rerank_integrations.llamaindex import BGERerank
        >>> rerank = BGERerank(top_n=3)  # nothing loaded yet
        >>> engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[rerank])
        >>> engine.query("What is a giant panda?")
        >>> remote = BGERerank(top_n=3, backend="tei", base_url="http://tei:8080")  # a TEI server
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    top_n: int | None = Field(
        default=5, description="Nodes to return, best first; None returns every node, reranked."
    )
    normalize: bool = Field(
        default=True, description="Sigmoid scores in 0..1; False gives the raw relevance logits."
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Keep each node's retrieval score in metadata['retrieval_score'] (hidden from LLM).",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED,
        description=(
            "Which node metadata get_content() puts in the scored text (EMBED, as retrieval); "
            "used only when meta_fields_to_embed is None."
        ),
    )
    meta_fields_to_embed: list[str] | None = Field(
        default=None,
        description=(
            "Metadata fields (e.g. a title) whose values alone go before the node's bare content, "
            "instead of the metadata_mode text."
        ),
    )
    meta_separator: str = Field(
        default="\n", description="Joins the meta_fields_to_embed values and the node text."
    )

    # Restated so type checkers see this signature, not one synthesised from the fields alone.
    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        callback_manager: CallbackManager | None = None,
        **data: Any,
    ) -> None:
        """Check the settings and find the (shared) core; nothing is loaded.

        Args:
            reranker: a ready core reranker, instead of model settings.
            callback_manager: LlamaIndex's callbacks (a query engine assigns its own).
            **data: the fields above and the model settings (``model``, ``device``, ``max_length``,
                ...; every one of :data:`~bge_rerank_integrations.adapter_support.MODEL_SETTINGS`,
                described in :mod:`~bge_rerank_integrations.config`); a model setting left out or
                ``None`` takes the core's default.

        Raises:
            ValueError: ``top_n`` is below 1, a model setting is out of range, or ``reranker`` is given
                together with model settings.
            TypeError: ``reranker`` is not a :class:`Reranker`, a setting has the wrong type, or a
                keyword names no field (as for a function; the closest field is suggested).
        """
        _check_keywords(data)
        if callback_manager is not None:
            data["callback_manager"] = callback_manager
        super().__init__(reranker=reranker, **data)

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: object) -> int | None:
        return check_top("top_n", value)

    @classmethod
    def class_name(cls) -> str:
        """Name LlamaIndex uses to serialize and identify this postprocessor."""
        return "BGERerank"

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """Score ``nodes`` against the query and return the best ``top_n`` as new nodes."""
        query, top_n = self._check_call(query_bundle)
        with self._rerank_events(nodes, query, top_n) as out:
            if nodes:
                ranked = self._reranker.rank(
                    query.query_str, self._texts(nodes), top_n=top_n, normalize=self.normalize
                )
                out.extend(self._rebuild(nodes, ranked))
        return out

    @_dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        """:meth:`_postprocess_nodes` with the model run in a worker thread, off the event loop."""
        query, top_n = self._check_call(query_bundle)
        with self._rerank_events(nodes, query, top_n) as out:
            if nodes:
                ranked = await self._reranker.arank(
                    query.query_str, self._texts(nodes), top_n=top_n, normalize=self.normalize
                )
                out.extend(self._rebuild(nodes, ranked))
        return out

    def _check_call(self, query_bundle: QueryBundle | None) -> tuple[QueryBundle, int | None]:
        if query_bundle is None:
            raise ValueError(
                "BGERerank needs a query: call postprocess_nodes(nodes, query_str=...) or pass a "
                "query_bundle (a query engine does this for you)"
            )
        # top_n is validated on construction and assignment; this catches model_copy(update=...).
        return query_bundle, check_top("top_n", self.top_n)

    @contextmanager
    def _rerank_events(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle, top_n: int | None
    ) -> Iterator[list[NodeWithScore]]:
        """Start and end events around the work, balanced on every path; the body fills the list."""
        out: list[NodeWithScore] = []
        _dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=len(nodes) if top_n is None else top_n,
                model_name=self.model,
            )
        )
        try:
            with self.callback_manager.event(
                CBEventType.RERANKING,
                payload={
                    EventPayload.NODES: nodes,
                    EventPayload.MODEL_NAME: self.model,
                    EventPayload.QUERY_STR: query_bundle.query_str,
                    EventPayload.TOP_K: top_n,
                },
            ) as event:
                yield out
                event.on_end(payload={EventPayload.NODES: out})
        finally:
            # On an error the end event carries no nodes; the error itself reaches the caller and the
            # dispatcher span, and the callback event ends with it as its payload.
            _dispatcher.event(ReRankEndEvent(nodes=out))

    def _texts(self, nodes: list[NodeWithScore]) -> list[str]:
        """The scored text of each node (the rule is in the class docstring)."""
        if self.meta_fields_to_embed is None:
            return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        return [
            text_with_meta(
                n.node.get_content(metadata_mode=MetadataMode.NONE),
                n.node.metadata,
                self.meta_fields_to_embed,
                self.meta_separator,
            )
            for n in nodes
        ]

    def _rebuild(self, nodes: list[NodeWithScore], ranked: list[RerankResult]) -> list[NodeWithScore]:
        out = []
        for result in ranked:
            source = nodes[result.index]
            node = source.node
            if self.keep_retrieval_score and source.score is not None:
                node = _with_retrieval_score(node, float(source.score))
            out.append(NodeWithScore(node=node, score=float(result.score)))
        return out


def _check_keywords(data: dict[str, Any]) -> None:
    """Refuse a keyword that names no field, as Python does for a function (LlamaIndex's own idiom)."""
    names = list(BGERerank.model_fields)
    for given in data:
        if given not in names:
            close = difflib.get_close_matches(given, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"BGERerank() got an unexpected keyword argument {given!r}{hint}")


def _with_retrieval_score(node: BaseNode, score: float) -> BaseNode:
    """A shallow copy of ``node`` whose metadata also holds ``score``, kept out of LLM and embed text."""

    def hidden(keys: list[str]) -> list[str]:
        return [*keys] if _RETRIEVAL_SCORE_KEY in keys else [*keys, _RETRIEVAL_SCORE_KEY]

    return node.model_copy(
        update={
            "metadata": {**node.metadata, _RETRIEVAL_SCORE_KEY: score},
            "excluded_llm_metadata_keys": hidden(node.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": hidden(node.excluded_embed_metadata_keys),
        }
    )
