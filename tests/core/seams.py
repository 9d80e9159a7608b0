"""Reaching a reranker's local replica and its loaded cross-encoder through public seams only."""

from __future__ import annotations

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.backends.local import LocalBackend
from bge_rerank_integrations.backends.queued import QueuedEngine
from bge_rerank_integrations.kinds.cross_encoder import CrossEncoderModel


def local_backend(rr: Reranker) -> LocalBackend:
    """The first local replica behind ``rr``'s queue."""
    engine = rr.engine
    assert isinstance(engine, QueuedEngine)
    backend = engine.backends[0]
    assert isinstance(backend, LocalBackend)
    return backend


def cross_encoder(rr: Reranker) -> CrossEncoderModel:
    """The first replica's view of its loaded cross-encoder (loading it): its own forward tuning,
    the shared weights (``.module``)."""
    model = local_backend(rr).model
    assert isinstance(model, CrossEncoderModel)
    return model


def padded(rr: Reranker) -> Reranker:
    """A reranker with ``rr``'s settings on a padded-forward replica (as for a model the padding-free
    forward does not support); it shares ``rr``'s weights."""
    return Reranker.from_config(rr.config, backends=[LocalBackend(rr.config, padding_free=False)])
