"""Settings of a reranker: one frozen, hashable value that also keys the one-model-per-process cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BACKENDS", "DEFAULT_MODEL", "BackendName", "DType", "LongPassages", "RerankerConfig"]

DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
"""The model every entry point uses unless told otherwise."""

DType = Literal["auto", "float32", "float16", "bfloat16", "int8"]
LongPassages = Literal["truncate", "window"]
BackendName = Literal["local", "tei", "vllm", "infinity", "cohere"]
BACKENDS: tuple[BackendName, ...] = ("local", "tei", "vllm", "infinity", "cohere")

_DTYPE_ALIASES: dict[str, DType] = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "int8": "int8",
}

# <s> Q </s></s> P </s>: four special tokens around a pair; at least one query and passage token left.
_PAIR_SPECIAL_TOKENS = 4
_MIN_MAX_LENGTH = 16


@dataclass(frozen=True, kw_only=True)
class RerankerConfig:
    """Everything that decides how a model is loaded and how pairs are scored.

    ``query_max_length=None`` resolves to ``max_length * 3 // 4`` (the reference's rule), and dtype
    aliases (``"fp16"``, ``"bf16"``) resolve to their canonical names, so equal settings compare equal.
    """

    model: str = DEFAULT_MODEL
    """Hub model id or local folder."""
    device: str | tuple[str, ...] | None = None
    """``None`` picks cuda, then mps, then cpu; an explicit ``"cuda:1"`` is honoured; a list of devices
    runs one replica per device, all fed by the same batching queue."""
    dtype: DType = "auto"
    """``"auto"`` is float16 on CUDA and float32 elsewhere; ``"bfloat16"`` is selectable; ``"int8"``
    (CPU only) runs the linear layers in int8, weights quantized per output channel at load."""
    max_length: int = 512
    """Tokens of a whole pair, special tokens included (the model allows up to 8192)."""
    query_max_length: int | None = None
    """Tokens kept of the query; ``None`` means ``max_length * 3 // 4``."""
    long_passages: LongPassages = "truncate"
    """``"truncate"`` (the reference's rule) or ``"window"``: score overlapping windows of a long
    passage and keep the best, so relevant text past ``max_length`` still counts (costs one pair per
    window)."""
    window_overlap: int | None = None
    """Tokens shared by consecutive windows in ``"window"`` mode; ``None`` means ``max_length // 8``."""
    max_windows: int = 16
    """Windows per passage at most in ``"window"`` mode (from its start); bounds the cost of huge texts."""
    max_batch_tokens: int = 16384
    """Tokens per forward pass: real tokens on the padding-free path (XLM-RoBERTa models such as
    bge-reranker-v2-m3), padded tokens (batch size times its longest pair) for other models."""
    normalize: bool = False
    """Default of ``score(normalize=...)``: sigmoid of the logit instead of the raw logit."""
    batch_wait_ms: float = 0.0
    """How long a batch waits for more concurrent requests; 0 batches only what is already waiting."""
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    """Hugging Face token for private or gated models; never shown in ``repr``."""
    cache_dir: str | None = None
    local_files_only: bool = False
    trust_remote_code: bool = False
    backend: BackendName = "local"
    """Where scores are computed: ``"local"`` (torch in this process) or a serving engine's ``/rerank``."""
    base_url: str | None = None
    """Root URL of the serving engine (remote backends); Cohere defaults to its public API."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the API key (the key itself is never stored)."""
    request_timeout: float = 60.0
    """Seconds before a remote request is abandoned (and retried)."""
    max_concurrent_requests: int = 4
    """Remote requests in flight at once, across all calls to one ``Reranker``."""
    max_texts_per_request: int | None = None
    """Passages per remote request; ``None`` uses the engine's default limit (TEI: 32)."""
    verify_tls: bool = True
    """Verify the serving engine's TLS certificate."""

    def __post_init__(self) -> None:
        for name in ("model", "cache_dir"):  # a pathlib.Path to a local folder is common
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty model id or folder, got {self.model!r}")
        dtype = _DTYPE_ALIASES.get(str(self.dtype).removeprefix("torch.").lower())
        if dtype is None:
            allowed = ", ".join(sorted(_DTYPE_ALIASES))
            raise ValueError(f"dtype must be one of {allowed}; got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        _check_int("max_length", self.max_length, _MIN_MAX_LENGTH)
        if self.query_max_length is None:
            object.__setattr__(self, "query_max_length", self.max_length * 3 // 4)
        _check_int("query_max_length", self.query_max_length, 1)
        assert self.query_max_length is not None
        if self.query_max_length > self.max_length - _PAIR_SPECIAL_TOKENS:
            raise ValueError(
                f"query_max_length must leave room for the passage and the 4 special tokens: at most "
                f"max_length - 4 = {self.max_length - _PAIR_SPECIAL_TOKENS}, got {self.query_max_length}"
            )
        _check_int("max_batch_tokens", self.max_batch_tokens, 1)
        if self.long_passages not in ("truncate", "window"):
            raise ValueError(f"long_passages must be 'truncate' or 'window', got {self.long_passages!r}")
        if self.window_overlap is None:
            object.__setattr__(self, "window_overlap", self.max_length // 8)
        _check_int("window_overlap", self.window_overlap, 0)
        _check_int("max_windows", self.max_windows, 1)
        min_room = self.max_length - _PAIR_SPECIAL_TOKENS - self.query_max_length
        if self.long_passages == "window" and self.backend != "local":
            raise ValueError("long_passages='window' needs backend='local'; serving engines truncate")
        if self.long_passages == "window" and self.resolved_window_overlap >= min_room:
            raise ValueError(
                f"window_overlap ({self.window_overlap}) must be smaller than the passage room of a pair "
                f"with the longest query, max_length - 4 - query_max_length = {min_room}"
            )
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.backend not in ("local", "cohere") and not self.base_url:
            raise ValueError(f"backend={self.backend!r} needs base_url, the serving engine's root URL")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        _check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        if self.max_texts_per_request is not None:
            _check_int("max_texts_per_request", self.max_texts_per_request, 1)
        if isinstance(self.device, list | tuple):
            object.__setattr__(self, "device", tuple(self.device))  # hashable, so it can key sharing
        devices = self.device if isinstance(self.device, tuple) else (self.device,)
        if (
            self.device == ()
            or not all(d is None or (isinstance(d, str) and d) for d in devices)
            or (len(devices) > 1 and None in devices)
        ):
            raise ValueError(
                f"device must be None, a device string like 'cuda:0' or a list of them, got {self.device!r}"
            )
        if len(devices) > 1 and self.backend != "local":
            raise ValueError("a list of devices needs backend='local'")
        elsewhere = [d for d in devices if d is not None and d.split(":")[0] != "cpu"]
        if self.dtype == "int8" and elsewhere:
            raise ValueError(  # the same words as the load-time check for a device picked by default
                f"dtype='int8' runs on CPU only (dynamic int8 linear layers); on {elsewhere[0]} use "
                "'float16' (the default there) or 'bfloat16'"
            )

    @property
    def devices(self) -> tuple[str | None, ...]:
        """One entry per model replica (``(None,)`` lets the backend choose)."""
        return self.device if isinstance(self.device, tuple) else (self.device,)

    @property
    def resolved_window_overlap(self) -> int:
        """``window_overlap`` as an int (it is always set after construction)."""
        assert self.window_overlap is not None
        return self.window_overlap

    @property
    def resolved_query_max_length(self) -> int:
        """``query_max_length`` as an int (it is always set after construction)."""
        assert self.query_max_length is not None
        return self.query_max_length


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
