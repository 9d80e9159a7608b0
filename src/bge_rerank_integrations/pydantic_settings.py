"""The core's model settings as frozen pydantic fields, for the pydantic-based adapters.

LlamaIndex's and LangChain's adapters are pydantic models; both inherit :class:`RerankerSettings`, so
each model setting is declared, typed and described once, and resolved to the core reranker the
same way. Only those two adapters import this module: the core never imports pydantic (both
frameworks depend on pydantic v2, so it is present wherever this module is used).
"""

from __future__ import annotations

import copy
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from bge_rerank_integrations.adapter_support import MODEL_SETTINGS, RerankerHold, adapter_config
from bge_rerank_integrations.config import DEFAULT_MODEL, BackendName, DType, LongPassages, RerankerConfig
from bge_rerank_integrations.reranker import Reranker

__all__ = ["RerankerSettings"]

_DEFAULTS = RerankerConfig()


class RerankerSettings(BaseModel):
    """Every core model setting (:data:`~bge_rerank_integrations.adapter_support.MODEL_SETTINGS`) as a
    frozen field, resolved on first use to one (process-wide shared) core reranker.

    Inherit it first, before the framework's base class. The fields always read back the core's
    resolved configuration (``query_max_length=None`` as ``max_length * 3 // 4``, ``dtype="fp16"`` as
    ``"float16"``); per-call choices such as ``normalize`` and ``top_n`` belong to each adapter.

    The shared reranker is found on first use, and :meth:`close` lets go of it (see
    :class:`~bge_rerank_integrations.adapter_support.RerankerHold`). Copies (``copy``, ``model_copy``,
    ``deepcopy``, ``pickle``) carry the settings and find their process's shared reranker on first
    use; with a given ``reranker``, they hold a copy of it (the same one, for a shallow copy).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    model: str = Field(default=DEFAULT_MODEL, frozen=True)
    """Hugging Face model id or local folder of the cross-encoder (the model name a server serves)."""
    device: str | tuple[str, ...] | None = Field(default=None, frozen=True)
    """Torch device such as ``"cuda:1"``; ``None`` picks cuda, then mps, then cpu; a list of devices
    runs one model replica per device, fed by the same batching queue."""
    dtype: DType = Field(default=_DEFAULTS.dtype, frozen=True)
    """``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"``, ``"bfloat16"`` or
    ``"int8"`` (CPU only: int8 linear layers)."""
    max_length: int = Field(default=_DEFAULTS.max_length, frozen=True)
    """Tokens of a whole (query, passage) pair, special tokens included; longer passages are cut."""
    query_max_length: int | None = Field(default=None, frozen=True)
    """Tokens kept of the query; not given, ``max_length * 3 // 4``, as the reference (FlagEmbedding)."""
    long_passages: LongPassages = Field(default=_DEFAULTS.long_passages, frozen=True)
    """``"truncate"`` (the reference's rule) or ``"window"``: score overlapping windows of a long
    passage and keep the best, so text past ``max_length`` counts (one pair per window)."""
    window_overlap: int | None = Field(default=None, frozen=True)
    """Tokens shared by consecutive windows in ``"window"`` mode; not given, ``max_length // 8``."""
    max_windows: int = Field(default=_DEFAULTS.max_windows, frozen=True)
    """Windows per passage at most in ``"window"`` mode, from its start."""
    max_batch_tokens: int = Field(default=_DEFAULTS.max_batch_tokens, frozen=True)
    """Tokens per forward pass (padded tokens for models without the padding-free path); lower it if
    memory is short."""
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

    _hold: RerankerHold = PrivateAttr(default_factory=RerankerHold)

    def __init__(self, *, reranker: Reranker | None = None, **data: Any) -> None:
        """Check the settings and keep the ``reranker`` given, if any; loads nothing.

        Args:
            reranker: a core reranker to use instead of the shared one for the model settings.
            **data: the fields; a model setting that is absent or ``None`` takes the core's default.

        Raises:
            ValueError: a setting is out of range, or both ``reranker`` and model settings are given.
            TypeError: ``reranker`` is not a :class:`Reranker`, or a setting has the wrong type.
        """
        config = adapter_config({name: data.pop(name, None) for name in MODEL_SETTINGS}, reranker)
        super().__init__(**data, **{name: getattr(config, name) for name in MODEL_SETTINGS})
        self._hold = RerankerHold(reranker)

    @property
    def reranker(self) -> Reranker:
        """The core reranker doing the scoring, shared by equal settings (``.load()`` warms it up)."""
        return self._reranker

    @property
    def _reranker(self) -> Reranker:
        return self._hold.get(self._config)

    def _config(self) -> RerankerConfig:
        return RerankerConfig(**{name: getattr(self, name) for name in MODEL_SETTINGS})

    def close(self) -> None:
        """Let go of the shared reranker: its model unloads once no other adapter or caller holds it.

        The adapter stays usable: its next call finds the shared reranker again (loading the model if
        it was unloaded). A reranker passed in as ``reranker=`` is left alone: close it yourself.
        """
        self._hold.release()

    def __copy__(self) -> Self:
        copied = super().__copy__()
        copied._hold = copy.copy(self._hold)  # its own hold, or the same given reranker
        return copied

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # LlamaIndex's rebuilds through __init__, which drops the hold
        hold = (state.get("__pydantic_private__") or {}).get("_hold")
        if isinstance(hold, RerankerHold):
            self._hold = hold
